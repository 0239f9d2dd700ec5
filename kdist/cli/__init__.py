"""The `kdist` command line: one subcommand per stage, the whole run, the demo and validation.

argparse gives `--help` on every subcommand and exits 2 on usage errors; config errors
(ConfigError) also exit 2 with one line. Each area of kdist registers its own subcommands
through a `register(subparsers)` function in this package (kdist/cli/), so this module stays
a thin index. The library never imports the CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from kdist.cli.common import add_config_args, add_run_args, config_from_args, overrides_of
from kdist.config import ConfigError
from kdist.errors import StageFailed, UsageError, one_line_cause
from kdist.stages import STAGE_NAMES, STAGES

USAGE_ERROR = 2


def _stage_command(stage: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from kdist import pipeline

        config = config_from_args(args)
        return pipeline.run_stages(config, [stage], resume=args.resume)

    return handler


def _run(args: argparse.Namespace) -> int:
    from kdist import pipeline

    config = config_from_args(args)
    code = pipeline.run_stages(config, STAGE_NAMES, resume=args.resume)
    _print_evaluation(config)
    return code


def _print_evaluation(config) -> None:
    """The evaluation's few lines at the end of a run (kdist.reporting)."""
    from kdist import storage
    from kdist.pipeline import stage_dirs
    from kdist.reporting.report import METRICS, REPORT, terminal_summary

    eval_dir = stage_dirs(config)["evaluate"]
    if storage.exists(storage.join(eval_dir, METRICS)):
        print(terminal_summary(storage.read_json(storage.join(eval_dir, METRICS))))
        print(f"report: {storage.join(eval_dir, REPORT)}", flush=True)


def _validate(args: argparse.Namespace) -> int:
    from kdist.demo import is_demo_config, load_demo_config

    if is_demo_config(args.config):
        config = load_demo_config(args.config, overrides_of(args))
    else:
        config = config_from_args(args)
    print(f"{args.config}: ok (run '{config.run.name}', outputs in {config.run.output_dir})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kdist import demo

    return demo.run_demo(args.config, overrides_of(args), resume=args.resume)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdist", description="LLM knowledge distillation on Ray and Kubernetes."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every stage in order")
    add_config_args(run)
    add_run_args(run)
    run.set_defaults(handler=_run)

    for stage in STAGES:
        stage_parser = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        add_config_args(stage_parser)
        add_run_args(stage_parser)
        stage_parser.set_defaults(handler=_stage_command(stage.name))

    demo = sub.add_parser(
        "demo", help="offline end-to-end demo: train a teacher, distil a student, compare"
    )
    add_config_args(demo, required=False)
    add_run_args(demo)
    demo.set_defaults(handler=_demo)

    validate = sub.add_parser("validate", help="check a run config and exit")
    add_config_args(validate)
    validate.set_defaults(handler=_validate)

    for register in _extra_registrations():
        register(sub)
    return parser


def _extra_registrations() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands that live with their own area of kdist."""
    from kdist.cli import export, k8s, plan, report

    return [k8s.register, export.register, plan.register, report.register]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except Exception as err:
        # Raised in a Ray worker, a UsageError arrives wrapped in Ray's errors (with the
        # worker's traceback in the message): report the original, in its one line.
        cause = one_line_cause(err, (ConfigError, UsageError, StageFailed))
        if cause is None:
            raise
        prefix = "config error: " if isinstance(cause, ConfigError) else ""
        print(f"kdist: {prefix}{str(cause).splitlines()[0]}", file=sys.stderr)
        return 1 if isinstance(cause, StageFailed) else USAGE_ERROR
