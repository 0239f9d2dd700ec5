"""Each task: its template renders, its parser reads good, bad and chatty model outputs, and
its metrics are right on hand-made cases."""

from __future__ import annotations

import json
import re

import pytest

from kdist.tasks import TASKS, RowError, task_for
from kdist.tasks.base import TaskSettings
from kdist.tasks.multiple_choice import MultipleChoice, parse_choice

# --- the registry ------------------------------------------------------------------------------


def test_every_task_has_settings_of_its_own_kind_and_a_template_that_renders():
    for name, task_class in TASKS.items():
        task = task_class()
        assert task.settings.kind == name and task.Settings.FIELDS
        assert task.headline in task.metrics([], [], []) or task.headline in ("accuracy",)


def test_a_column_mapping_names_only_fields_of_the_task():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'premis' is not a field of this task; fields: premise, hypothesis, label"):
        TASKS["nli"].Settings(columns={"premis": "sentence1"})


def test_a_template_from_the_config_replaces_the_packaged_one_and_must_compile():
    from pydantic import ValidationError

    task = task_for(TASKS["qa"].Settings(template="Q: {{ question }}"))
    assert task.prompt({"question": "Why?"}).messages == [{"role": "user", "content": "Q: Why?"}]
    with pytest.raises(ValidationError, match="not a valid Jinja2 template"):
        TASKS["qa"].Settings(template="{{ question ")
    with pytest.raises(RowError, match="data.task.template: 'nope' is undefined"):
        task_for(TASKS["qa"].Settings(template="{{ nope }}")).prompt({"question": "Why?"})


def test_missing_and_empty_columns_are_row_errors_naming_the_column():
    task = task_for(TASKS["nli"].Settings(columns={"premise": "sentence1"}))
    with pytest.raises(RowError, match=r"missing column 'sentence1' \(task field 'premise'; the row has: hypothesis\)"):
        task.prompt({"hypothesis": "h"})
    with pytest.raises(RowError, match="column 'hypothesis' is empty"):
        task.prompt({"sentence1": "p", "hypothesis": "  "})


def test_a_missing_column_lists_the_row_s_own_columns_and_a_number_in_a_text_field_is_text():
    task = task_for(TASKS["nli"].Settings())
    with pytest.raises(RowError, match=r"the row has: hypothesis, label\)$"):
        task.prompt({"hypothesis": "h", "label": "neutral", "__index_level_0__": 3})
    prompt = task.prompt({"premise": 1234, "hypothesis": "h", "label": "neutral"})
    assert "1234" in prompt.messages[-1]["content"]


def test_a_template_naming_an_unknown_field_is_a_row_error_listing_the_fields():
    task = task_for(TASKS["nli"].Settings(template="{{ premise }} {{ passage }}"))
    with pytest.raises(RowError, match=r"^data.task.template: 'passage' is undefined \(it may use: hypothesis, labels, premise\)$"):
        task.prompt({"premise": "p", "hypothesis": "h", "label": "neutral"})


@pytest.mark.parametrize("kind", ["multiple_choice", "nli", "math"])
def test_the_default_metrics_are_accuracy_and_the_parsed_share(kind):
    task = task_for(TASKS[kind].Settings())
    answers, references = ["x", None, "y", "x"], ["x", "x", "z", "x"]
    assert task.metrics(answers, references, [{}] * 4) == {"accuracy": 0.5, "parsed": 0.75}
    assert task.metrics(["x", None, None], ["x", "y", "z"], [{}] * 3) == {"accuracy": 0.3333, "parsed": 0.3333}
    assert task.metrics([], [], []) == {"accuracy": 0.0, "parsed": 0.0}
    with pytest.raises(ValueError, match="^a row without a reference cannot be scored$"):
        task.score("x", None, {})


# --- multiple_choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("B", "B"), (" (C) cat", "C"), ("D) drum", "D"), ("The answer is E.", "E"), ("answer: a", "A"),
     ("**B**", "B"), ("E.", "E"), ("B, because apples grow on trees", "B"),
     ("Sure! The correct answer is (C) cat.", "C"), ("I would say the answer is B because it is a fruit.", "B"),
     ("Answer: **D**", "D"), ("answer is (c) because", "C"),
     # no letter named: the article of a sentence, a word after "the answer is", nothing at all
     ("A cat sat on the mat.", None), ("The answer is a cat", None), ("A.I. is everywhere", None),
     ("", None), (None, None), ("Z", None), ("I think so", None)],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_parse_choice_respects_allowed_letters():
    assert parse_choice("E", letters="ABC") is None


