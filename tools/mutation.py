"""Mutation testing of kdist's core modules with mutmut (`make mutation`; not part of `make test`).

Each group below mutates its modules and runs only their fast tests. A group runs in its own
copy of the tree under build/mutation/<group>/ (mutmut writes its mutants/ there), so the
working tree is never mutated and other runs of the suite are not disturbed. A group stops at
its time box (MUTATION_SECONDS, default 1200 s); what finished is counted, and the report says
how many mutants were not run.

    python tools/mutation.py [GROUP ...]      # default: every group
    -> build/mutation/<group>/results.txt      (every mutant with its status)
    -> build/mutation/summary.json             (killed / survived / not run, per module)

The score is killed / (killed + survived + timeout-free mutants with no verdict); a mutant
whose tests time out counts as killed (mutmut's own convention: the mutation was noticed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"

# group -> (modules to mutate, their fast tests)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    # The cross-tokenizer losses (ULD, merged spans) are tested through the objective's tests:
    # without them, 350 of the 1,106 mutants had no test at all (2026-12-04).
    "losses": (
        ["kdist/train/losses.py"],
        ["tests/train/test_losses.py", "tests/train/test_logit_transforms.py", "tests/train/test_cross_tokenizer.py",
         "tests/train/test_offline_cross_tokenizer.py", "tests/train/test_objective.py",
         "tests/train/test_on_policy.py"],
    ),  # fmt: skip
    # The objective's on-policy rows, cross-tokenizer teachers and logit transforms have tests
    # of their own: without them, 132 mutants of those branches survived (2026-12-04).
    "objective": (
        ["kdist/train/objective.py"],
        ["tests/train/test_objective.py", "tests/train/test_on_policy.py", "tests/train/test_cross_tokenizer.py",
         "tests/train/test_logit_transforms.py"],
    ),  # fmt: skip
    "packing": (["kdist/train/packing.py"], ["tests/train/test_packing.py"]),
    "tasks": (
        ["kdist/tasks/base.py", "kdist/tasks/metrics.py", "kdist/tasks/multiple_choice.py", "kdist/tasks/nli.py",
         "kdist/tasks/qa.py", "kdist/tasks/math_problems.py", "kdist/tasks/summarization.py",
         "kdist/tasks/conversation.py", "kdist/tasks/extraction.py", "kdist/tasks/grading.py"],
        ["tests/tasks/test_tasks.py", "tests/reporting/test_scores.py", "tests/train/test_accuracy.py"],
    ),  # fmt: skip
    "judging": (
        ["kdist/judging/pairwise.py", "kdist/judging/verdicts.py", "kdist/judging/agreement.py"],
        ["tests/judging/test_pairwise.py", "tests/judging/test_verdicts.py", "tests/judging/test_agreement.py"],
    ),
    "filter": (["kdist/stages/filter.py"], ["tests/stages/test_stage_logic.py"]),
    "store": (["kdist/llm/store.py"], ["tests/llm/test_store.py", "tests/stages/test_stage_logic.py"]),
}
KILLED = {"killed", "timeout"}


def setup_cfg(modules: list[str], tests: list[str]) -> str:
    lines = ["[mutmut]", "source_paths = kdist", "only_mutate =", *(f"    {m}" for m in modules),
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests),
             "pytest_add_cli_args =", "    -m", "    not slow", "    -p", "    no:cacheprovider",
             "process_isolation = forkserver", "use_git_change_detection = false", ""]  # fmt: skip
    return "\n".join(lines)


def run_group(name: str, seconds: float) -> dict[str, dict[str, int]]:
    modules, tests = GROUPS[name]
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "kdist", work / "kdist", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    (work / "setup.cfg").write_text(setup_cfg(modules, tests))
    mutmut = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()"]
    started = time.monotonic()
    with open(work / "run.log", "w") as log:
        try:
            subprocess.run([*mutmut, "run", "--max-children", os.environ.get("MUTATION_CHILDREN", "2")], cwd=work,
                           stdout=log, stderr=subprocess.STDOUT, timeout=seconds, check=False)  # fmt: skip
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
    listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=False)
    (work / "results.txt").write_text(listing.stdout)
    per_module: dict[str, Counter[str]] = {m: Counter() for m in modules}
    for line in listing.stdout.splitlines():
        key, _, status = line.strip().rpartition(": ")
        module = key.split(".x_")[0].split(".xǁ")[0].replace(".", "/") + ".py"
        if module in per_module:
            per_module[module][status] += 1
    summary = {}
    for module, counts in per_module.items():
        killed = sum(counts[s] for s in KILLED)
        judged = killed + counts["survived"]
        summary[module] = {**counts, "score": round(killed / judged, 3) if judged else None,
                           "group_finished": finished, "group_seconds": round(time.monotonic() - started)}  # fmt: skip
    return summary


def main(names: list[str]) -> int:
    seconds = float(os.environ.get("MUTATION_SECONDS", "1200"))
    summary_path = WORK / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in names or list(GROUPS):
        result = run_group(name, seconds)
        summary.update(result)
        WORK.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True))
        for module, counts in result.items():
            print(f"{module}: {dict(counts)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
