"""Devices on a Ray node dedicated to measuring: measured there, one measurement at a time, never without it.

A real local Ray whose one node advertises the measuring resource of device `node-a` (as
`ray start --num-cpus 0 --resources '{"hwnas_device:node-a": 1}'` would on a cluster).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hwnas.exceptions import MeasurementError
from hwnas.kernels import host_target
from hwnas.latency import (
    DeviceProfile,
    InMemoryStore,
    MeasureConfig,
    collect,
    local_fingerprint,
    measure,
    node_resource,
    probe_fingerprint,
    ray_node_command,
)
from hwnas.latency._ray import on_node
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

NODE = DeviceProfile(name="node-a", kind="cpu", target=host_target(), runtime="torch", location="ray",
                     protocol=MeasureConfig(warmup_runs=1, timed_runs=5, threads=1))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, resources={node_resource(NODE.name): 1}, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers run this module's functions
    yield
    ray.shutdown()


def _hold(device: DeviceProfile, seconds: float) -> tuple[int, float, float, str]:
    """Stand-in for a measurement (test code): where it ran, for how long, and as what location."""
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic(), device.location


def test_measured_on_its_node_with_that_nodes_fingerprint(ray_cluster: None, tiny_space: SearchSpace,
                                                          tiny_mc: ModelConfig) -> None:
    store = InMemoryStore()
    report = collect(device=NODE, space=tiny_space, model_config=tiny_mc, n=2, store=store, progress=False)
    assert (report.measured, report.failed) == (2, 0)
    records = store.records(device="node-a", space=tiny_space.name)
    assert [r.revision for r in records] == [1, 1]
    # the fingerprint is the node's, probed there (here the node is this machine)
    assert records[0].fingerprint["cpu_model"] == local_fingerprint()["cpu_model"]
    assert probe_fingerprint(NODE)["cores"] == local_fingerprint()["cores"]
    (again,) = measure(device=NODE, space=tiny_space, model_config=tiny_mc, subnets=[records[0].subnet])
    assert again.result.ok and again.device == "node-a"


def test_one_measurement_at_a_time_on_the_node(ray_cluster: None) -> None:
    """The node's one unit of its resource: two measurements asked together run one after the other."""
    runs: list[tuple[int, float, float, str]] = []

    def ask() -> None:
        runs.append(on_node(NODE, _hold, 1.0))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (pid_a, start_a, end_a, where), (_, start_b, end_b, _) = sorted(runs, key=lambda r: r[1])
    assert start_b >= end_a, "two measurements overlapped on the node"
    assert pid_a != os.getpid() and where == "local"  # in a Ray worker, measuring as a local device there


def test_a_device_without_its_node_is_one_clear_error(ray_cluster: None, tiny_space: SearchSpace,
                                                      tiny_mc: ModelConfig) -> None:
    gone = dataclasses.replace(NODE, name="node-b")
    with pytest.raises(MeasurementError, match=r"no node of the Ray cluster is dedicated to device 'node-b' "
                                               r"\(resource 'hwnas_device:node-b'\); dedicate one with: ray start "):
        measure(device=gone, space=tiny_space, model_config=tiny_mc, subnets=[tiny_space.smallest()])
    assert ray_node_command("node-b", "10.0.0.1:6380") == \
        "ray start --address 10.0.0.1:6380 --num-cpus 0 --resources '{\"hwnas_device:node-b\": 1}'"


def test_ray_node_devices_take_no_tracker() -> None:
    with pytest.raises(MeasurementError, match="tracker and rpc_key apply to location 'rpc' only"):
        dataclasses.replace(NODE, tracker="h:1", rpc_key="k")
    args: dict[str, Any] = {"name": "x", "kind": "gpu", "target": {"kind": "cuda"}, "runtime": "onnxruntime"}
    with pytest.raises(MeasurementError, match="the onnxruntime runtime measures a local CPU only"):
        DeviceProfile(**args, location="ray")
