"""`kdist plan`: the generate stage's rows, tokens, cost and wall time, before any request."""

from __future__ import annotations

import argparse
import json

from kdist.cli.common import add_config_args, config_from_args


def _plan(args: argparse.Namespace) -> int:
    from kdist.plan import format_plan, plan_generate
    from kdist.runtime import output_dir

    config = config_from_args(args)
    plan = plan_generate(config, output_dir(config), sample=args.sample)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else format_plan(plan))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="estimate the teacher's rows, tokens, cost and wall time before any request",
        description="Estimate what the generate stage will ask (rows not yet answered), their input tokens, "
                    "the output tokens as a range, the cost from teacher.prices and the wall time the rate "
                    "limits allow. Reads prompts/ (run `kdist prepare` first); sends no request unless --sample.",
    )  # fmt: skip
    add_config_args(parser)
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="send N of the requests (paid, not stored) to estimate output tokens and latency")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=_plan)
