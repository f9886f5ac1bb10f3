"""Devices that are nodes of a Ray cluster, dedicated to measuring (location `ray`).

A cluster's workers score candidates on every core they have, so a latency timed there is timed under load,
on whichever worker the job landed. A measuring node instead advertises one unit of the device's own resource,
`hwnas_device:<name>` (`node_resource`), and no CPUs to Ray:

    ray start --address HEAD:PORT --num-cpus 0 --resources '{"hwnas_device:rack1-cpu": 1}'

A measurement of that device is one Ray task that asks for the unit: it runs on that node only, one at a time,
and nothing else is scheduled there (scoring actors ask for CPUs, which the node does not offer). The task
measures as a local device does there (build, time, fingerprint of that node: its own revisions), and returns
the records to the caller, which stores them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from hwnas.exceptions import MeasurementError
from hwnas.settings import Settings

RESOURCE_PREFIX = "hwnas_device:"
T = TypeVar("T")


def node_resource(device_name: str) -> str:
    """The Ray resource a measuring node of `device_name` advertises (one unit: one measurement at a time)."""
    return f"{RESOURCE_PREFIX}{device_name}"


def ray_node_command(device_name: str, head: str = "HEAD:PORT") -> str:
    """The `ray start` line that dedicates a node to measuring `device_name`."""
    return (f"ray start --address {head} --num-cpus 0 --resources "
            f"'{{\"{node_resource(device_name)}\": 1}}'")


def _connect() -> None:
    """Use the Ray this process runs in or joined; else join the settings' cluster. A local Ray would have no
    measuring node, so none is started here."""
    import ray

    if ray.is_initialized():
        return
    address = Settings().ray_address
    if not address:
        raise MeasurementError("a device on a Ray node is measured through the cluster: set HWNAS_RAY_ADDRESS "
                               "(or run inside the cluster)")
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MeasurementError(f"cannot join the Ray cluster at '{address}': {str(e).splitlines()[0]}") from e


def on_node(device: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(local_device, *args, **kwargs)` on the node dedicated to `device`, holding the node's one unit, and
    return its result; `local_device` is `device` as that node sees it (location `local`).

    Raises:
        MeasurementError: no node of the cluster offers the device's resource (Ray would queue the task forever),
            or the task failed.
    """
    import ray

    _connect()
    resource = node_resource(device.name)
    if not ray.cluster_resources().get(resource):
        raise MeasurementError(f"no node of the Ray cluster is dedicated to device '{device.name}' (resource "
                               f"'{resource}'); dedicate one with: {ray_node_command(device.name)}")
    local = dataclasses.replace(device, location="local")
    task: Any = ray.remote(_call).options(num_cpus=0, resources={resource: 1}, max_retries=0)
    try:
        result: T = ray.get(task.remote(fn, local, args, kwargs))
    except ray.exceptions.RayError as e:
        raise MeasurementError(f"measuring on the node of device '{device.name}' failed: "
                               f"{str(e).strip().splitlines()[-1]}") from e
    return result


def _call(fn: Callable[..., T], device: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    return fn(device, *args, **kwargs)
