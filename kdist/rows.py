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

# One entry per generated token: the k alternatives as the teacher's ids (token_ids), or, from
# an OpenAI-format server that names tokens by text, as strings (tokens) with the generated
# token's string and the character of the answer where it starts (offset; null inside a
# character): what logit KD across tokenizers aligns by. Stores written before have nulls there.
TOP_LOGPROBS = pa.list_(
    pa.struct([("token_ids", pa.list_(pa.int64())), ("logprobs", pa.list_(pa.float32())),
               ("tokens", pa.list_(pa.string())), ("token", pa.string()),
               ("offset", pa.int64())])
)

# The batch-inference layer's output (kdist.llm): generate -> responses/, and every other
# stage that asks a model (evaluate -> eval/answers/). Keyed by (id, candidate): one prompt
# may have several answers (several models, several samples, two orders of a comparison).
# Answers are stored as the model gave them; each caller parses them for its task.
RESPONSE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("candidate", pa.string()),  # who answered, as the caller names it ("teacher", ...)
        ("request_hash", pa.string()),
        ("model", pa.string()),  # kind:model of the endpoint
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("top_logprobs", TOP_LOGPROBS),
        ("error", pa.string()),
        ("status", pa.int64()),
        ("attempts", pa.int64()),
        ("seconds", pa.float64()),  # first attempt to final answer (null in stores written before)
    ]
)

# The rows handed to the batch-inference layer: what to ask, under which key. `sample` (may be
# left out) numbers the asks of one prompt sampled several times (a sampled judge): it is part
# of the request hash, so each sample is a request of its own; null for a single ask (whose
# hash is then what it was before samples existed).
REQUEST_SCHEMA = pa.schema(
    [("id", pa.string()), ("candidate", pa.string()), ("messages", pa.list_(MESSAGE)), ("sample", pa.int64())]
)
REQUEST_COLUMNS = ["id", "candidate", "messages"]  # what every request row must have

# judge -> judgements/scores/: one row per judged answer, keyed (id, candidate). `raw_score`
# is as the judge gave it (on its rubric's scale), `score` normalised to [0, 1]; both are null
# when the verdict was unparsable or the judge failed (`status` says which).
JUDGEMENTS_TABLE = "scores"
JUDGEMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("candidate", pa.string()),
        ("judge", pa.string()),  # "rule", or the judge endpoint's kind:model
        ("rubric", pa.string()),
        ("raw_score", pa.float64()),
        ("score", pa.float64()),
        ("status", pa.string()),  # ok | unparsable | error
        ("rationale", pa.string()),
        # Of the judge's request (null for the rule); with judge.samples > 1, the samples'
        # hashes in sample order, comma-separated.
        ("request_hash", pa.string()),
        # LLM judge: the parsed samples the score is the mean of, and the samples left out
        # as unparsable (1 and 0 for one ok answer); null for the rule.
        ("samples", pa.int64()),
        ("unparsable_samples", pa.int64()),
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