def test_multiple_choice_prompt_keeps_the_demo_wording_and_reads_commonsenseqa():
    assert MultipleChoice("Which?", ["x", "y", "z"], "B").user_message() == "Which? A) x B) y C) z Answer with the letter only."
    task = TASKS["multiple_choice"]()
    prompt = task.prompt({"question": "Where is ice?", "answer": "B",
                          "choices": {"label": ["A", "B", "C"], "text": ["oven", "freezer", "sun"]}}, "Be brief.")  # fmt: skip
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}
    assert prompt.reference == "B" and prompt.label == "B" and prompt.meta == {"choices": ["oven", "freezer", "sun"]}
    assert task.prompt({"question": "q", "choices": ["a", "b"], "answer": 1}).reference == "B"
    assert task.prompt({"question": "q", "choices": ["a", "b"], "answer": "a"}).reference == "A"
    with pytest.raises(RowError, match="answer 'Q' is not a letter A-B"):
        task.prompt({"question": "q", "choices": ["a", "b"], "answer": "Q"})
    assert task.parse("E", {"choices": ["a", "b", "c"]}) is None  # only three choices


@pytest.mark.parametrize(
    "row, message",
    [({"choices": ["x"], "answer": "A"}, "column 'options' must be a list of 2 to 10 choices"),
     ({"choices": "x y", "answer": "A"}, "column 'options' must be a list of 2 to 10 choices"),
     ({"choices": ["x", "  "], "answer": "A"}, "column 'options' has an empty choice"),
     ({"choices": ["x", None], "answer": "A"}, "column 'options' has an empty choice"),
     ({"choices": ["x", "y"], "answer": 2}, "column 'gold': answer 2 is not a letter A-B, a 0-based index or one of the choices"),
     ({"choices": ["x", "y", "z"], "answer": "D"}, "column 'gold': answer 'D' is not a letter A-C, a 0-based index or one of the choices")],
)  # fmt: skip
def test_bad_multiple_choice_rows_name_their_column_and_what_is_allowed(row, message):
    task = task_for(TASKS["multiple_choice"].Settings(columns={"choices": "options", "answer": "gold"}))
    record = {"question": "q", "options": row["choices"], "gold": row["answer"]}
    with pytest.raises(RowError, match=f"^{re.escape(message)}$"):
        task.prompt(record)


@pytest.mark.parametrize(
    "answer, letter",
    [(0, "A"), (2, "C"), ("b", "B"), ("zebra", "B"), ("", None), (None, None)],
)
def test_a_multiple_choice_answer_as_index_letter_or_choice_text(answer, letter):
    task = task_for(TASKS["multiple_choice"].Settings())
    prompt = task.prompt({"question": "q", "choices": {"label": ["A", "B", "C"], "text": ["ant", "zebra", "zebra"]},
                          "answer": answer})  # fmt: skip
    assert prompt.reference == letter == prompt.label
    assert prompt.meta == {"choices": ["ant", "zebra", "zebra"]}
    assert "A) ant" in prompt.messages[-1]["content"] or "A. ant" in prompt.messages[-1]["content"]
    assert task.labels(prompt.meta) == "ABC" and task.labels({}) == "ABCDE"
    assert task.parse("C", prompt.meta) == "C" and task.parse("D", prompt.meta) is None
    assert task.chance([prompt.meta, {"choices": ["x"] * 4}]) == {"accuracy": round((1 / 3 + 1 / 4) / 2, 4)}
    assert task.chance([]) == {}


def test_no_answer_never_equals_no_reference():
    task = TASKS["multiple_choice"]()
    assert task.score(None, "A", {}) == 0.0
    with pytest.raises(ValueError, match="without a reference"):
        task.score(None, None, {})


