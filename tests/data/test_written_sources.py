"""Sources whose rows a model writes, end to end through prepare against the loopback server
with scripted answers: questions from documents become qa prompts with their chunk as the
context, conversations get follow-up turns; a rerun asks the writer nothing again."""

from __future__ import annotations

import json

import pytest

from kdist import storage
from kdist.config import validate_config
from kdist.errors import UsageError
from kdist.stages import BY_NAME, StageContext
from kdist.testing.llm_server import LLMServer, ServerSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

# The question writer: two questions from a passage's first words, in a chatty code fence;
# a passage about refusing gets a refusal.
QUESTION_RULES = [
    [r"Passage:\nrefuse", "I cannot help with that."],
    [r"Passage:\n\W*(\w+)\s+(\w+)\s+(\w+)", r'Sure! Here are the questions:\n```json\n["What is \1?", "How does \2 relate to \3?"]\n```'],
]
DIALOGUE_RULES = [
    [r"User: (\w+)[^\n]*\nAssistant: (\w+)", r"Q1: Tell me more about \1?\nA1: \2 has more to it.\nQ2: And why?\nA2: Because of \1."],
]


def _prepare(tmp_path, source: dict, server: LLMServer, **data) -> tuple[dict, list[dict]]:
    writer = {"kind": "openai", "model": "writer", "endpoint": server.openai_base_url, "concurrency": 4,
              "sampling": {"max_tokens": 200}}  # fmt: skip
    config = validate_config({
        "run": {"output_dir": str(tmp_path / "run")}, "teacher": {"model": "t", "splits": ["train"]},
        "student": {"model": "s"}, "data": {"source": {**source, "writer": writer}, **data},
    })  # fmt: skip
    summary = BY_NAME["prepare"].run(StageContext(config, str(tmp_path / "run")))
    rows = storage.read_table(str(tmp_path / "run" / "prompts")).to_pylist()
    return summary, sorted(rows, key=lambda row: row["id"])


def _documents(tmp_path) -> str:
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    paragraph = "Photosynthesis converts light into chemical energy in plants. " * 6
    (docs / "guide" / "plants.md").write_text(f"# Plants\n\n{paragraph}\n\n## Roots\n\nRoots absorb water from soil. " * 3)
    (docs / "notes.txt").write_text("Glaciers carve valleys slowly over time.\fPage two: ice ages recur.")
    (docs / "skip.csv").write_text("not,a,document\n")
    return str(docs)


def test_questions_from_documents_become_qa_prompts_with_their_chunk(tmp_path):
    docs = _documents(tmp_path)
    (tmp_path / "docs" / "refuse.txt").write_text("refuse to write questions about this one.")
    mine = tmp_path / "mine.j2"  # a replaced template: the rules read what follows "Passage:"
    mine.write_text("Write {{ n }} questions about {{ source }}.\nPassage:\n{{ chunk }}")
    source = {"kind": "document_questions", "path": docs, "chunk_size": 400, "chunk_overlap": 50,
              "questions_per_chunk": 3, "template": str(mine)}  # fmt: skip
    with LLMServer(ServerSettings(script=QUESTION_RULES)) as server:
        summary, rows = _prepare(tmp_path, source, server, task="qa")
        asked = server.stats()["total"]
        generated = summary["generated"]
        chunks = generated["items"]
        assert chunks >= 4 and asked == chunks
        # Two questions where three were asked: parsed, and counted as short; the refusal is
        # unparsable and makes no row.
        assert generated["unparsable"] == 1 and generated["parsed"] == generated["short"] == chunks - 1
        assert generated["rows"] == 2 * (chunks - 1)
        # Chunks repeated in a file give the same prompts: removed as duplicates, counted.
        assert summary["rows"] == len(rows) == generated["rows"] - summary.get("duplicates_removed", 0)
        note = next(row for row in rows if row["id"] == "notes.txt#0-q1")
        meta = json.loads(note["meta"])
        assert meta["context"] == "Glaciers carve valleys slowly over time.\n\nPage two: ice ages recur."
        assert "What is Glaciers?" in note["messages"][-1]["content"] and meta["context"] in note["messages"][-1]["content"]
        assert {row["id"].split("#")[0] for row in rows} == {"guide/plants.md", "notes.txt"}
        # Exact resume: a second prepare asks the writer nothing and makes the same rows.
        again, rows_again = _prepare(tmp_path, source, server, task="qa")
        assert server.stats()["total"] == asked and rows_again == rows
        assert again["generated"]["inference"]["this_run"]["requested"] == 0
        # A template naming a variable the writer does not have fails before any request.
        mine.write_text("{{ passage }}")
        with pytest.raises(UsageError, match="passage"):
            _prepare(tmp_path, source, server, task="qa")
        assert server.stats()["total"] == asked


def test_dialogues_get_follow_up_turns_as_new_conversations(tmp_path):
    chats = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Pasta{i} tips please"},
                                          {"role": "assistant", "content": f"Salt{i} the water."}]} for i in range(4)]  # fmt: skip
    chats.append({"id": "bad", "messages": [{"role": "user", "content": "no reply yet"}]})
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    source = {"kind": "dialogue_augmentation", "path": str(path), "followups": 2}
    with LLMServer(ServerSettings(script=DIALOGUE_RULES)) as server:
        with pytest.raises(UsageError, match=r"chats.jsonl:5: column 'messages': a chat to continue must end with the assistant's reply"):
            _prepare(tmp_path, source, server, task="conversation")
        summary, rows = _prepare(tmp_path, source, server, task="conversation", on_bad_row="skip",
                                 splits={"train": 0.5, "test": 0.5})  # fmt: skip
        assert server.stats()["total"] == 4
    assert summary["generated"]["bad_rows_skipped"] == 1 and summary["generated"]["parsed"] == 4
    assert summary["generated"]["cut_at_max_tokens"] == 0
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {f"c{i}{suffix}" for i in range(4) for suffix in ("", "-aug1", "-aug2")}
    # A conversation and its augmented copies stay in one split (the split never cuts a group).
    split_of = {f"c{i}": {by_id[f"c{i}{suffix}"]["split"] for suffix in ("", "-aug1", "-aug2")} for i in range(4)}
    assert all(len(splits) == 1 for splits in split_of.values()) and set().union(*split_of.values()) == {"train", "test"}, split_of
    longest = by_id["c1-aug2"]
    assert [m["role"] for m in longest["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert longest["messages"][2]["content"] == "Tell me more about Pasta1?" and longest["reference"] == "Because of Pasta1."
    assert by_id["c1-aug1"]["reference"] == "Salt1 has more to it."
    assert by_id["c1"]["reference"] == "Salt1 the water."
