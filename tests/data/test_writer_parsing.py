"""Without Ray: documents cut into chunks, and writers' answers read back as questions or
follow-up turns, from hand-written answers (chatty ones too); what does not parse gives none."""

from __future__ import annotations

import pytest

from kdist.data.dialogues import parse_followups
from kdist.data.documents import chunk_text, read_chunks
from kdist.data.questions import parse_questions
from kdist.errors import UsageError


def test_chunks_respect_the_size_overlap_and_keep_a_heading_with_its_section():
    text = "# Plants\n\n" + "Leaves turn light into sugar. " * 40 + "\n\n## Roots\n\n" + "Roots drink water. " * 30
    chunks = chunk_text(text, markdown=True, size=300, overlap=60)
    assert all(len(chunk) <= 300 + 12 for chunk in chunks)  # a joined heading may add a little
    assert not any(chunk.strip() in ("# Plants", "## Roots") for chunk in chunks)
    assert any(chunk.startswith("## Roots\n\nRoots drink water.") for chunk in chunks)
    # Neighbours overlap: the start of each chunk after the first repeats the end of the one before.
    body = [c for c in chunks if c.startswith("Leaves")]
    assert len(body) >= 2 and any(body[i + 1][:20] in body[i] for i in range(len(body) - 1))
    assert chunk_text("short text", markdown=False, size=300, overlap=0) == ["short text"]


def test_pdf_text_pages_are_paragraphs_and_chunk_ids_name_the_file(tmp_path):
    (tmp_path / "doc.txt").write_text("Page one ends here.\fPage two starts.")
    rows = read_chunks({"path": str(tmp_path / "doc.txt")}, str(tmp_path), size=500, overlap=0)
    assert rows == [{"id": "doc.txt#0", "where": f"{tmp_path / 'doc.txt'} chunk 1", "text": "Page one ends here.\n\nPage two starts."}]
    (tmp_path / "scan.txt").write_bytes(b"\xff\xfe binary")
    with pytest.raises(UsageError, match=r"scan.txt: not UTF-8 text .*pdftotext"):
        read_chunks({"path": str(tmp_path / "scan.txt")}, str(tmp_path), size=500, overlap=0)


@pytest.mark.parametrize("answer, expected", [
    ('["What is A?", "Why B?"]', ["What is A?", "Why B?"]),
    ('Sure! Here they are:\n```json\n{"questions": ["What is A?", {"question": "Why B?"}]}\n```', ["What is A?", "Why B?"]),
    ("Here are three questions:\n1. What is A?\n2) Why does B happen?\n- How big is C\nI hope these help!", ["What is A?", "Why does B happen?", "How big is C"]),
    ("Q1: What is A?\nQuestion 2: Why B?", ["What is A?", "Why B?"]),
    ("**1.** What is A?\n1. what is a?", ["What is A?"]),  # bold numbers; a repeat (any case) is one question
    ("I cannot help with that.", []),
    ("", []),
    (None, []),
])  # fmt: skip
def test_questions_are_read_from_the_shapes_writers_answer_in(answer, expected):
    assert parse_questions(answer, 5) == expected


def test_at_most_n_questions_are_kept():
    assert parse_questions('["a?", "b?", "c?", "d?"]', 2) == ["a?", "b?"]


@pytest.mark.parametrize("answer, expected", [
    ('[{"question": "Why?", "answer": "Because."}, {"question": "How?", "answer": ""}]', [("Why?", "Because.")]),
    ('Here you go: {"followups": [{"user": "And then?", "assistant": "Then Y."}]}', [("And then?", "Then Y.")]),
    ("Q1: Why is it so?\nIt puzzles me.\nA1: Because of X.\nMore on X.\n**Q2:** And then?\n**A2:** Then Y.\nQ3: left unanswered",
     [("Why is it so?\nIt puzzles me.", "Because of X.\nMore on X."), ("And then?", "Then Y.")]),
    ("User: tips?\nAssistant: salt it", [("tips?", "salt it")]),
    ("A: an answer with no question", []),
    ("Sorry, I can't continue this conversation.", []),
])  # fmt: skip
def test_follow_ups_are_read_as_question_answer_pairs(answer, expected):
    assert parse_followups(answer, 3) == expected


def test_packaged_templates_render_and_a_replacement_may_use_only_their_variables(tmp_path):
    from kdist.config import DialogueAugmentationSource, DocumentQuestionsSource
    from kdist.data import dialogues, questions
    from kdist.data.written import load_template

    writer = {"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1"}
    docs = DocumentQuestionsSource(kind="document_questions", path="d", writer=writer, questions_per_chunk=4)
    item = {"id": "guide/a.md#2", "text": "Ice melts at zero degrees."}
    text = load_template(docs, questions).render(**questions.variables(item, docs))
    assert "Write 4 questions" in text and "Ice melts at zero degrees." in text and "guide/a.md" in text
    chats = DialogueAugmentationSource(kind="dialogue_augmentation", path="c.jsonl", writer=writer, followups=2)
    turns = [{"role": "user", "content": "Pasta tips?"}, {"role": "assistant", "content": "Salt the water."}]
    text = load_template(chats, dialogues).render(**dialogues.variables({"messages": turns}, chats))
    assert "User: Pasta tips?\nAssistant: Salt the water." in text and "2 follow-up" in text
    mine = tmp_path / "mine.j2"
    mine.write_text("{{ passage }}")
    with pytest.raises(UsageError, match=r"data.source.template: .*mine.j2 uses 'passage', which is not a variable here \(variables: chunk, n, source\)"):
        load_template(docs.model_copy(update={"template": str(mine)}), questions)


