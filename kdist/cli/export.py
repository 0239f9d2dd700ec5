"""`kdist export`: the teacher's answers as chat JSONL (kdist.export), one file per split."""

from __future__ import annotations

import argparse

from kdist import storage
from kdist.cli.common import add_config_args, config_from_args
from kdist.export import export_chat_jsonl


def _export(args: argparse.Namespace) -> int:
    from kdist.pipeline import stage_dirs
    from kdist.runtime import output_dir

    config = config_from_args(args)
    dirs = stage_dirs(config)
    out_dir = args.out or storage.join(output_dir(config), "export")
    splits = args.splits or config.teacher.splits
    counts = export_chat_jsonl(dirs["prepare"], dirs["generate"], out_dir, splits, args.include_unparsable)
    for split, count in counts.items():
        print(f"{out_dir.rstrip('/')}/{split}.jsonl: {count} conversations")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write the teacher's answers as chat JSONL for OpenAI/Azure fine-tuning",
        description="Write the teacher's successful answers as chat JSONL, one file per split.",
    )  # fmt: skip
    add_config_args(parser)
    parser.add_argument("--out", help="output directory or URI (default: <run output>/export)")
    parser.add_argument("--splits", nargs="+", help="splits to export (default: teacher.splits)")
    parser.add_argument("--include-unparsable", action="store_true", help="also export answers the task parser rejected")
    parser.set_defaults(handler=_export)
