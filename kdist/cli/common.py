"""What every kdist subcommand that takes a run config shares: --config and KEY=VALUE overrides."""

from __future__ import annotations

import argparse

from kdist.config import RunConfig, load_config


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", "-c", required=required, help="run config (YAML)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied on top of the config, e.g. teacher.concurrency=32",
    )


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """What a command that runs stages takes besides its config."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished stages of an earlier run in the same output dir and do only the rest",
    )
    parser.add_argument(
        "--keep-ray-logs",
        action="store_true",
        help="keep a local Ray's temp dir (its logs) after the run; its path is printed",
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The command line's KEY=VALUE overrides, with the flags that stand for one."""
    flags = ["runtime.keep_ray_logs=true"] if getattr(args, "keep_ray_logs", False) else []
    return [*args.overrides, *flags]


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, overrides_of(args))
