"""Ray init and shutdown, the environment every Ray worker gets, and run paths.

One entry point, `ray_session`: on a cluster (RAY_ADDRESS set, as under `ray job submit` and
KubeRay, or runtime.ray_address) it attaches and leaves the cluster alone afterwards; on a
laptop or CI it starts a private single-node Ray bound to 127.0.0.1 and shuts it down after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

from kdist.config import RunConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Env vars every Ray worker of a kdist job gets. DeepSpeed picks its accelerator by probing;
# naming it on CPU-only clusters avoids a CUDA probe, and one thread per worker keeps 2 Ray
# workers on a 2-core machine from oversubscribing the cores.
CPU_WORKER_ENV = {
    "DS_ACCELERATOR": "cpu",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# Ray resources of a light Ray Data step beside the models (hashing, joins, prompt rows,
# writes): on a 2-core machine, steps that ask for a whole CPU each starve the model workers
# and one another, and the pipeline never finishes.
SIDE_STAGE_CPUS = 0.1
# Tasks of one side step at once. Each worker process reads the step's stored side (a join's
# table, the done set of request hashes) once and keeps it, so more at once would each read
# it again; two is what the actor pools they replaced had.
SIDE_STAGE_TASKS = 2


def worker_env(use_gpu: bool) -> dict[str, str]:
    # Ray Train turns a worker's print() into a log record and also echoes it when stdout is
    # wrapped, as Ray's workers' stdout is: every progress line reached the driver twice.
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if not use_gpu:
        env.update(CPU_WORKER_ENV)
    return env


def configure_ray_data() -> None:
    """Ray Data settings of every kdist driver.

    - An exception raised in a worker arrives as itself (a row's UsageError stays a one-line
      UsageError), not as Ray Data's generic UserCodeException with only the traceback's text.
    - Parquet is read through the V1 datasource: V2 adds a ListFiles task that always asks for
      a whole CPU, which never gets one while model actors hold every CPU of a small node
      (seen: 2 hf teacher actors on 2 cores, and the generate stage waited forever); V1 read
      tasks take the fraction kdist.storage asks for.
    - Side steps cap their tasks at SIDE_STAGE_TASKS at once; Ray Data warns on every run of
      fewer blocks that the cap is not reached, which is no news to anyone.
    """
    import warnings

    import ray.data

    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for", category=UserWarning)

    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    context.use_datasource_v2 = False


@contextlib.contextmanager
def ray_session(config: RunConfig, use_gpu: bool = False) -> Iterator[None]:
    import ray

    configure_ray_data()
    if ray.is_initialized():
        yield
        return
    address = config.runtime.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("attaching to the Ray cluster at %s", address)
        # Under `ray job submit` the job's runtime env is merged with this one, and Ray refuses
        # a merge where both set the same variable: leave out what the job already set.
        env = {k: v for k, v in worker_env(use_gpu).items() if k not in os.environ}
        ray.init(
            address=address,
            log_to_driver=config.runtime.log_to_driver,
            runtime_env={"env_vars": env} if env else None,
        )
        try:
            yield
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        return
    with _local_ray(config, use_gpu):
        yield


@contextlib.contextmanager
def _local_ray(config: RunConfig, use_gpu: bool) -> Iterator[None]:
    import ray
    from ray._private import ray_constants

    # Ray resolves 127.0.0.1 to the machine's network address unless it believes clustering is
    # off; a private local Ray must stay on loopback. The env var reaches the raylet and the
    # workers it spawns, the attribute this already-imported process.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # A per-session temp dir: a stale ray_current_cluster file in a shared one makes a later
    # ray.init() hang trying to reach a dead cluster.
    temp_dir = tempfile.mkdtemp(prefix="kdist-ray-")
    dashboard_port = free_loopback_port()
    log.info("starting a local Ray on %s (temp dir %s)", LOOPBACK, temp_dir)
    try:
        ray.init(
            _node_ip_address=LOOPBACK,
            _temp_dir=temp_dir,
            num_cpus=config.runtime.num_cpus,
            # On (127.0.0.1 only): Ray Train's placement-group cleaner asks the state API,
            # served by the dashboard, every second whether the controller lives; without it,
            # every ask fails with a warning line (hundreds per training run) and a crashed
            # controller's placement group would never be freed. (ray.init took no longer with
            # it, measured.)
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=dashboard_port,
            log_to_driver=config.runtime.log_to_driver,
            runtime_env={"env_vars": {**worker_env(use_gpu), **own_cluster_env(dashboard_port)}},
        )
        node_ip = ray.nodes()[0]["NodeManagerAddress"]
        if node_ip != LOOPBACK:
            raise RuntimeError(f"local Ray bound to {node_ip}, not {LOOPBACK}")
        yield
    finally:
        ray.shutdown()
        _drop_temp_dir(temp_dir, keep=config.runtime.keep_ray_logs)


def own_cluster_env(dashboard_port: int) -> dict[str, str]:
    """Env that points the state API inside this Ray's workers at this Ray. Without an
    address, Ray Train's placement-group cleaner looks for a cluster on the machine and fails
    with "Found multiple active Ray instances" when another run's local Ray is up too."""
    return {"RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{dashboard_port}"}


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _drop_temp_dir(temp_dir: str, keep: bool) -> None:
    # Removed after a failure too: every failed run used to leave its /tmp/kdist-ray-* behind.
    if keep:
        log.warning("the local Ray's logs are kept in %s (--keep-ray-logs)", temp_dir)
        return
    shutil.rmtree(temp_dir, ignore_errors=True)


def output_dir(config: RunConfig) -> str:
    """The run's output location: an absolute local path, or a URI (s3://, gs://, ...)."""
    from kdist.storage import absolute

    return absolute(config.run.output_dir)


def cluster_has_gpus() -> bool:
    """Whether the Ray cluster this process is attached to has any GPU."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
