"""Ray Train's torch process group, with the rendezvous bound to loopback in a local run.

Ray's default backend hands torch `env://` with MASTER_ADDR = the rank-0 node's address, and
rank 0's TCPStore then listens on every interface (`*:PORT`, torch binds the wildcard whatever
MASTER_ADDR says). In a local run everything else of kdist is on 127.0.0.1, so here rank 0
binds the store's listening socket itself, on the node's (loopback) address, and hands it to
TCPStore (`master_listen_fd`); every rank then joins as a client of that store
(TORCHELASTIC_USE_AGENT_STORE, torch's switch for a store hosted outside the process group),
and gloo's own sockets go on the loopback interface (GLOO_SOCKET_IFNAME).

A cluster run keeps Ray's default (kdist.train.trainer passes this config only when the Ray
it is attached to is on loopback): its workers on other nodes must reach rank 0.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from ray.train.torch import TorchConfig
from ray.train.torch.config import V1WorkerGroup, _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

# The store and its socket live as long as the rank-0 worker process: the process group
# talks to the store until it is destroyed.
_HOSTED: list[Any] = []


@dataclass
class LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self) -> type:
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    """Ray 2.60's _TorchBackend.on_start for init_method `env`, with the store hosted first."""

    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        import ray

        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        world_size = len(worker_group)
        host, port = worker_group.execute_single(0, host_store, world_size=world_size, timeout_s=backend_config.timeout_s)
        worker_group.execute(join_store, host=host, port=port)
        if not isinstance(worker_group, V1WorkerGroup):  # V1 sets them in on_training_start
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([
            worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                                              world_size=world_size, init_method="env://", timeout_s=backend_config.timeout_s)
            for rank in range(world_size)
        ])  # fmt: skip


def host_store(world_size: int, timeout_s: float) -> tuple[str, int]:
    """On rank 0: a TCPStore server on this node's address only (a loopback one)."""
    from datetime import timedelta

    import ray
    import torch.distributed as dist

    host = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(host).is_loopback:
        raise RuntimeError(f"the loopback rendezvous is for a local Ray; this node's address is {host}")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(max(world_size, 128))
    port = listener.getsockname()[1]
    store = dist.TCPStore(host, port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=listener.fileno())  # fmt: skip
    _HOSTED.extend([listener, store])
    return host, port


def join_store(host: str, port: int) -> None:
    """On every rank: env:// joins rank 0's store as a client, and gloo listens on loopback."""
    os.environ.update({
        "MASTER_ADDR": host, "MASTER_PORT": str(port),
        # torch's env:// then makes no store of its own on rank 0 (it would bind every
        # interface): every rank is a client of MASTER_ADDR:MASTER_PORT.
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    })  # fmt: skip
    interface = interface_of(host)
    if interface:  # gloo's and NCCL's own sockets: on loopback too
        os.environ.update({"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface})


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` (lo on Linux, lo0 on macOS), or None."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address.split("%")[0] == address for entry in addresses):
            return name
    return None


def on_loopback() -> bool:
    """Whether every live node of the Ray this process is attached to is on a loopback
    address: kdist's own local Ray (kdist.runtime), where nothing may listen beyond it."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return bool(nodes) and all(ipaddress.ip_address(node["NodeManagerAddress"]).is_loopback for node in nodes)