# --- nli ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("Entailment.", "entailment"), ("contradiction", "contradiction"), ("  **Neutral**", "neutral"),
     ("The premise entails the hypothesis.", "entailment"),
     ("Let me think. A man sleeping cannot be running, so the answer is: contradiction.", "contradiction"),
     ("It is not entailment; the relationship is neutral.", "neutral"),
     ("This is not an entailment.", None), ("entailment or contradiction, hard to say", "entailment"),
     ("I cannot tell.", None), ("", None)],
)
def test_nli_parse(text, expected):
    assert TASKS["nli"]().parse(text, {}) == expected


def test_nli_labels_as_text_or_index_and_outside_the_set():
    task = TASKS["nli"]()
    assert task.prompt({"premise": "p", "hypothesis": "h", "label": 2}).reference == "contradiction"
    assert task.prompt({"premise": "p", "hypothesis": "h", "label": "Neutral"}).label == "neutral"
    with pytest.raises(RowError, match="label 'maybe' is not one of entailment, neutral, contradiction"):
        task.prompt({"premise": "p", "hypothesis": "h", "label": "maybe"})
    with pytest.raises(RowError, match="label -1 is not one of"):
        task.prompt({"premise": "p", "hypothesis": "h", "label": -1})
    assert "Answer with one word: entailment, neutral, contradiction." in task.prompt({"premise": "p", "hypothesis": "h"}).messages[0]["content"]


# --- qa ----------------------------------------------------------------------------------------


def test_qa_parse_score_and_metrics():
    task = TASKS["qa"]()
    prompt = task.prompt({"question": "Capital of France?", "context": "Paris is the capital.",
                          "answer": {"text": ["Paris", "the city of Paris"], "answer_start": [0, 0]}})  # fmt: skip
    assert prompt.messages[0]["content"].startswith("Context: Paris is the capital.\n\nQuestion: Capital of France?")
    # The passage is kept in meta as well: the judge's RAG rubrics read it there.
    assert prompt.reference == "Paris"
    assert prompt.meta == {"answers": ["Paris", "the city of Paris"], "context": "Paris is the capital."}
    assert task.parse("The answer is Paris.", {}) == "Paris"
    assert task.parse("Sure! Answer: **Paris**\nIt is the capital.", {}) == "Paris"
    assert task.parse("   ", {}) is None
    answers = ["Paris", "city of Paris France", None]
    refs = ["Paris", "Paris", "Rome"]
    metas = [{"answers": ["Paris"]}, {"answers": ["the city of Paris"]}, {}]
    result = task.metrics(answers, refs, metas)
    assert result["exact_match"] == round(1 / 3, 4)
    assert result["f1"] == round((1 + 2 * (3 / 4 * 1) / (3 / 4 + 1)) / 3, 4)  # P 3/4, R 1
    assert result["parsed"] == round(2 / 3, 4)


def test_qa_without_context_renders_question_only():
    content = TASKS["qa"]().prompt({"question": "Why?"}).messages[0]["content"]
    assert content == "Question: Why?\nAnswer briefly."


# --- math --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18", "18"), ("The answer is 1,234.", "1234"),
     ("so the total is $42.00. The answer is: 42", "42"), ("\\boxed{3.5}", "3.5"),
     ("First 3 apples, then 4 more: 7 apples in all.", "7"), ("-5", "-5"), ("I don't know", None), (None, None)],
)
def test_math_parse(text, expected):
    assert TASKS["math"]().parse(text, {}) == expected


def test_math_reference_from_gsm8k_solution():
    task = TASKS["math"]()
    prompt = task.prompt({"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"})
    assert prompt.reference == "4" and "#### <number>" in prompt.messages[0]["content"]
    assert task.score(task.parse("The answer is 4.0", {}), prompt.reference, {}) == 1.0
    with pytest.raises(RowError, match="holds no number"):
        task.prompt({"question": "q", "answer": "four"})


@pytest.mark.parametrize(
    "text, number",
    [("$1,234.50", "1234.5"), ("$ 7", "7"), ("- 3", "-3"), ("0.0000001", "0.0000001"), ("12.0", "12"), ("seven", None)],
)
def test_canonical_numbers_drop_currency_separators_and_trailing_zeros(text, number):
    from kdist.tasks.math_problems import canonical_number

    assert canonical_number(text) == number


