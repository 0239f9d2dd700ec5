"""`kdist submit`, `status`, `logs`, `cancel`: a run as a KubeRay RayJob on Kubernetes."""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from kdist.cli.common import add_config_args
from kdist.errors import UsageError
from kdist.k8s.chart_values import chart_values
from kdist.k8s.rayjob import build_configmap, build_rayjob, check_name, job_name
from kdist.stages import JOB_COMMANDS
from kdist.k8s.shipped_config import ShippedConfig, load_shipped_config

FAILED = 1
INTERRUPTED = 130

# The kubernetes client takes a second to import: only the commands that talk to a cluster
# import it (kdist.k8s.jobs and kdist.k8s.api), inside their handlers.


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="run a config on Kubernetes as a KubeRay RayJob and follow it",
        description="Create a RayJob (and the ConfigMap with the run config) from a config's"
        " `cluster` section, follow its status, print where outputs land.",
    )
    add_config_args(submit)
    submit.add_argument("--name", help="RayJob name (default: from run.name)")
    submit.add_argument(
        "--stage",
        choices=JOB_COMMANDS,
        help="what the job runs (default: demo for a demo config, else run)",
    )
    submit.add_argument("--namespace", "-n", help="overrides cluster.namespace")
    waiting = submit.add_mutually_exclusive_group()
    waiting.add_argument("--no-wait", action="store_true", help="create it and return")
    waiting.add_argument(
        "--follow", "-f", action="store_true", help="stream the job's driver log until it ends"
    )
    submit.add_argument("--timeout", type=float, help="stop following after SECONDS")
    submit.add_argument(
        "--dry-run", action="store_true", help="print the objects as YAML, contact nothing"
    )
    submit.add_argument(
        "--print-values", action="store_true", help="print the config as helm/kdist values"
    )
    _add_connection_args(submit)
    submit.set_defaults(handler=_submit)

    for command, text, handler in (
        ("status", "show a RayJob's status", _status),
        ("cancel", "stop a RayJob and delete its Ray cluster", _cancel),
    ):
        parser = subparsers.add_parser(command, help=text, description=text)
        parser.add_argument("name", help="RayJob name")
        parser.add_argument("--namespace", "-n", help="default: the kubeconfig context's")
        _add_connection_args(parser)
        parser.set_defaults(handler=handler)

    logs = subparsers.add_parser(
        "logs",
        help="print a RayJob's driver log (from its submitter pod)",
        description="Print the driver log of a RayJob: the log of KubeRay's submitter pod,"
        " which runs `ray job logs --follow`. With --follow, stream it until the job ends.",
    )
    logs.add_argument("name", help="RayJob name")
    logs.add_argument("--namespace", "-n", help="default: the kubeconfig context's")
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    _add_connection_args(logs)
    logs.set_defaults(handler=_logs)


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def _submit(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.namespace:
        overrides.append(f"cluster.namespace={args.namespace}")
    if args.stage is None:
        from kdist.demo import is_demo_config

        args.stage = "demo" if is_demo_config(args.config) else "run"
    run = load_shipped_config(args.config, overrides, args.stage)
    config = run.config
    name = args.name or job_name(config)
    try:
        check_name(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.dry_run or args.print_values:
        if args.print_values:
            print(yaml.safe_dump(chart_values(run, args.stage), sort_keys=False), end="")
        else:
            objects = [build_configmap(run, name), build_rayjob(config, name, args.stage)]
            print(yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False), end="")
        return 0
    return _guarded(lambda: _submit_and_follow(args, run, name))


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the run config in the ConfigMap) as readable YAML blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def _submit_and_follow(args: argparse.Namespace, run: ShippedConfig, name: str) -> int:
    from kdist.k8s import jobs, logs
    from kdist.k8s.api import connect

    config = run.config
    namespace = config.cluster.namespace
    with connect(args.kubeconfig, args.context) as api:
        created = jobs.submit(api, run, name, args.stage)
        print(f"created RayJob {namespace}/{name} (stage {args.stage})")
        print(f"outputs: {jobs.where_outputs_land(config, name)}")
        if args.no_wait:
            print(f"follow it: kdist status {name} --namespace {namespace}")
            return 0
        on_status = _status_line(name, sys.stdout)
        try:
            if args.follow:  # the driver log as it is written, status changes between
                outcome = logs.follow(api, name, namespace, _print_line, on_status, args.timeout)
            else:
                outcome = jobs.follow(
                    api,
                    name,
                    namespace,
                    since=created["metadata"]["resourceVersion"],
                    timeout=args.timeout,
                    on_change=on_status,
                )
        except KeyboardInterrupt:
            print(f"\nstopped following; the job goes on: kdist status {name} -n {namespace}")
            return INTERRUPTED
        if not outcome.finished:
            print(f"still running after {args.timeout:g} s: kdist status {name} -n {namespace}")
            return FAILED
        if not args.follow:
            _print_logs(api, name, namespace)
        if outcome.succeeded:
            print(f"succeeded; outputs: {jobs.where_outputs_land(config, name)}")
            return 0
        print(f"RayJob {namespace}/{name} did not succeed: {jobs.describe(outcome.status)}")
        return FAILED


