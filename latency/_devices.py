"""Device profiles: where and how a subnet is measured, with a fingerprint of the hardware and software."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from hwnas.exceptions import MeasurementError
from hwnas.kernels import cuda_target, host_target
from hwnas.latency._protocol import MeasureConfig

DeviceKind = Literal["cpu", "gpu", "iot"]
DeviceRuntime = Literal["tvm", "torch", "onnxruntime"]
DeviceLocation = Literal["local", "rpc", "ray"]  # ray: a Ray node dedicated to it (_ray.py)
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
    owner: str | None = None  # a user's private device, named OWNER.NAME; None: shared (the operators')

    def __post_init__(self) -> None:
        name = self.name
        if not 0 < len(name) <= NAME_MAX_CHARS or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
            raise MeasurementError(f"device name {name!r} must be 1 to {NAME_MAX_CHARS} characters: letters, digits, "
                                   f"'-', '_' or '.'")
        if self.owner is not None and not (name.startswith(f"{self.owner}.") and len(name) > len(self.owner) + 1):
            # so that a user never takes a name an operator means to use for a shared device
            raise MeasurementError(f"device '{name}': a user's private device is named after them, "
                                   f"'{self.owner}.NAME' (e.g. '{self.owner}.{name.split('.')[-1] or 'board'}')")
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
        if self.runtime == "onnxruntime" and (self.kind != "cpu" or self.location == "rpc"):
            # its CPU execution provider: the one hwnas measures (and ONNX bundles load with)
            raise MeasurementError(f"device '{name}': the onnxruntime runtime measures a local CPU only (kind "
                                   f"'cpu', this machine or a Ray node), not kind {self.kind!r} at {self.location!r}")
        # ignoring them would hide a forgotten 'rpc'
        if self.location != "rpc" and (self.tracker is not None or self.rpc_key is not None):
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


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip("\x00\n ") or None
    except OSError:
        return None


GOVERNOR_FILE = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"  # absent on most VMs


@functools.cache  # the fingerprint probes TVM and the OS: once per process is enough
def local_fingerprint() -> dict[str, Any]:
    """What a latency depends on besides the subnet: hardware, and the software that compiled it."""
    import tvm

    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
        "machine": platform.machine(), "llvm_cpu": str(tvm.target.codegen.llvm_get_system_cpu()),
        "governor": _read(GOVERNOR_FILE),
        "os": platform.platform(), "python": platform.python_version(),
        "tvm": _version("apache-tvm"), "tvm_ffi": _version("apache-tvm-ffi"), "torch": _version("torch"),
        "numpy": _version("numpy"), "onnxruntime": _version("onnxruntime"),
    }


@functools.cache
def _gpu_model() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# The fingerprint fields a latency depends on, per runtime: a device probed with other values here is a new
# revision of it. Left out on purpose: memory size, OS build, Python and numpy (a VM's memory and kernel
# change between boots without changing a kernel's speed).
REVISION_FIELDS: dict[str, tuple[str, ...]] = {
    "tvm": ("cpu_model", "cpu_id", "cores", "machine", "llvm_cpu", "governor", "gpu_model", "tvm", "tvm_ffi"),
    "torch": ("cpu_model", "cpu_id", "cores", "machine", "governor", "gpu_model", "torch"),
    "onnxruntime": ("cpu_model", "cpu_id", "cores", "machine", "governor", "onnxruntime"),
}


def revision_fields(fingerprint: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The part of `fingerprint` that identifies a device revision under `runtime`."""
    return {f: fingerprint[f] for f in REVISION_FIELDS[runtime] if fingerprint.get(f) is not None}


def fingerprint_key(fingerprint: dict[str, Any], runtime: str) -> str:
    """Identity of a device revision: a hash of its `revision_fields`."""
    fields = json.dumps(revision_fields(fingerprint, runtime), sort_keys=True, default=str)
    return hashlib.sha1(fields.encode()).hexdigest()[:16]


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any], runtime: str) -> str:
    """What changed between two fingerprints in the revision fields, e.g. "cpu_model 'A' -> 'B'"."""
    a, b = revision_fields(old, runtime), revision_fields(new, runtime)
    return ", ".join(f"{f} {a.get(f)!r} -> {b.get(f)!r}" for f in REVISION_FIELDS[runtime] if a.get(f) != b.get(f))


