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


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)
