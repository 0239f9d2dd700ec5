"""`kdist export`: the teacher's answers as chat JSONL, the format OpenAI and Azure OpenAI
fine-tuning take (one {"messages": [...]} object a line), one file per split.

Only successful answers go out; unparsable ones only when asked. Files are written under a
temporary name and renamed, locally or on object storage.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow.compute as pc

from kdist import storage
from kdist.llm.store import ResponseStore
from kdist.tasks import TASKS

log = logging.getLogger(__name__)

CANDIDATE = "teacher"


def chat_record(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One fine-tuning example: the conversation's roles and texts, nothing else."""
    return {"messages": [{"role": m["role"], "content": m["content"] or ""} for m in messages]}


def chat_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def chat_records(prompts: list[dict[str, Any]], responses: dict[str, dict[str, Any]], include_unparsable: bool) -> list[dict[str, Any]]:
    """Prompt messages plus the teacher's raw answer as the assistant turn, in prompt order."""
    records = []
    for prompt in prompts:
        response = responses.get(prompt["id"])
        if response is None or response["error"] is not None:
            continue
        # The prompt row names its task; its default settings parse it (labels of a custom
        # set are not known here: export `--include-unparsable` keeps everything).
        if not include_unparsable and TASKS[prompt["task"]]().parse_stored(response["response"], prompt["meta"]) is None:
            continue
        records.append(chat_record([*prompt["messages"], {"role": "assistant", "content": response["response"]}]))
    return records


def export_chat_jsonl(prompts_uri: str, responses_uri: str, out_dir: str, splits: list[str], include_unparsable: bool = False) -> dict[str, int]:
    """One JSONL file per split; split by split, so only one split's rows are held at once."""
    counts = {}
    store = ResponseStore(responses_uri)
    for split in splits:
        prompts = storage.read_table(prompts_uri, columns=["id", "task", "messages", "meta", "split"])
        prompts = prompts.filter(pc.equal(prompts["split"], split))
        answers = store.read_all(["id", "candidate", "response", "error"])
        answers = answers.filter(pc.and_(pc.equal(answers["candidate"], CANDIDATE), pc.is_in(answers["id"], value_set=prompts["id"])))
        records = chat_records(prompts.to_pylist(), {row["id"]: row for row in answers.to_pylist()}, include_unparsable)
        storage.write_text(storage.join(out_dir, f"{split}.jsonl"), chat_jsonl(records))
        counts[split] = len(records)
    return counts