def rpc_fingerprint(tracker: str, key: str, *, session_timeout_s: float = 60.0) -> dict[str, Any]:
    """A remote board's fingerprint, probed through a TVM RPC session.

    A server started by `hwnas devices serve` answers the whole fingerprint (`hwnas.device_fingerprint`,
    what `local_fingerprint` reads there). TVM's stock server answers what sysfs says (its download reads
    files by size, so /proc's zero-sized files are out of reach): the CPU's identification
    (`cpu_id`: sysfs modalias, or the ARM MIDR), the online cores and the frequency governor.
    """
    from tvm import rpc

    host, port = parse_tracker(tracker)
    try:
        remote = rpc.connect_tracker(host, port).request(key, session_timeout=session_timeout_s)
    except (RuntimeError, OSError) as e:
        raise MeasurementError(f"cannot open an RPC session to '{key}' at {tracker}: {str(e).splitlines()[0]}") \
            from None
    try:
        return dict(json.loads(remote.get_function("hwnas.device_fingerprint")()), probe="hwnas")
    except (RuntimeError, AttributeError, ValueError):
        pass  # a stock TVM server: sysfs below

    def read(path: str) -> str | None:
        try:
            return bytes(remote.download(path)).decode(errors="replace").strip("\x00\n ") or None
        except (RuntimeError, OSError):
            return None

    online = read("/sys/devices/system/cpu/online")
    return {"cpu_id": read("/sys/devices/system/cpu/cpu0/regs/identification/midr_el1")
            or (read("/sys/devices/system/cpu/modalias") or "").split(":feature:")[0] or None,
            "cores": _count_cpus(online) if online else None, "governor": read(GOVERNOR_FILE),
            "max_khz": read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"), "probe": "sysfs"}


def _count_cpus(ranges: str) -> int:
    """Cores in a sysfs CPU list such as '0-3,6'."""
    n = 0
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def probe_fingerprint(device: DeviceProfile) -> dict[str, Any]:
    """The device's fingerprint as it is now: this machine's for a local device (with the GPU's model for
    a GPU device), the board's through RPC for a remote one, its node's for a device on a Ray node."""
    if device.location == "rpc":
        return rpc_fingerprint(str(device.tracker), str(device.rpc_key))
    if device.location == "ray":
        from hwnas.latency._ray import on_node

        return on_node(device, probe_fingerprint)
    fp = dict(local_fingerprint())
    if device.kind == "gpu":
        fp["gpu_model"] = _gpu_model()
    return fp


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


def local_gpu_profile() -> DeviceProfile | None:
    """The built-in `local-gpu` device where this machine has a CUDA device: TVM's CUDA kernels (tuned with
    `hwnas kernels tune --device local-gpu`), timed by TVM's on-device timer in passes like the CPU's (a GPU's
    clocks vary too), no CPU threads pinned. None without a GPU."""
    target = cuda_target()
    if target is None:
        return None
    fp = dict(local_fingerprint(), gpu_model=_gpu_model())
    return DeviceProfile(name="local-gpu", kind="gpu", target=target, runtime="tvm", fingerprint=fp,
                         protocol=MeasureConfig(passes=LOCAL_PASSES, reference=True))


@functools.cache  # the fingerprint is probed once per process
def builtin_devices() -> dict[str, DeviceProfile]:
    """Profiles that need no registration: this machine's CPU through TVM, through PyTorch eager and through
    ONNX Runtime (what ONNX bundles deploy with), each under the same protocol; where a CUDA device is present,
    its GPU through TVM (`local-gpu`) and through PyTorch eager (`local-gpu-torch`)."""
    cpu = local_cpu_profile()
    devices = {cpu.name: cpu,
               "local-cpu-torch": dataclasses.replace(cpu, name="local-cpu-torch", runtime="torch"),
               "local-cpu-ort": dataclasses.replace(cpu, name="local-cpu-ort", runtime="onnxruntime")}
    gpu = local_gpu_profile()
    if gpu is not None:
        devices[gpu.name] = gpu
        devices["local-gpu-torch"] = dataclasses.replace(gpu, name="local-gpu-torch", runtime="torch")
    return devices


def builtin_device(name: str) -> DeviceProfile:
    """A built-in device by name (registered devices live in the database; see hwnas.db)."""
    devices = builtin_devices()
    if name not in devices:
        raise MeasurementError(f"unknown device '{name}' (built-in: {', '.join(devices)})")
    return devices[name]
