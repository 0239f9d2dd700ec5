"""Rubric templates render with the judge's variables; a user's template replaces one."""

import jinja2
import pytest

from kdist.errors import UsageError
from kdist.judging.rubrics import RUBRICS, conversation_text, load_template

VARIABLES = {"question": "What is 2+2?", "context": "Arithmetic facts.", "reference": "4", "answer": "four",
             "answer_a": "4", "answer_b": "5", "scale_low": 1, "scale_high": 5}  # fmt: skip


@pytest.mark.parametrize("rubric", sorted(RUBRICS))
def test_every_rubric_renders_and_shows_what_it_judges(rubric):
    text = load_template(rubric).render(**VARIABLES)
    assert "What is 2+2?" in text and "JSON" in text
    spec = RUBRICS[rubric]
    assert ("[Answer A]" in text) == spec.pairwise
    # The reference is shown only by the rubric that grades against it.
    assert ("[Reference answer]" in text) == spec.uses_reference
    if spec.needs_context:
        assert "Arithmetic facts." in text


def test_reference_guided_grading_without_a_context_leaves_the_context_out():
    text = load_template("reference_guided").render(**{**VARIABLES, "context": None})
    assert "[Context" not in text


def test_a_users_template_replaces_the_rubric_and_unknown_variables_fail(tmp_path):
    mine = tmp_path / "mine.j2"
    mine.write_text("Grade {{ answer }} for {{ question }}")
    assert load_template("correctness", str(mine)).render(**VARIABLES) == "Grade four for What is 2+2?"
    mine.write_text("{{ nonsense }}")
    with pytest.raises(jinja2.UndefinedError):
        load_template("correctness", str(mine)).render(**VARIABLES)
    mine.write_text("{% if %}")
    with pytest.raises(UsageError, match=r"judge.template: .*mine.j2 line 1"):
        load_template("correctness", str(mine))
    with pytest.raises(UsageError, match="judge.template: cannot read"):
        load_template("correctness", str(tmp_path / "absent.j2"))


def test_the_judge_sees_the_conversation_without_the_system_prompt():
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert conversation_text(messages) == "Hi"
    turns = [*messages, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}]
    assert conversation_text(turns) == "USER: Hi\nASSISTANT: Hello\nUSER: Bye?"


def test_the_rag_rubrics_find_the_passage_a_qa_prompt_carries():
    import json

    from kdist.judging.rubrics import prompt_context
    from kdist.tasks import TASKS

    prompt = TASKS["qa"]().prompt({"question": "Capital?", "context": "Paris is the capital.", "answer": "Paris"})
    assert prompt_context(json.dumps(prompt.meta)) == "Paris is the capital."
    assert prompt_context(None) is None
