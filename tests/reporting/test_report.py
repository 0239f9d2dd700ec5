"""The report built from an evaluation's files alone (hand-made here, as the evaluate stage
writes them): files exist, every figure in report.md is the one in metrics.json, the plots
are PNGs, `kdist report` rebuilds the same, `kdist compare` puts runs side by side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from kdist import storage
from kdist.cli import main
from kdist.reporting import report

PRICES = {"input_per_million_tokens": 1.0, "output_per_million_tokens": 4.0, "currency": "USD"}


def _write_run(run_dir: Path, student_right: list[bool], judge: bool = True) -> Path:
    """Six questions; base never right, teacher always, the student as given."""
    eval_dir, train_dir = run_dir / "eval", run_dir / "student"
    eval_dir.mkdir(parents=True)
    train_dir.mkdir(parents=True)
    ids = [f"q{i}" for i in range(len(student_right))]
    right = {"base": [False] * len(ids), "student": student_right, "teacher": [True] * len(ids)}
    results = [{"id": i, "model": m, "prompt": f"Question {i}? A) x B) y", "response": "B" if ok else "garbage text",
                "answer": "B" if ok else None, "reference": "B", "score": float(ok), "correct": ok}
               for m, oks in right.items() for i, ok in zip(ids, oks)]  # fmt: skip
    storage.write_table(str(eval_dir / report.RESULTS), pa.Table.from_pylist(results, schema=report.RESULT_SCHEMA))
    accuracy = {m: round(sum(oks) / len(oks), 4) for m, oks in right.items()}
    facts = {
        "split": "test", "rows": len(ids), "task": "multiple_choice", "headline": "accuracy",
        "models": {"base": {"label": "hf:base", "answers_from": "evaluate", "prices": None},
                   "student": {"label": "openai:ft-student", "answers_from": "evaluate", "prices": PRICES},
                   "teacher": {"label": "openai:teacher", "answers_from": "generate (stored)", "prices": PRICES}},
        "metrics": {m: {"accuracy": a, "parsed": a} for m, a in accuracy.items()},
        "chance": {"accuracy": 0.5},
        "judge": "openai:judge" if judge else None,
        "compared": [["student", "base"], ["student", "teacher"]] if judge else [],
        "wall": {"student": {"seconds": 2.0, "completion_tokens": 60}}, "seed": 0, "worst_rows": 3,
    }  # fmt: skip
    storage.write_json(str(eval_dir / report.FACTS), facts)
    # The judge prefers a parsed answer; two parsed answers or two unparsed ones are a tie, and
    # the last pair of student vs teacher flips.
    compared = []
    for first, second in facts["compared"]:
        for n, row_id in enumerate(ids):
            a, b = right[first][n], right[second][n]
            outcome = "tie" if a == b else ("first" if a else "second")
            flipped = first == "student" and second == "teacher" and n == len(ids) - 1
            compared.append({"id": row_id, "first": first, "second": second, "verdict_in_order": "A",
                             "verdict_swapped": "A" if flipped else "B", "outcome": "tie" if flipped else outcome,
                             "flipped": flipped, "length_difference": 10 * (a - b), "rationale": f"because {n}"})  # fmt: skip
    if compared:
        storage.write_table(str(eval_dir / report.COMPARISONS), pa.Table.from_pylist(compared, schema=report.COMPARISON_SCHEMA))
    timed = [{"model": m, "seconds": 0.1 * (n + 1), "prompt_tokens": 50, "completion_tokens": 10}
             for m in ("base", "student") for n in range(len(ids))]  # fmt: skip
    storage.write_table(str(eval_dir / report.SPEED), pa.Table.from_pylist(timed, schema=report.SPEED_SCHEMA))
    steps = [{"step": s, "loss": 2.0 / s, **({"val_loss": 2.5 / s} if s % 5 == 0 else {})} for s in range(1, 21)]
    (train_dir / report.TRAINING_METRICS).write_text("".join(json.dumps(r) + "\n" for r in steps))
    return run_dir


def _table(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_report_shows_what_metrics_json_says(tmp_path):
    run = _write_run(tmp_path / "run", [True, True, True, True, False, False])
    metrics = report.build(str(run / "eval"), str(run / "student"))
    on_disk = json.loads((run / "eval" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["accuracy"] == {"base": 0.0, "student": pytest.approx(0.6667), "teacher": 1.0}
    assert metrics["recovered"]["accuracy"] == pytest.approx(0.6667)
    vs_base, vs_teacher = metrics["comparisons"]["student_vs_base"], metrics["comparisons"]["student_vs_teacher"]
    assert (vs_base["wins"], vs_base["ties"], vs_base["losses"], vs_base["n"]) == (4, 2, 0, 6)
    assert vs_base["win_rate"] == 1.0 and vs_base["tie_rate"] == pytest.approx(2 / 6, abs=1e-4)
    assert vs_base["judge_accuracy"] == 1.0  # 4 pairs decided by the labels, all 4 picked
    assert (vs_teacher["wins"], vs_teacher["losses"], vs_teacher["flips"]) == (0, 1, 1)
    assert vs_teacher["flip_rate"] == pytest.approx(1 / 6, abs=1e-4)
    assert vs_teacher["judge_accuracy"] == 0.5  # of the 2 pairs only the teacher got right, 1 picked (1 flip)
    assert set(vs_base) >= {"win_rate", "tie_rate", "flip_rate", "ci", "length_controlled_win_rate", "n", "judge_accuracy"}
    assert metrics["speed"]["student"]["tokens_per_s"] == 30.0
    assert metrics["speed"]["teacher"]["answers"] == 0 and metrics["speed"]["base"]["cost_per_1000_answers"] is None
    assert metrics["worst_rows"] == ["q4", "q5"]
    assert metrics["training"] == {"steps": 20, "first_loss": 2.0, "final_loss": 0.1, "final_val_loss": 0.125}

    text = (run / "eval" / "report.md").read_text()
    for model, accuracy, parsed in _table(text, "| model | accuracy"):
        if model in metrics["metrics"]:
            assert float(accuracy) == pytest.approx(metrics["metrics"][model]["accuracy"], abs=5e-4)
            assert float(parsed) == pytest.approx(metrics["metrics"][model]["parsed"], abs=5e-4)
    rows = {row[0]: row for row in _table(text, "| model | accuracy")}
    assert float(rows["chance"][1]) == 0.5 and float(rows["recovered share"][1]) == pytest.approx(metrics["recovered"]["accuracy"], abs=5e-4)
    for key, n, win, ci, tie, flip, lc, accuracy in _table(text, "| comparison |"):
        shown = metrics["comparisons"][key]
        assert int(n) == shown["n"] and float(tie) == pytest.approx(shown["tie_rate"], abs=5e-4)
        assert float(flip) == pytest.approx(shown["flip_rate"], abs=5e-4)
        assert float(lc) == pytest.approx(shown["length_controlled_win_rate"], abs=5e-4)
        assert float(accuracy) == pytest.approx(shown["judge_accuracy"], abs=5e-4)
        assert win == "-" if shown["win_rate"] is None else float(win) == pytest.approx(shown["win_rate"], abs=5e-4)
        low, high = (float(x) for x in ci.split(" - "))
        assert (low, high) == (pytest.approx(shown["ci"][0], abs=5e-4), pytest.approx(shown["ci"][1], abs=5e-4))
    speed = {row[0]: row for row in _table(text, "| model | answers timed")}
    assert float(speed["student"][4]) == 30.0 and speed["student"][5] == f"{metrics['speed']['student']['cost_per_1000_answers']:.4f} USD"
    assert float(speed["base"][2]) == pytest.approx(metrics["speed"]["base"]["latency_s"]["p50"], abs=5e-4)
    worst = re.findall(r"^### `(q\d)`", text, re.MULTILINE)
    assert worst == metrics["worst_rows"] and "because 4" in text
    for png in ("metrics.png", "judge.png", "loss.png"):
        assert f"]({png})" in text
        with Image.open(run / "eval" / png) as image:
            assert image.format == "PNG" and image.size[0] > 100
            image.verify()


def test_no_judge_no_comparisons_and_a_teacher_at_the_base_says_so(tmp_path):
    run = _write_run(tmp_path / "run", [True, False], judge=False)
    facts = json.loads((run / "eval" / report.FACTS).read_text())
    facts["metrics"]["teacher"] = dict(facts["metrics"]["base"])
    (run / "eval" / report.FACTS).write_text(json.dumps(facts))
    metrics = report.build(str(run / "eval"), str(run / "missing-train"))
    assert metrics["comparisons"] == {} and metrics["training"] is None
    assert metrics["recovered"]["accuracy"] is None
    text = (run / "eval" / "report.md").read_text()
    assert "no better than the base" in text and "None: no model judge" in text
    assert not (run / "eval" / "judge.png").exists() and not (run / "eval" / "loss.png").exists()
    assert "recovered share: none" in report.terminal_summary(metrics)


def test_kdist_report_rebuilds_from_the_files_alone(tmp_path, capsys):
    run = _write_run(tmp_path / "run", [True, False, True])
    first = report.build(str(run / "eval"), str(run / "student"))
    first_text = (run / "eval" / "report.md").read_text()
    (run / "eval" / "metrics.json").unlink()
    (run / "eval" / "report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text()) == json.loads(json.dumps(first))
    assert (run / "eval" / "report.md").read_text() == first_text
    out = capsys.readouterr().out
    assert "accuracy on 3 rows of test: base 0.000, student 0.667, teacher 1.000" in out
    assert "judge student_vs_base: win rate 1.000" in out


def test_kdist_report_of_a_directory_without_an_evaluation_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no eval/evaluation.json" in capsys.readouterr().err


def test_kdist_compare_puts_runs_side_by_side(tmp_path, capsys):
    for name, student in (("seq", [True, True, False, False]), ("logit", [True, True, True, False])):
        run = _write_run(tmp_path / name, student)
        report.build(str(run / "eval"), str(run / "student"))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "seq"), str(tmp_path / "logit"), "--out", str(out)]) == 0
    table = _table((out / "compare.md").read_text(), "| run | model |")
    by_key = {(row[0], row[1]): row for row in table}
    assert len(table) == 6
    assert float(by_key[("seq", "student")][2]) == 0.5 and float(by_key[("logit", "student")][2]) == 0.75
    assert float(by_key[("logit", "student")][-1]) == 0.75 and by_key[("logit", "base")][-1] == "-"
    assert "| logit | student |" in capsys.readouterr().out
    for metric in ("accuracy", "parsed"):
        with Image.open(out / f"compare_{metric}.png") as image:
            image.verify()
