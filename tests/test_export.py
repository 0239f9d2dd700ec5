"""`kdist export`: the teacher's successful answers as chat JSONL, one file per split."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from kdist.cli import main
from kdist.llm.store import ResponseStore, new_run_id
from kdist.rows import PROMPT_SCHEMA, RESPONSE_SCHEMA


def test_export_writes_only_successful_parsed_answers_per_split(tmp_path, capsys):
    run = tmp_path / "run"
    prompts = [
        {"id": f"{split}-{i}", "task": "multiple_choice", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}? A) x B) y"}], "split": split, "meta": "{}"}
        for split in ("train", "validation") for i in range(3)
    ]  # fmt: skip
    (run / "prompts").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(prompts, schema=PROMPT_SCHEMA), run / "prompts" / "part-0.parquet")
    statuses = {"0": ("B", None), "1": (None, "content_filter: filtered"), "2": ("maybe", None)}
    responses = [
        {"id": p["id"], "candidate": "teacher", "request_hash": p["id"], "model": "t", "response": statuses[p["id"][-1]][0],
         "error": statuses[p["id"][-1]][1], "attempts": 1}
        for p in prompts
    ]  # fmt: skip
    ResponseStore(str(run / "responses")).write_shard(pa.Table.from_pylist(responses, schema=RESPONSE_SCHEMA), new_run_id())
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"run": {"output_dir": str(run)}, "teacher": {"model": "t"}, "student": {"model": "s"}}))

    assert main(["export", "--config", str(config)]) == 0
    for split in ("train", "validation"):
        lines = (run / "export" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q0? A) x B) y"}, {"role": "assistant", "content": "B"}]}
        ]
    assert "train.jsonl: 1 conversations" in capsys.readouterr().out

    assert main(["export", "--config", str(config), "--splits", "train", "--include-unparsable", "--out", str(tmp_path / "all")]) == 0
    assert len((tmp_path / "all" / "train.jsonl").read_text().splitlines()) == 2