def test_a_writer_gets_room_for_a_list_unless_the_config_sets_its_max_tokens():
    from kdist.config import WRITER_MAX_TOKENS, DialogueAugmentationSource, DocumentQuestionsSource

    writer = {"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1", "sampling": {"temperature": 0.5}}
    docs = DocumentQuestionsSource(kind="document_questions", path="d", writer=writer)
    assert docs.writer.sampling.max_tokens == WRITER_MAX_TOKENS >= 512 and docs.writer.sampling.temperature == 0.5
    chats = DialogueAugmentationSource(kind="dialogue_augmentation", path="c.jsonl", writer={**writer, "sampling": {"max_tokens": 64}})
    assert chats.writer.sampling.max_tokens == 64
    hf_writer = DialogueAugmentationSource(kind="dialogue_augmentation", path="c.jsonl", writer={"kind": "hf", "model": "m"})
    assert hf_writer.writer.sampling.max_tokens == WRITER_MAX_TOKENS


def test_answers_cut_at_max_tokens_are_flagged_and_warned_about(caplog):
    import pyarrow as pa

    from kdist.config import DocumentQuestionsSource
    from kdist.data import written
    from kdist.tasks import TASKS

    writer = {"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1", "sampling": {"max_tokens": 12}}
    source = DocumentQuestionsSource(kind="document_questions", path="d", writer=writer, questions_per_chunk=2)
    data = type("Data", (), {"source": source, "task": TASKS["qa"].Settings()})()
    items = pa.Table.from_pylist([
        {"id": "a.md#0", "response": '["What is A?", "Why B?"]', "error": None, "finish_reason": "stop", "text": "A and B."},
        {"id": "a.md#1", "response": "1. What is C?\n2. Why is D so", "error": None, "finish_reason": "length", "text": "C, D."},
        {"id": "a.md#2", "response": None, "error": "timeout", "finish_reason": None, "text": "E."},
    ])  # fmt: skip
    out = written._rows(items, "kdist.data.questions", data)
    assert out["cut"].to_pylist() == [False, True, False]
    assert out["outcome"].to_pylist() == ["parsed", "parsed", "errors"]
    with caplog.at_level("WARNING"):
        written._warn_cut({"parsed": 2, "unparsable": 0, written.CUT: 1}, source.writer)
    assert "1 of 2 writer answers stopped at data.source.writer.sampling.max_tokens (12)" in caplog.text


def test_rows_a_writer_makes_from_one_document_or_one_conversation_share_a_group():
    from kdist.config import DialogueAugmentationSource, DocumentQuestionsSource
    from kdist.data import dialogues, questions
    from kdist.data.candidates import GROUP_KEY, candidate
    from kdist.tasks import TASKS, task_for

    writer = {"kind": "openai", "model": "m", "endpoint": "http://127.0.0.1:9/v1"}
    docs = DocumentQuestionsSource(kind="document_questions", path="d", writer=writer)
    qa = task_for(TASKS["qa"].Settings())
    made = questions.records({"id": "a.md#0", "text": "Ice melts."}, ["Why?", "When?"], docs, qa)
    # a neighbour chunk of the same document (chunks overlap) joins its group; another document
    # (a '#' in its name too) does not
    made += questions.records({"id": "a.md#1", "text": "Ice melts. Snow falls."}, ["How?"], docs, qa)
    made += questions.records({"id": "b#2.md#0", "text": "Rain."}, ["Where?"], docs, qa)
    assert [row[GROUP_KEY] for row in made] == ["a.md", "a.md", "a.md", "b#2.md"]
    data = type("Data", (), {"source": type("Source", (), {"kind": "parquet", "id_field": "id", "split_field": "split"})(),
                             "system_prompt": None, "on_bad_row": "error"})()  # fmt: skip
    groups = [candidate(i, f"row {i}", row, qa, data)["group_hash"] for i, row in enumerate(made)]
    assert groups[0] == groups[1] == groups[2] != groups[3] and None not in groups
    assert candidate(9, "row 9", {"id": "x", "question": "Q?", "context": "c"}, qa, data)["group_hash"] is None
    chats = DialogueAugmentationSource(kind="dialogue_augmentation", path="c.jsonl", writer=writer)
    turns = [{"role": "user", "content": "Tips?"}, {"role": "assistant", "content": "Salt."}]
    rows = dialogues.records({"id": "c1", "split": None, "messages": turns}, [("Why?", "Taste."), ("More?", "Boil.")], chats,
                             task_for(TASKS["conversation"].Settings()))  # fmt: skip
    assert [row["id"] for row in rows] == ["c1", "c1-aug1", "c1-aug2"] and {row[GROUP_KEY] for row in rows} == {"c1"}
