"""Device profiles: where and how a subnet is measured, with a fingerprint of the hardware and software."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from hwnas.exceptions import MeasurementError
from hwnas.kernels import host_target
from hwnas.latency._protocol import MeasureConfig

DeviceKind = Literal["cpu", "gpu", "iot"]
DeviceRuntime = Literal["tvm", "torch"]
DeviceLocation = Literal["local", "rpc"]
KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)
RUNTIMES: tuple[DeviceRuntime, ...] = get_args(DeviceRuntime)
LOCATIONS: tuple[DeviceLocation, ...] = get_args(DeviceLocation)
NAME_MAX_CHARS = 128  # the table column's width: PostgreSQL enforces it, SQLite would not


def parse_tracker(tracker: str | None) -> tuple[str, int]:
    """(host, port) of a TVM RPC tracker's HOST:PORT: the one parser of tracker addresses."""
    host, _, port = (tracker or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MeasurementError(f"bad tracker address {tracker!r} (expected HOST:PORT)")
    return host, int(port)


def _json_object(name: str, field: str, value: object) -> None:
    if not isinstance(value, dict):
        raise MeasurementError(f"device '{name}': {field} must be a JSON object (dict), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MeasurementError(f"device '{name}': {field} is not storable as JSON: {e}") from e


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """A measurement target: the one shape of a device between the `devices` table and the API's schemas.

    `target` is a TVM target JSON dict (TVM 0.27 rejects target strings). Every field is checked here, so a
    profile that exists can be stored and measured on.
    """

    name: str
    kind: str
    target: dict[str, Any]
    runtime: str = "tvm"
    location: str = "local"
    tracker: str | None = None  # "host:port" of a TVM RPC tracker, for location == "rpc"
    rpc_key: str | None = None
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)
    protocol: MeasureConfig = MeasureConfig()

    def __post_init__(self) -> None:
        name = self.name
        if not 0 < len(name) <= NAME_MAX_CHARS or not all(c.isalnum() or c in "-_." for c in name):
            raise MeasurementError(f"device name {name!r} must be 1 to {NAME_MAX_CHARS} characters: letters, digits, "
                                   f"'-', '_' or '.'")
        for field, allowed in (("kind", KINDS), ("runtime", RUNTIMES), ("location", LOCATIONS)):
            if getattr(self, field) not in allowed:
                raise MeasurementError(f"device '{name}': {field} '{getattr(self, field)}' is not one of "
                                       f"{', '.join(allowed)}")
        _json_object(name, "target", self.target)
        if not isinstance(self.target.get("kind"), str):
            raise MeasurementError(f"device '{name}': target needs a 'kind' (a TVM target dict such as "
                                   f'{{"kind": "llvm", "mcpu": "znver4"}}), got {json.dumps(self.target)}')
        _json_object(name, "fingerprint", self.fingerprint)
        if self.location == "rpc":
            if not self.tracker or not self.rpc_key:
                raise MeasurementError(f"device '{name}': an rpc device needs --tracker HOST:PORT and --key, "
                                       f"got tracker={self.tracker!r} key={self.rpc_key!r}")
            try:
                parse_tracker(self.tracker)
            except MeasurementError as e:
                raise MeasurementError(f"device '{name}': {e}") from None
        elif self.tracker is not None or self.rpc_key is not None:  # ignoring them would hide a forgotten 'rpc'
            raise MeasurementError(f"device '{name}': tracker and rpc_key apply to location 'rpc' only, "
                                   f"not {self.location!r}")

    @property
    def torch_device(self) -> str:
        return "cuda" if self.kind == "gpu" else "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["protocol"] = self.protocol.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProfile:
        return cls(**{**data, "protocol": MeasureConfig.from_dict(data.get("protocol") or {})})


def measure_config(**fields: Any) -> MeasureConfig:
    """A protocol from user input (CLI, API): an invalid combination is one MeasurementError line."""
    try:
        return MeasureConfig(**fields)
    except ValueError as e:
        raise MeasurementError(f"measurement protocol: {e}") from None


def protocol_for(device: DeviceProfile, space: Any) -> MeasureConfig:
    """The device's protocol with the space's sentence length (HAT: 30 tokens for WMT, 23 for IWSLT),
    decoding as many steps as the source has tokens."""
    n = space.source_length_tokens
    return dataclasses.replace(device.protocol, source_length_tokens=n, decode_steps=n)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def local_fingerprint() -> dict[str, Any]:
    """What a latency depends on besides the subnet: hardware, and the software that compiled it."""
    import tvm

    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
        "machine": platform.machine(), "llvm_cpu": str(tvm.target.codegen.llvm_get_system_cpu()),
        "os": platform.platform(), "python": platform.python_version(),
        "tvm": _version("apache-tvm"), "tvm_ffi": _version("apache-tvm-ffi"), "torch": _version("torch"),
        "numpy": _version("numpy"), "onnxruntime": _version("onnxruntime"),
    }


LOCAL_PASSES = 5  # bench/noise.py --mode passes, tuned libraries: between-session spread p90 26.7% -> 6.6%


def local_cpu_profile(*, threads: int | None = None) -> DeviceProfile:
    """The built-in `local-cpu` device: this machine's CPU through TVM, threads pinned to the cores, the
    timed runs in `LOCAL_PASSES` passes interleaved across each batch (a shared machine's slow spells
    land on every subnet of a batch alike, and the quietest pass counts), and a reference subnet
    timed with every batch (this VM drifts by 5-20% between sessions, alike for every subnet)."""
    cores = os.cpu_count() or 1
    return DeviceProfile(name="local-cpu", kind="cpu", target=host_target(), runtime="tvm",
                         fingerprint=local_fingerprint(),
                         protocol=MeasureConfig(threads=threads or cores, passes=LOCAL_PASSES, reference=True))


@functools.cache  # the fingerprint probes TVM and the OS: once per process is enough
def builtin_devices() -> dict[str, DeviceProfile]:
    """Profiles that need no registration: this machine's CPU through TVM, and through PyTorch eager."""
    cpu = local_cpu_profile()
    return {cpu.name: cpu,
            "local-cpu-torch": dataclasses.replace(cpu, name="local-cpu-torch", runtime="torch")}


def builtin_device(name: str) -> DeviceProfile:
    """A built-in device by name (registered devices live in the database; see hwnas.db)."""
    devices = builtin_devices()
    if name not in devices:
        raise MeasurementError(f"unknown device '{name}' (built-in: {', '.join(devices)})")
    return devices[name]
