"""Checks a run passes before Ray starts: every mistake they catch would otherwise surface
minutes later inside a worker, as a traceback, after the cluster was started for nothing.

What they check comes from the stage registry (kdist.stages): the output location can be
written, the outputs of earlier stages that a stage reads are there, every file a stage reads
from outside the run exists (or is a hub id where a hub id is allowed), and the key variable
of every endpoint it calls is set. Each failure is one UsageError line naming the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from kdist import storage
from kdist.config import HostedTrainSection
from kdist.endpoints import Endpoint, RemoteEndpoint
from kdist.errors import UsageError
from kdist.stages import BY_NAME, StageContext

# `org/name` or `name`: what a Hugging Face hub id looks like (a local path has more parts
# or starts with '.', '/' or '~').
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_run(context: StageContext, stages: Sequence[str]) -> None:
    check_writable(context.root)
    for name in stages:
        stage = BY_NAME[name]
        _check_inputs_done(context, name, stages)
        for field, location in stage.sources(context.config).items():
            check_location(field, location, hub_id_allowed=_hub_id_allowed(context, field))
        for role, endpoint in stage.endpoints(context.config).items():
            check_credentials(endpoint, role)


def check_writable(root: str) -> None:
    """A local output dir must be creatable: its nearest existing ancestor a writable dir."""
    if not storage.is_local(root):
        storage.filesystem_for(root)  # an unknown scheme is a one-line UsageError
        return
    path = storage.filesystem_for(root)[1]
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UsageError(f"run.output_dir: {root} cannot be created, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"run.output_dir: {ancestor} is not writable by this user")


def check_location(field: str, location: str, hub_id_allowed: bool) -> None:
    if storage.exists(location):
        return
    if hub_id_allowed and "://" not in location and _HUB_ID.fullmatch(location):
        return  # fetched from the hub by the library that loads it
    allowed = " (or a Hugging Face hub id)" if hub_id_allowed else ""
    raise UsageError(f"{field}: {location} does not exist; expected a local path or a URI{allowed}")


def check_credentials(endpoint: Endpoint | HostedTrainSection, role: str) -> None:
    """A key variable that is named but not set would fail every worker, or every row with a
    401, or a hosted fine-tuning after hours of generation: say so before any work."""
    key_env = endpoint.api_key_env if isinstance(endpoint, RemoteEndpoint | HostedTrainSection) else None
    if key_env and not os.environ.get(key_env):
        raise UsageError(
            f"{role}.api_key_env names {key_env}, which is not set in this environment "
            "(set it, e.g. from a Kubernetes Secret, or remove api_key_env to use Entra ID on Azure)"
        )


def _check_inputs_done(context: StageContext, name: str, stages: Sequence[str]) -> None:
    for upstream in BY_NAME[name].inputs:
        if upstream in stages:
            continue  # this run makes it first
        directory = context.dir(upstream)
        if not storage.exists(storage.join(directory, storage.SUCCESS_FILE)):
            raise UsageError(
                f"{name} reads the output of stage {upstream} ({directory}), which has not run "
                f"there: run `kdist {upstream}` with this config first"
            )


def _hub_id_allowed(context: StageContext, field: str) -> bool:
    # Models load from the hub by id; a dataset does only as the hf source kind's path (its
    # data_files are files).
    is_hf_path = field == "data.source.path" and getattr(context.config.data.source, "kind", None) == "hf"
    return field.endswith(".model") or is_hf_path
