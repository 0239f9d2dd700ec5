"""Row schemas of the datasets that stages exchange (the only contract between stages).

Every stage reads its inputs through these schemas and writes its own; no stage imports
another stage's code. Rows carry stable ids so that every stage can resume exactly.
"""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

# prepare -> prompts/
PROMPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("reference", pa.string()),  # gold answer where the data has one, else null
        ("split", pa.string()),
        ("meta", pa.string()),  # JSON text: task-specific extras (choices, labels...)
    ]
)

TOP_LOGPROBS = pa.list_(
    pa.struct([("token_ids", pa.list_(pa.int64())), ("logprobs", pa.list_(pa.float32()))])
)

# generate -> responses/
RESPONSE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("request_hash", pa.string()),
        ("teacher", pa.string()),
        ("response", pa.string()),
        ("answer", pa.string()),  # parsed for the task (e.g. one letter), null if unparsable
        ("parse_status", pa.string()),  # ok | unparsable | error
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("top_logprobs", TOP_LOGPROBS),
        ("error", pa.string()),
        ("status", pa.int64()),
        ("attempts", pa.int64()),
    ]
)

# judge -> judgements/
JUDGEMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("judge", pa.string()),
        ("score", pa.float64()),
        ("rationale", pa.string()),
    ]
)

# filter -> sft/{train,validation}: what the student learns from
SFT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),  # prompt messages plus the assistant answer
        ("top_logprobs", TOP_LOGPROBS),  # teacher's top-k for the answer tokens, if stored
    ]
)
