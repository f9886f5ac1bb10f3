"""Joining Ray: one place that starts or joins the cluster and checks what it can place.

Search scoring actors (`hwnas.jobs`) and data-parallel training workers (`hwnas.supernet`) both run on it.
"""

from __future__ import annotations

import os
import socket

from hwnas.exceptions import ClusterError
from hwnas.settings import Settings

__all__ = ["WORKER_RESOURCE", "check_placement", "init_ray", "worker_resources"]

WORKER_RESOURCE = "hwnas_worker"  # advertised by worker nodes of a cluster (docker-compose.yml, scripts/cluster.sh)


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or the settings' Ray address), else start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or Settings().ray_address
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # 'local' starts a new instance: a plain ray.init() would join whatever cluster Ray's current-cluster
            # file names (a killed head leaves it behind), and refuses resource arguments when it does.
            # A small object store: actors exchange subnet configs and scores, never tensors.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"Ray cluster at '{address}'" if address else "a local Ray"
        raise ClusterError(f"cannot start or join {where}: {str(e).splitlines()[0]}") from e


def worker_resources() -> dict[str, float]:
    """Keep hwnas actors on worker nodes when the cluster marks them: never on the API's node, whose restart
    would kill them. A local Ray (no marked nodes) places them anywhere."""
    import ray

    return {WORKER_RESOURCE: 0.001} if ray.cluster_resources().get(WORKER_RESOURCE) else {}


def check_placement(workers: int, *, cpus_per_worker: float, gpus_per_worker: float = 0.0) -> None:
    """Refuse, in one line, a worker group the cluster can never place (Ray would wait for it forever).

    Each worker must fit on one node, and the cluster must hold all of them at once.
    """
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = sum(min(int(r.get("CPU", 0) // cpus_per_worker) if cpus_per_worker else workers,
                   int(r.get("GPU", 0) // gpus_per_worker) if gpus_per_worker else workers) for r in nodes)
    if fits < workers:
        total_cpu = sum(r.get("CPU", 0) for r in nodes)
        total_gpu = sum(r.get("GPU", 0) for r in nodes)
        ask = f"{cpus_per_worker:g} CPU" + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "")
        raise ClusterError(f"the Ray cluster cannot place {workers} workers of {ask} each: it has {len(nodes)} "
                           f"node(s), {total_cpu:g} CPUs and {total_gpu:g} GPUs in all (room for {fits})")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes; a HOST:PORT that refuses connections is told in seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # 'auto', ray:// and other forms: Ray's own resolution
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at '{address}': {e.strerror or e}") from None
