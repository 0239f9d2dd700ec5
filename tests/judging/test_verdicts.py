"""Reading judges' answers: scores with text around them, JSON, scales; verdicts."""

import pytest

from kdist.judging.verdicts import Grade, Scale, parse_grade, parse_verdict

FIVE = Scale.parse("1-5")


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"rationale": "Correct and complete.", "score": 4}', 4.0),
        ('Sure! Here is my grading:\n```json\n{"score": "5", "rationale": "ok"}\n```', 5.0),
        ("The answer is mostly right.\nScore: 3", 3.0),
        ("**Rating:** 2/5 - it misses the second step.", 2.0),
        ("4", 4.0),
        ("I'd give it a 4/5.", 4.0),
        ("Score: 3. On reflection, Score: 4", 4.0),  # the last labelled number is the verdict
    ],
)
def test_scores_are_read_from_json_or_from_text_around_them(text, score):
    assert parse_grade(text, FIVE).score == score


@pytest.mark.parametrize(
    "text",
    [
        None, "", "I cannot grade this.",
        "Step 1 is right, step 2 is wrong, step 3 is right.",  # several numbers, no label: ambiguous
        '{"score": 7, "rationale": "great"}',  # outside the 1-5 scale
        '{"score": true}',
        "Score: 0",
    ],
)  # fmt: skip
def test_unreadable_or_out_of_scale_verdicts_are_none_never_guessed(text):
    assert parse_grade(text, FIVE).score is None


def test_rationale_and_normalisation():
    grade = parse_grade('{"score": 2, "rationale": "Wrong unit."}', FIVE)
    assert grade.rationale == "Wrong unit." and FIVE.normalise(grade.score) == 0.25
    assert Scale.parse("0-1").normalise(parse_grade("score = 0.7", Scale.parse("0-1")).score) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ('{"rationale": "A is right.", "verdict": "A"}', "A"),
        ("Verdict: [[B]]", "B"),
        ("Both are equally good. Verdict: tie", "tie"),
        ("B", "B"),
        ("**Winner:** A", "A"),
        ("I like both A and B", None),
        ("", None),
        ('{"verdict": "C"}', None),
        ('{"verdict": "(A)"}', "A"),
        ("(B)", "B"),
    ],
)
def test_pairwise_verdicts(text, verdict):
    assert parse_verdict(text) == verdict


def test_the_scale_is_closed_and_an_empty_answer_has_an_empty_rationale():
    scale = Scale.parse("1-5")
    assert parse_grade("Score: 1", scale).score == 1.0 and parse_grade("Score: 5", scale).score == 5.0
    assert parse_grade("", scale) == parse_grade(None, scale) == Grade(None, "")
    # out of the scale: no score, but the judge's rationale is kept for the reader
    assert parse_grade('{"score": 9, "rationale": "great"}', scale) == Grade(None, "great")


def test_json_blobs_are_read_from_the_last_readable_one_back():
    scale = Scale.parse("1-5")
    # the last blob is not JSON, or holds a score that is not a number: the one before counts
    assert parse_grade('{"score": 4, "rationale": "ok"} then {not json}', scale) == Grade(4.0, "ok")
    # (a second number in the text: a fallback to the text alone would find no single score)
    assert parse_grade('{"score": 2} {"score": "high", "of": 5}', scale).score == 2.0
    assert parse_grade('{"score": 3} {"score": true, "of": 5}', scale).score == 3.0
    assert parse_grade('{"score": 3, "reason": "short"}', scale).rationale == "short"
    assert parse_grade('{"score": 3}', scale).rationale == ""


def test_a_labelled_score_wins_over_other_numbers_and_rationales_are_tidied():
    scale = Scale.parse("1-5")
    assert parse_grade("I weighed 2 points against 3. Score: 4", scale).score == 4.0
    assert parse_grade("Fine.\n\n  Clear   answer. 4", scale).rationale == "Fine. Clear answer. 4"
    assert len(parse_grade("word " * 200 + "Score: 4", scale).rationale) == 500