def _print_logs(api, name: str, namespace: str) -> None:
    from kdist.k8s import logs
    from kdist.k8s.api import KubeError

    try:
        text = logs.tail(api, name, namespace)
    except KubeError as err:
        print(f"kdist: {err}", file=sys.stderr)
        return
    if text:
        print(f"--- last lines of the job's output ---\n{text.rstrip()}\n---")


def _status_line(name: str, stream):
    return lambda line: print(f"{time.strftime('%X')} {name}: {line}", file=stream, flush=True)


def _print_line(line: str) -> None:
    print(line, flush=True)


def _logs(args: argparse.Namespace) -> int:
    from kdist.k8s import jobs, logs
    from kdist.k8s.api import connect, default_namespace

    try:
        check_name(args.name)
    except ValueError as err:
        raise UsageError(str(err)) from None

    def show() -> int:
        namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
        with connect(args.kubeconfig, args.context) as api:
            if not args.follow:
                print(logs.read(api, args.name, namespace), end="")
                return 0
            # Status lines go to stderr: stdout is the driver log alone (`> driver.log`).
            on_status = _status_line(args.name, sys.stderr)
            try:
                outcome = logs.follow(api, args.name, namespace, _print_line, on_status)
            except KeyboardInterrupt:
                print(f"\nstopped following; the job goes on: kdist status {args.name}"
                      f" -n {namespace}", file=sys.stderr)
                return INTERRUPTED
        if outcome.succeeded:
            return 0
        print(f"kdist: RayJob {namespace}/{args.name} did not succeed:"
              f" {jobs.describe(outcome.status)}", file=sys.stderr)
        return FAILED

    return _guarded(show)


def _status(args: argparse.Namespace) -> int:
    from kdist.k8s import jobs
    from kdist.k8s.api import connect, default_namespace

    def show() -> int:
        namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
        with connect(args.kubeconfig, args.context) as api:
            rayjob = jobs.get(api, args.name, namespace)
        status = rayjob.get("status") or {}
        print(f"RayJob {namespace}/{args.name}: {jobs.describe(status)}")
        for key in ("rayClusterName", "jobId", "startTime", "endTime", "dashboardURL"):
            if status.get(key):
                print(f"  {key}: {status[key]}")
        print(f"  entrypoint: {rayjob['spec'].get('entrypoint', '')}")
        return 0

    return _guarded(show)


def _cancel(args: argparse.Namespace) -> int:
    from kdist.k8s import jobs
    from kdist.k8s.api import connect, default_namespace

    def cancel() -> int:
        namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
        with connect(args.kubeconfig, args.context) as api:
            jobs.cancel(api, args.name, namespace)
        print(f"cancelled RayJob {namespace}/{args.name}; KubeRay deletes its Ray cluster")
        return 0

    return _guarded(cancel)


def _guarded(action) -> int:
    from kdist.k8s.api import KubeError

    try:
        return action()
    except KubeError as err:
        print(f"kdist: {err}", file=sys.stderr)
        return FAILED