def test_a_marked_final_answer_wins_over_a_later_number_and_bad_rows_name_the_column():
    task = task_for(TASKS["math"].Settings(columns={"answer": "solution"}))
    assert task.parse("#### 42 (about 40 minutes)", {}) == "42"
    assert task.parse("\\boxed{12} after 3 tries", {}) == "12"
    assert task.parse("the answer is 5, not 6", {}) == "5"
    prompt = task.prompt({"question": "How many legs?", "solution": "  "}, "Think.")
    assert prompt.reference is None
    assert prompt.messages[0] == {"role": "system", "content": "Think."}
    assert "How many legs?" in prompt.messages[1]["content"]
    long = "no digits here but a long explanation of the reasoning steps"
    with pytest.raises(RowError, match=f"^column 'solution': {re.escape(repr(long[:40]))} holds no number$"):
        task.prompt({"question": "q", "solution": long})


def test_exact_match_and_token_f1_on_hand_made_cases():
    from kdist.tasks.metrics import exact_match, rouge, token_f1

    assert exact_match("The Paris!", ["paris"]) == 1.0 and exact_match("Rome", ["paris"]) == 0.0
    # 2 common tokens: precision 2/3, recall 2/4 -> F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    assert token_f1("red big ball", ["red ball on grass"]) == pytest.approx(4 / 7)
    assert token_f1("a", ["the"]) == 1.0  # both empty once articles go
    assert token_f1("ball", ["the"]) == 0.0 and token_f1("", ["ball"]) == 0.0
    assert token_f1("ball", []) == 0.0 and token_f1("dog", ["cat"]) == 0.0
    # Porter stemming, as the summarisation papers report ROUGE: "running" matches "run".
    assert rouge("cats running", "cat run")["rouge1"] == 1.0


# --- summarization and conversation ------------------------------------------------------------


def test_summarization_template_renders_the_document_and_keeps_the_reference():
    prompt = TASKS["summarization"]().prompt({"document": "The council approved a park.", "summary": "A park."})
    assert prompt.messages == [{"role": "user", "content": "Summarize the following text in a few sentences.\n\nThe council approved a park."}]
    assert prompt.reference == "A park."


def test_summarization_rouge_on_hand_made_cases():
    task = TASKS["summarization"]()
    assert task.parse("Here is a short summary of the text: The cat sat.", {}) == "The cat sat."
    perfect = task.metrics(["the cat sat on the mat"], ["the cat sat on the mat"], [{}])
    assert perfect["rouge1"] == perfect["rouge2"] == perfect["rougeL"] == 1.0
    half = task.metrics(["the cat"], ["the cat sat down"], [{}])
    assert half["rouge1"] == round(2 * 1 * 0.5 / 1.5, 4)  # P 1, R 1/2
    assert task.metrics([None], ["x"], [{}])["rougeL"] == 0.0


def test_conversation_takes_the_last_assistant_turn_as_reference():
    task = TASKS["conversation"]()
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Recipe for tea?"}, {"role": "assistant", "content": "Boil water, add tea."}]  # fmt: skip
    prompt = task.prompt({"messages": chat}, "Be kind.")
    assert [t["role"] for t in prompt.messages] == ["system", "user", "assistant", "user"]
    assert prompt.reference == "Boil water, add tea."
    assert task.prompt({"messages": chat[:3]}).reference is None
    with pytest.raises(RowError, match="must end with a user turn"):
        task.prompt({"messages": chat[:2] + [{"role": "assistant", "content": "more"}]})
    with pytest.raises(RowError, match="turn 1: role must be one of system, user, assistant"):
        task.prompt({"messages": [chat[0], {"role": "bot", "content": "x"}]})
    assert task.score("Boil water, add tea.", prompt.reference, {}) == 1.0
    assert prompt.messages[0] == {"role": "system", "content": "Be kind."}
    assert prompt.meta == {"turns": 4}
    # A chat with its own system turn keeps it; without a system prompt none is added.
    own = task.prompt({"messages": [{"role": "system", "content": "Be brief."}, *chat[:3]]}, "Be kind.")
    assert [t["content"] for t in own.messages[:2]] == ["Be brief.", "Hi"]
    assert task.prompt({"messages": chat[:3]}).messages == chat[:3]


