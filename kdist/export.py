"""`kdist export`: the teacher's answers as chat JSONL, the format OpenAI and Azure OpenAI
fine-tuning take (one {"messages": [...]} object a line), one file per split.

Only successful answers go out; unparsable ones only when asked. Files are written under a
temporary name and renamed, locally or on object storage.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import pyarrow.parquet as pq

from kdist.responses_store import ShardStore, filesystem_for

log = logging.getLogger(__name__)


def chat_records(prompts: list[dict[str, Any]], responses: dict[str, dict[str, Any]], include_unparsable: bool) -> list[dict[str, Any]]:
    """Prompt messages plus the teacher's raw answer as the assistant turn, in prompt order."""
    records = []
    for prompt in prompts:
        response = responses.get(prompt["id"])
        if response is None or response["error"] is not None:
            continue
        if response["parse_status"] == "unparsable" and not include_unparsable:
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt["messages"]]
        records.append({"messages": [*messages, {"role": "assistant", "content": response["response"] or ""}]})
    return records


def export_chat_jsonl(prompts_uri: str, shards_uri: str, out_dir: str, splits: list[str], include_unparsable: bool = False) -> dict[str, int]:
    fs, prompts_path = filesystem_for(prompts_uri)
    prompts = pq.read_table(prompts_path, filesystem=fs, columns=["id", "messages", "split"]).to_pylist()
    columns = ["id", "response", "error", "parse_status"]
    responses = {row["id"]: row for _, table in ShardStore(shards_uri).read_columns(columns) for row in table.to_pylist()}
    counts = {}
    for split in splits:
        records = chat_records([p for p in prompts if p["split"] == split], responses, include_unparsable)
        _write_lines(f"{out_dir.rstrip('/')}/{split}.jsonl", records)
        counts[split] = len(records)
    return counts


def _write_lines(uri: str, records: list[dict[str, Any]]) -> None:
    fs, path = filesystem_for(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    temporary = f"{path}.tmp"
    with fs.open_output_stream(temporary) as stream:
        for record in records:
            stream.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    fs.move(temporary, path)


def _export(args: argparse.Namespace) -> int:
    from kdist.cli import config_from_args
    from kdist.data.prepare import PROMPTS_FILE
    from kdist.generate import RESPONSES_FILE
    from kdist.pipeline import stage_paths

    config = config_from_args(args)
    paths = stage_paths(config)
    out_dir = args.out or str(paths["generate"].parent / "export")
    splits = args.splits or config.teacher.splits
    counts = export_chat_jsonl(
        str(paths["prepare"] / PROMPTS_FILE), str(paths["generate"] / RESPONSES_FILE), out_dir, splits, args.include_unparsable
    )
    for split, count in counts.items():
        print(f"{out_dir.rstrip('/')}/{split}.jsonl: {count} conversations")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from kdist.cli import add_config_args

    parser = subparsers.add_parser(
        "export", help="write the teacher's answers as chat JSONL for OpenAI/Azure fine-tuning",
        description="Write the teacher's successful answers as chat JSONL, one file per split.",
    )  # fmt: skip
    add_config_args(parser)
    parser.add_argument("--out", help="output directory or URI (default: <run output>/export)")
    parser.add_argument("--splits", nargs="+", help="splits to export (default: teacher.splits)")
    parser.add_argument("--include-unparsable", action="store_true", help="also export answers the task parser rejected")
    parser.set_defaults(handler=_export)
