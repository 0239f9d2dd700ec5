"""The procedural multiple-choice source of the offline demo."""

from kdist.data import synthetic


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
