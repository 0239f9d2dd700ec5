import pytest

from kdist.data import synthetic
from kdist.data.tasks import MultipleChoice, parse_choice


@pytest.mark.parametrize(
    "text, expected",
    [("B", "B"), (" (C) cat", "C"), ("D) drum", "D"), ("The answer is E.", "E"),
     ("answer: a", "A"), ("", None), (None, None), ("Z", None), ("I think so", None)],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_parse_choice_respects_allowed_letters():
    assert parse_choice("E", letters="ABC") is None


def test_user_message_lists_labelled_choices():
    question = MultipleChoice("Which?", ["x", "y", "z"], "B")
    assert question.user_message().startswith("Which? A) x B) y C) z")


def test_synthetic_is_seeded_and_answers_are_right():
    first = list(synthetic.generate({"train": 50}, seed=3))
    again = list(synthetic.generate({"train": 50}, seed=3))
    other = list(synthetic.generate({"train": 50}, seed=4))
    assert first == again and first != other
    for _, _, question in first:
        category = question.question.removeprefix("Which item is ").split(" ", 1)[1].rstrip("?")
        chosen = question.choices["ABCDE".index(question.answer)]
        assert chosen in synthetic.CATEGORIES[category]
        others = [c for c in question.choices if c != chosen]
        assert not set(others) & set(synthetic.CATEGORIES[category])


def test_answer_letters_are_spread_over_positions():
    answers = [q.answer for _, _, q in synthetic.generate({"train": 500}, seed=0)]
    assert all(answers.count(letter) > 60 for letter in "ABCDE")


def test_parse_answer_uses_the_prompts_choices():
    from kdist.data.tasks import parse_answer

    meta = '{"choices": ["a", "b", "c"]}'
    assert parse_answer("multiple_choice", meta, "The answer is c") == "C"
    assert parse_answer("multiple_choice", meta, "E") is None  # only three choices
    assert parse_answer("multiple_choice", meta, None) is None
