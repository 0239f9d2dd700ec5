"""`kdist report RUN_DIR` (the report rebuilt from a run's files) and `kdist compare RUN_DIR...`."""

from __future__ import annotations

import argparse
import os

from kdist.errors import UsageError
from kdist.stages import BY_NAME


def _dirs(run_dir: str) -> tuple[str, str]:
    from kdist import storage
    from kdist.reporting.report import FACTS

    eval_dir = storage.join(run_dir, BY_NAME["evaluate"].output)
    if not storage.exists(storage.join(eval_dir, FACTS)):
        raise UsageError(f"{run_dir}: no {BY_NAME['evaluate'].output}/{FACTS} (run the evaluate stage there first)")
    return eval_dir, storage.join(run_dir, BY_NAME["train"].output)


def _report(args: argparse.Namespace) -> int:
    from kdist import storage
    from kdist.reporting.report import REPORT, build, terminal_summary

    eval_dir, train_dir = _dirs(args.run_dir)
    metrics = build(eval_dir, train_dir)
    print(terminal_summary(metrics))
    print(f"report: {storage.join(eval_dir, REPORT)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from kdist import storage
    from kdist.reporting.report import METRICS, compare_runs

    runs = {}
    for run_dir in args.run_dirs:
        eval_dir, _ = _dirs(run_dir)
        label = os.path.basename(os.path.normpath(run_dir))
        if label in runs:
            raise UsageError(f"two runs are named '{label}': give run directories with different names")
        runs[label] = storage.read_json(storage.join(eval_dir, METRICS))
    print(compare_runs(runs, args.out), end="")
    print(f"plots and table: {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser("report", help="rebuild a run's report (metrics.json, report.md, plots) from its files",
                                   description="Rebuild eval/metrics.json, eval/report.md and the plots of a finished "
                                               "run from its files alone; asks no model.")  # fmt: skip
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run's output_dir")
    report.set_defaults(handler=_report)
    compare = subparsers.add_parser("compare", help="several runs side by side: one table, one plot per metric",
                                    description="Put the evaluations of several runs side by side.")  # fmt: skip
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output_dirs of evaluated runs")
    compare.add_argument("--out", default="runs/compare", help="where the table and plots go (default runs/compare)")
    compare.set_defaults(handler=_compare)