@pytest.mark.parametrize(
    "chat, message",
    [([], "column 'dialogue' must be a non-empty list of {role, content} turns"),
     ("Hi", "column 'dialogue' must be a non-empty list of {role, content} turns"),
     ([{"role": "user", "content": " "}], "column 'dialogue' turn 0: content is empty"),
     (["Hi"], "column 'dialogue' turn 0: role must be one of system, user, assistant"),
     ([{"role": "assistant", "content": "Hello"}],
      "column 'dialogue': the chat must end with a user turn (or a user turn and the assistant's reply)")],
)  # fmt: skip
def test_bad_chats_name_their_column_and_turn(chat, message):
    task = task_for(TASKS["conversation"].Settings(columns={"messages": "dialogue"}))
    with pytest.raises(RowError, match=f"^{re.escape(message)}$"):
        task.prompt({"dialogue": chat})
    assert task.metrics(["Boil water", None], ["Boil water", "Add tea"], [{}, {}]) == {"rougeL": 0.5, "parsed": 0.5}


# --- extraction --------------------------------------------------------------------------------

TICKET = {"sentiment": 2, "topic": "billing", "summary": "charged twice", "urgency": "high"}


def test_extraction_parses_json_inside_chatty_text_and_checks_the_schema():
    task = TASKS["extraction"]()
    chatty = "Sure! Here is the triage:\n```json\n" + json.dumps({**TICKET, "topic": "Billing", "sentiment": "2"}) + "\n```\nAnything else?"
    assert json.loads(task.parse(chatty, {})) == TICKET
    assert task.parse(json.dumps({**TICKET, "urgency": "asap"}), {}) is None  # not a choice
    assert task.parse(json.dumps({**TICKET, "sentiment": 9}), {}) is None  # out of 1-5
    assert task.parse("no json here", {}) is None
    content = task.prompt({"text": "I was charged twice!"}).messages[0]["content"]
    assert '"urgency": How urgent is it (low, medium or high)? One of: low, medium, high.' in content


def test_extraction_per_field_accuracy_and_fully_correct_rate():
    task = TASKS["extraction"]()
    reference = task.prompt({"text": "t", "answer": TICKET}).reference
    wrong_topic = json.dumps({**TICKET, "topic": "shipping", "summary": "other words"})
    result = task.metrics([json.dumps(TICKET), wrong_topic, None], [reference] * 3, [{}] * 3)
    assert result["field_accuracy.sentiment"] == round(2 / 3, 4)
    assert result["field_accuracy.topic"] == round(1 / 3, 4)
    assert "field_accuracy.summary" not in result  # free text is not scored
    assert result["fully_correct"] == round(1 / 3, 4) and result["parsed"] == round(2 / 3, 4)
    with pytest.raises(RowError, match="not an answer of the fields"):
        task.prompt({"text": "t", "answer": {"sentiment": 2}})


def test_the_default_triage_fields_accept_what_their_questions_allow_and_nothing_else():
    task = TASKS["extraction"]()
    content = task.prompt({"text": "Parcel lost"}, "Triage.").messages
    assert content[0] == {"role": "system", "content": "Triage."}
    for question in ("How positive is the customer, from 1 (angry) to 5 (delighted)?",
                     "What is the ticket about (billing, shipping, technical, account or other)?",
                     "Summarise the ticket in one sentence.", "Parcel lost"):  # fmt: skip
        assert question in content[1]["content"]
    for topic in ("billing", "shipping", "technical", "account", "other", " Shipping "):
        assert json.loads(task.parse(json.dumps({**TICKET, "topic": topic}), {}))["topic"] == topic.strip().lower()
    for sentiment, ok in ((0, False), (1, True), (5, True), (6, False)):
        assert (task.parse(json.dumps({**TICKET, "sentiment": sentiment}), {}) is not None) == ok
    # Only choice fields are lower-cased; the answer keeps the fields' order.
    summary = json.loads(task.parse(json.dumps({**TICKET, "summary": "Charged TWICE"}), {}))
    assert summary["summary"] == "Charged TWICE" and list(summary) == ["sentiment", "topic", "summary", "urgency"]
    # A reference given as JSON text is read like one given as an object.
    assert task.prompt({"text": "t", "answer": json.dumps(TICKET)}).reference == task.prompt({"text": "t", "answer": TICKET}).reference
    assert task.prompt({"text": "t", "answer": ""}).reference is None
    with pytest.raises(RowError, match=r"^column 'gold': not an answer of the fields \(not a JSON object\)$"):
        task_for(TASKS["extraction"].Settings(columns={"answer": "gold"})).prompt({"text": "t", "gold": "[1, 2]"})
    assert task.metrics([], [], []) == {"fully_correct": 0.0, "parsed": 0.0}


# --- grading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [('{"score": 0.9, "rationale": "right"}', "0.9"), ('Sure. ```json\n{"rationale": "half", "score": "0.5"}\n```', "0.5"),
     ("Score: 1\nRationale: correct.", "1"), ('{"score": 7}', None), ("looks fine", None)],
)
def test_grading_parse(text, expected):
    assert TASKS["grading"]().parse(text, {}) == expected


def test_grading_metrics_are_the_judge_agreement_functions():
    task = TASKS["grading"]()
    assert task.prompt({"question": "q", "answer": "a", "score": 0.85}).label == "True"
    with pytest.raises(RowError, match=r"score 1.5 is not a number in \[0, 1\]"):
        task.prompt({"question": "q", "answer": "a", "score": 1.5})
    result = task.metrics(["0.9", "0.2", "0.85", None], ["1", "0.1", "0.5", "0.9"], [{}] * 4)
    assert result["agreement"] == 0.5  # rows 1, 2 agree; row 3 disagrees; row 4 unparsed
    # Over the three parsed rows: x - mean = (.25, -.45, .2), y - mean = (.4667, -.4333, -.0333)
    assert result["pearson"] == pytest.approx(0.305 / (0.305 * 0.40667) ** 0.5, abs=1e-3)
    assert result["spearman"] == 1.0  # same order on both sides
    assert result["mae"] == round((0.1 + 0.1 + 0.35) / 3, 4)


def test_grading_prompts_show_question_context_and_answer_and_label_at_the_threshold():
    task = task_for(TASKS["grading"].Settings(columns={"score": "human"}, threshold=0.5))
    prompt = task.prompt({"question": "Capital of France?", "context": "Paris is the capital.",
                          "answer": "Lyon", "human": 0.5}, "Grade strictly.")  # fmt: skip
    assert prompt.messages[0] == {"role": "system", "content": "Grade strictly."}
    for shown in ("Capital of France?", "Paris is the capital.", "Lyon"):
        assert shown in prompt.messages[1]["content"]
    assert (prompt.reference, prompt.label) == ("0.5", "True")  # at the threshold is acceptable
    unlabelled = task.prompt({"question": "q", "answer": "a", "human": ""})
    assert (unlabelled.reference, unlabelled.label) == (None, None)
    assert task.prompt({"question": "q", "answer": "a", "human": 0}).reference == "0"
    with pytest.raises(RowError, match=r"^column 'human': score 'high' is not a number in \[0, 1\]$"):
        task.prompt({"question": "q", "answer": "a", "human": "high"})


def test_grading_scores_read_past_unreadable_and_scoreless_json_and_metrics_use_the_threshold():
    task = task_for(TASKS["grading"].Settings(threshold=0.5))
    assert task.parse('{not json} {"score": 0.4}', {}) == "0.4"
    assert task.parse('{"rationale": "fine"} Score: 0.3', {}) == "0.3"
    result = task.metrics(["0.6", "0.4", None], ["0.7", "0.6", "0.1"], [{}] * 3)
    # At 0.5 row 1 agrees, row 2 does not (at 0.8 both would), the unparsed row 3 does not.
    assert result["agreement"] == 0.3333
    assert result["parsed"] == 0.6667 and result["mae"] == 0.15
    assert task.metrics([None], ["0.5"], [{}])["agreement"] == 0.0
    assert task.metrics([None], ["0.5"], [{}])["parsed"] == 0.0


def test_task_settings_base_is_not_a_task():
    assert TaskSettings.FIELDS == ()
