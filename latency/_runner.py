"""Runner role: artifacts -> raw timings. Interchangeable; failures come back as `RunResult.error`.

- `TVMLocalRunner`: a TVM library on this machine's CPU (or a local CUDA GPU);
- `TorchRunner`: the same two graphs in PyTorch eager (CPU or CUDA), the baseline;
- `OrtRunner`: the same two graphs exported to ONNX (as ONNX bundles ship them) in ONNX Runtime on the CPU;
- `RPCRunner`: a TVM library uploaded to a device registered at a TVM RPC tracker.

Every measurement happens in a worker process under a timeout, so a crash or a hang costs
one record, never the batch.

With `MeasureConfig.passes > 1` the local runners interleave the batch: one worker process
keeps every subnet of the `run` call loaded and times pass 1 of each, then pass 2 of each,
... (one worker call, and one timeout, per subnet and pass), so a slow spell of a shared CPU
lands on all subnets of the batch rather than on one. The RPC runner times the passes of a
subnet back to back (not interleaved), on one board, the boards of a farm in parallel.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from hwnas.exceptions import MeasurementError
from hwnas.kernels import (
    DECODER_STEP,
    ENCODER,
    BuildInput,
    DecoderStepGraph,
    EncoderGraph,
    example_inputs,
    export_onnx,
    input_specs,
    onnx_feed,
    onnx_sessions,
    random_inputs,
    subnet_model,
)
from hwnas.latency._protocol import MeasureConfig, RunResult
from hwnas.latency._rpc import claim_board, tracker_boards
from hwnas.search_spaces import SubnetConfig
from hwnas.supernet import ModelConfig


@dataclasses.dataclass(frozen=True)
class RunInput:
    """One subnet to time: its build description and, for compiled runtimes, the built library dir."""

    build: BuildInput
    artifact: str | None = None


class Runner(abc.ABC):
    """Times subnets under a `MeasureConfig`.

    `run` returns one `RunResult` per input, in order, and never raises for a single
    input's failure: it is recorded in that result's `error`.
    """

    name: str

    @abc.abstractmethod
    def run(self, inputs: Sequence[RunInput], protocol: MeasureConfig) -> list[RunResult]: ...


def time_calls(fn: Callable[[], Any], *, warmup: int, runs: int, number: int,
               sync: Callable[[], None] = lambda: None, cooldown_ms: int = 0) -> list[float]:
    """Milliseconds per call for each of `runs` timed runs of `number` back-to-back calls.

    The one host-side timing loop of the project (TVM runs use its on-device time_evaluator).
    """
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3 / number)
        if cooldown_ms:
            time.sleep(cooldown_ms / 1e3)
    return out


def _failed(error: str) -> RunResult:
    return RunResult(error=error[:2000])


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


# Worker-process state of an interleaved run: slot ("<run id>:<input index>") -> the loaded subnet.
# It lives as long as the worker; a worker restarted after a timeout or crash reloads lazily.
_LOADED: dict[str, Any] = {}


class _PooledRunner(Runner):
    """Runs `_measure(input, protocol)` of a subclass in a worker process, with a timeout per input.

    A subclass with a `_pass_job` interleaves the inputs when `protocol.passes > 1`: that job
    times one pass of one input, keeping the input loaded in the worker between passes.
    """

    def __init__(self, *, timeout_s: float = 300.0):
        self.timeout_s = timeout_s

    def _job(self) -> Callable[..., tuple[list[float], list[float]]]:
        raise NotImplementedError

    def _pass_job(self) -> Callable[..., tuple[list[float], list[float]]] | None:
        """`job(slot, *self._args(item, protocol))` timing one pass of one input; None: no interleaving."""
        return None

    def _args(self, item: RunInput, protocol: MeasureConfig) -> tuple[Any, ...]:
        return (item, protocol)

    def _new_pool(self) -> Any:
        from tvm.support.popen_pool import PopenPoolExecutor

        return PopenPoolExecutor(max_workers=1, timeout=self.timeout_s, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)

    def run(self, inputs: Sequence[RunInput], protocol: MeasureConfig) -> list[RunResult]:
        if protocol.passes > 1 and self._pass_job() is not None:
            return self._run_interleaved(inputs, protocol)
        results: list[RunResult] = []
        pool = self._new_pool()
        for item in inputs:  # one at a time: concurrent timings would disturb each other
            try:
                enc, dec = pool.submit(self._job(), *self._args(item, protocol)).result()
                results.append(RunResult(encoder_ms=tuple(enc), decoder_step_ms=tuple(dec)))
            except TimeoutError:
                results.append(_failed(f"measurement timed out after {self.timeout_s:.0f} s"))
                pool = self._new_pool()
            except Exception as e:  # the worker raised or died: this input failed, the batch goes on
                results.append(_failed(_describe(e)))
        return results

    def _run_interleaved(self, inputs: Sequence[RunInput], protocol: MeasureConfig) -> list[RunResult]:
        """Pass 1 of every input, then pass 2 of every input, ...; an input that fails stops there, alone."""
        job, run_id, n = self._pass_job(), uuid.uuid4().hex, len(inputs)
        enc: list[list[float]] = [[] for _ in range(n)]
        dec: list[list[float]] = [[] for _ in range(n)]
        errors: list[str | None] = [None] * n
        pool = self._new_pool()  # one worker for the whole run: it keeps the inputs loaded
        try:
            for p in range(protocol.passes):
                for i, item in enumerate(inputs):
                    if errors[i] is not None:
                        continue
                    where = f"pass {p + 1}/{protocol.passes}"
                    try:
                        e, d = pool.submit(job, f"{run_id}:{i}", *self._args(item, protocol)).result()
                        enc[i] += e
                        dec[i] += d
                    except TimeoutError:  # the worker was killed; the next call starts (and reloads) anew
                        errors[i] = f"{where}: measurement timed out after {self.timeout_s:.0f} s"
                    except Exception as ex:  # the worker raised or died: this input failed, the batch goes on
                        errors[i] = f"{where}: {_describe(ex)}"
        finally:
            pool.shutdown(wait=True)
        return [_failed(err) if err is not None else RunResult(encoder_ms=tuple(e), decoder_step_ms=tuple(d))
                for e, d, err in zip(enc, dec, errors, strict=True)]


def tvm_device(target: dict[str, Any]) -> Any:
    import tvm

    if target.get("kind") == "cuda":
        _load_cuda_runtime(str(target.get("arch", "sm_90")))
        return tvm.cuda(0)
    return tvm.cpu(0)


def _load_cuda_runtime(arch: str) -> None:
    """Make a runtime-only TVM (TVM_USE_RUNTIME_LIB=1, a deployment box) able to run CUDA libraries.

    TVM 0.27 ships CUDA kernels as source, compiled when the library loads by the Python
    callback `tvm_callback_cuda_compile`; the stock one needs the TVM compiler. Here the CUDA
    runtime library is loaded and, without the compiler, a callback that runs nvcc.
    """
    import ctypes

    import tvm
    import tvm_ffi

    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not tvm.runtime.enabled("cuda") and lib.exists():
        ctypes.CDLL(str(lib), ctypes.RTLD_GLOBAL)
    if not getattr(tvm.base, "_RUNTIME_ONLY", False):
        return

    def nvcc_compile(code: str) -> bytearray:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp, "k.cu"), Path(tmp, "k.fatbin")
            src.write_text(code)
            subprocess.run(["nvcc", "--fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)], check=True,
                           capture_output=True)
            return bytearray(out.read_bytes())

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", nvcc_compile, override=True)


def _tvm_inputs(meta: dict[str, Any], to_device: Callable[[Any], Any]) -> dict[str, list[Any]]:
    """The timing inputs of both functions, on the device."""
    cfg, mc = SubnetConfig.from_dict(meta["subnet"]), ModelConfig(**meta["model_config"])
    specs = input_specs(cfg, mc, batch=meta["batch"], src_len=meta["source_length_tokens"],
                        cache_len=meta["cache_len"])
    return {name: [to_device(a) for a in random_inputs(specs[name], vocab_size=mc.vocab_size)]
            for name in (ENCODER, DECODER_STEP)}


def _time_tvm_pass(vm: Any, dev: Any, inputs: dict[str, list[Any]],
                   protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    """One pass: warm-up, then `runs_per_pass` runs of each function with TVM's on-device timer."""
    out = []
    for name in (ENCODER, DECODER_STEP):
        args = inputs[name]
        for _ in range(protocol.warmup_runs):
            vm[name](*args)
        timer = vm.time_evaluator(name, dev, number=protocol.number, repeat=protocol.runs_per_pass,
                                  cooldown_interval_ms=protocol.cooldown_ms)
        out.append([t * 1e3 for t in timer(*args).results])
    return out[0], out[1]


def _back_to_back(one_pass: Callable[[], tuple[list[float], list[float]]],
                  passes: int) -> tuple[list[float], list[float]]:
    """Every pass of one input, one after another (the non-interleaved runs of every runtime)."""
    enc: list[float] = []
    dec: list[float] = []
    for _ in range(passes):
        e, d = one_pass()
        enc += e
        dec += d
    return enc, dec


def _time_tvm(vm: Any, dev: Any, meta: dict[str, Any], protocol: MeasureConfig,
              to_device: Callable[[Any], Any]) -> tuple[list[float], list[float]]:
    """Time both functions of a loaded Relax VM with TVM's on-device timer, the passes back to back."""
    inputs = _tvm_inputs(meta, to_device)
    return _back_to_back(lambda: _time_tvm_pass(vm, dev, inputs, protocol), protocol.passes)


def _load_tvm_local(artifact: str, protocol: MeasureConfig) -> tuple[Any, Any, dict[str, Any]]:
    import tvm
    from tvm.runtime.vm import VirtualMachine  # runtime only: works where the compiler is absent

    meta = json.loads((Path(artifact) / "meta.json").read_text())
    if protocol.threads:  # pin before the thread pool is first used
        tvm.get_global_func("runtime.config_threadpool")(1, protocol.threads)
    dev = tvm_device(meta["target"])  # before loading: it may register the CUDA loader
    lib = tvm.runtime.load_module(str(Path(artifact) / meta["library"]))
    return VirtualMachine(lib, dev), dev, meta


def measure_tvm_local(artifact: str, protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    """Time a built library in this process (runners call it in their worker process)."""
    import tvm

    # TVM's config_threadpool pins the calling thread to one core: give an in-process caller its CPUs back
    # afterwards (a test run that timed one library here ran everything after it, subprocesses included, on
    # one of the 2 cores)
    cpus = os.sched_getaffinity(0)
    try:
        vm, dev, meta = _load_tvm_local(artifact, protocol)
        return _time_tvm(vm, dev, meta, protocol, lambda a: tvm.runtime.tensor(a, device=dev))
    finally:
        os.sched_setaffinity(0, cpus)


def _tvm_local_pass(slot: str, artifact: str, protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    """One pass of an interleaved run; the library stays loaded in this worker under `slot`."""
    import tvm

    if slot not in _LOADED:
        vm, dev, meta = _load_tvm_local(artifact, protocol)
        _LOADED[slot] = (vm, dev, _tvm_inputs(meta, lambda a: tvm.runtime.tensor(a, device=dev)))
    vm, dev, inputs = _LOADED[slot]
    return _time_tvm_pass(vm, dev, inputs, protocol)


class TVMLocalRunner(_PooledRunner):
    """A built TVM library on this machine (CPU, or CUDA where a driver exists)."""

    name = "tvm-local"

    def _job(self) -> Callable[..., tuple[list[float], list[float]]]:
        return measure_tvm_local

    def _pass_job(self) -> Callable[..., tuple[list[float], list[float]]]:
        return _tvm_local_pass

    def _args(self, item: RunInput, protocol: MeasureConfig) -> tuple[Any, ...]:
        if item.artifact is None:
            raise ValueError("TVMLocalRunner needs built artifacts (RunInput.artifact)")
        return (item.artifact, protocol)


def _load_torch(build: BuildInput, protocol: MeasureConfig, device: str) -> tuple[list[Any], Callable[[], None]]:
    """The encoder and decoder-step graphs with their inputs on `device`, and the device's sync."""
    import torch

    if protocol.threads:
        torch.set_num_threads(protocol.threads)
    model = subnet_model(build).to(device)
    enc_in, step_in = example_inputs(model.cpu(), batch=build.batch, src_len=build.source_length_tokens,
                                     cache_len=build.cache_len)
    model = model.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        graphs = [(graph, tuple(a.to(device) for a in args))
                  for graph, args in ((EncoderGraph(model), enc_in), (DecoderStepGraph(model), step_in))]
    return graphs, sync


def _time_torch_pass(graphs: list[Any], sync: Callable[[], None],
                     protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    """One pass: warm-up, then `runs_per_pass` timed runs of each graph."""
    import torch

    out = []
    with torch.inference_mode():
        for graph, args in graphs:
            # cast: mypy cannot infer a lambda whose defaults bind the loop variables
            call = cast(Callable[[], Any], lambda g=graph, a=args: g(*a))
            out.append(time_calls(call, warmup=protocol.warmup_runs,
                                  runs=protocol.runs_per_pass, number=protocol.number, sync=sync,
                                  cooldown_ms=protocol.cooldown_ms))
    return out[0], out[1]


def measure_torch(build: BuildInput, protocol: MeasureConfig, device: str) -> tuple[list[float], list[float]]:
    graphs, sync = _load_torch(build, protocol, device)
    return _back_to_back(lambda: _time_torch_pass(graphs, sync, protocol), protocol.passes)


def _torch_pass(slot: str, build: BuildInput, protocol: MeasureConfig,
                device: str) -> tuple[list[float], list[float]]:
    """One pass of an interleaved run; the model stays loaded in this worker under `slot`."""
    if slot not in _LOADED:
        _LOADED[slot] = _load_torch(build, protocol, device)
    graphs, sync = _LOADED[slot]
    return _time_torch_pass(graphs, sync, protocol)


class TorchRunner(_PooledRunner):
    """PyTorch eager on CPU or CUDA: the baseline every TVM figure is compared with."""

    name = "torch"

    def __init__(self, *, device: str = "cpu", timeout_s: float = 300.0):
        super().__init__(timeout_s=timeout_s)
        self.device = device

    def _job(self) -> Callable[..., tuple[list[float], list[float]]]:
        return measure_torch

    def _pass_job(self) -> Callable[..., tuple[list[float], list[float]]]:
        return _torch_pass

    def _args(self, item: RunInput, protocol: MeasureConfig) -> tuple[Any, ...]:
        return (item.build, protocol, self.device)


def _load_ort(build: BuildInput, protocol: MeasureConfig) -> list[tuple[Any, dict[str, Any]]]:
    """Each graph's ONNX Runtime session with its feed: the subnet exported to ONNX in a directory that lives as
    long as the sessions need it (ONNX Runtime reads the file once, when the session opens)."""
    import tempfile

    import torch

    model = subnet_model(build)
    shapes = {"src_len": build.source_length_tokens, "cache_len": build.cache_len}
    specs = input_specs(build.subnet, build.model_config, batch=build.batch, **shapes)
    with tempfile.TemporaryDirectory(prefix="hwnas-ort-") as tmp:
        paths = export_onnx(model, Path(tmp), source_length_tokens=build.source_length_tokens,
                            cache_len=build.cache_len, batch=build.batch)
        sessions = onnx_sessions(paths, threads=protocol.threads)
    args = dict(zip((ENCODER, DECODER_STEP), example_inputs(model, batch=build.batch, **shapes), strict=True))
    with torch.inference_mode():
        return [(sessions[g], onnx_feed(sessions[g], [n for n, _, _ in specs[g]], [a.numpy() for a in args[g]]))
                for g in (ENCODER, DECODER_STEP)]


def _time_ort_pass(graphs: list[tuple[Any, dict[str, Any]]],
                   protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    """One pass: warm-up, then `runs_per_pass` timed runs of each graph's session."""
    out = []
    for sess, feed in graphs:
        # cast: mypy cannot infer a lambda whose defaults bind the loop variables
        call = cast(Callable[[], Any], lambda s=sess, f=feed: s.run(None, f))
        out.append(time_calls(call, warmup=protocol.warmup_runs, runs=protocol.runs_per_pass,
                              number=protocol.number, cooldown_ms=protocol.cooldown_ms))
    return out[0], out[1]


def measure_ort(build: BuildInput, protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    graphs = _load_ort(build, protocol)
    return _back_to_back(lambda: _time_ort_pass(graphs, protocol), protocol.passes)


def _ort_pass(slot: str, build: BuildInput, protocol: MeasureConfig) -> tuple[list[float], list[float]]:
    """One pass of an interleaved run; the sessions stay loaded in this worker under `slot`."""
    if slot not in _LOADED:
        _LOADED[slot] = _load_ort(build, protocol)
    return _time_ort_pass(_LOADED[slot], protocol)


class OrtRunner(_PooledRunner):
    """ONNX Runtime's CPU execution provider on the graphs an ONNX bundle ships (exported the same way), so an
    ONNX bundle's certificate times what its user deploys."""

    name = "onnxruntime"

    def _job(self) -> Callable[..., tuple[list[float], list[float]]]:
        return measure_ort

    def _pass_job(self) -> Callable[..., tuple[list[float], list[float]]]:
        return _ort_pass

    def _args(self, item: RunInput, protocol: MeasureConfig) -> tuple[Any, ...]:
        return (item.build, protocol)


# What an RPC measurement sends back from its worker: ("ok", (encoder_ms, decoder_step_ms), board),
# ("error", message, board) or ("lost", message, board) when the board vanished from the tracker meanwhile.
_RPCOutcome = tuple[str, Any, str | None]


def _measure_rpc(artifact: str, protocol: MeasureConfig, tracker: str, key: str,
                 session_timeout_s: float) -> _RPCOutcome:
    """Upload the library to the next free board of `key`, time both functions there with TVM's on-device
    timer; failures as data, naming the board."""
    import tvm
    from tvm import rpc
    from tvm.runtime.vm import VirtualMachine

    meta = json.loads((Path(artifact) / "meta.json").read_text())
    try:
        host, port, match_key = claim_board(tracker, key, wait_s=session_timeout_s)
    except (MeasurementError, OSError) as e:
        return "error", _describe(e), None
    board = f"{host}:{port}"
    try:  # from here on a failure may be the board's going: the tracker can hand out a board as it dies
        remote = rpc.connect(host, port, match_key, session_timeout_s)
        remote.upload(str(Path(artifact) / meta["library"]))
        lib = remote.load_module(meta["library"])
        dev = remote.cuda(0) if meta["target"].get("kind") == "cuda" else remote.cpu(0)
        if protocol.threads:
            remote.get_function("runtime.config_threadpool")(1, protocol.threads)
        vm = VirtualMachine(lib, dev)
        return "ok", _time_tvm(vm, dev, meta, protocol, lambda a: tvm.runtime.tensor(a, device=dev)), board
    except Exception as e:  # boundary: TVM's RPC raises its own errors; the board may be gone
        if _still_there(tracker, key, board):
            return "error", f"on board {board}: {_describe(e)}", board
        return "lost", f"board {board} vanished mid-measurement ({_describe(e)})", board


def _still_there(tracker: str, key: str, board: str, *, checks: int = 3, interval_s: float = 0.5) -> bool:
    """Whether `board` is still registered under `key`: the tracker drops a board whose connection closed, a
    moment after its sessions broke, so a failure is blamed on the board only if it stays listed."""
    for _ in range(checks):
        time.sleep(interval_s)
        try:
            if board not in tracker_boards(tracker, key):
                return False
        except MeasurementError:
            return False
    return True


class RPCRunner(Runner):
    """A device registered at a TVM RPC tracker under `key`: one board (a Raspberry Pi, a phone, another host)
    or a farm of alike boards under one key.

    Each board times one subnet at a time, all boards at once (one worker process per board, each with a
    timeout); every result names its board. A board that vanishes mid-measurement costs only that subnet's
    attempt: it is retried on another board, up to `attempts` tries in all, and fails as data after that or
    when no board of the key is left. The library is uploaded per measurement; a session lives at most
    `session_timeout_s`, so a hung board costs one record (HAT's users saw sessions hang under emulation).
    The passes of a subnet are timed back to back, on one board.
    """

    name = "tvm-rpc"

    def __init__(self, *, tracker: str, key: str, timeout_s: float = 300.0, session_timeout_s: float = 240.0,
                 attempts: int = 2):
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.tracker, self.key, self.timeout_s = tracker, key, timeout_s
        self.session_timeout_s, self.attempts = session_timeout_s, attempts

    def run(self, inputs: Sequence[RunInput], protocol: MeasureConfig) -> list[RunResult]:
        from concurrent.futures import FIRST_COMPLETED, Future, wait

        from tvm.support.popen_pool import PopenPoolExecutor

        boards = len(tracker_boards(self.tracker, self.key))  # a setup error is one clear error, not N records
        if any(item.artifact is None for item in inputs):
            raise ValueError("RPCRunner needs built artifacts (RunInput.artifact)")
        results: list[RunResult | None] = [None] * len(inputs)
        tries = [0] * len(inputs)
        todo = list(range(len(inputs)))
        pool = PopenPoolExecutor(max_workers=max(1, min(boards, len(inputs))), timeout=self.timeout_s,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running: dict[Future[_RPCOutcome], int] = {}
        try:
            while todo or running:
                while todo and len(running) < boards:  # one subnet per board: no session waits for a board
                    i = todo.pop(0)
                    tries[i] += 1
                    running[pool.submit(_measure_rpc, inputs[i].artifact, protocol, self.tracker, self.key,
                                        self.session_timeout_s)] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    try:
                        status, payload, board = fut.result()
                    except TimeoutError:
                        results[i] = _failed(f"measurement timed out after {self.timeout_s:.0f} s")
                        continue
                    except Exception as e:  # the worker died: this input failed, the batch goes on
                        results[i] = _failed(_describe(e))
                        continue
                    if status == "ok":
                        enc, dec = payload
                        results[i] = RunResult(encoder_ms=tuple(enc), decoder_step_ms=tuple(dec), board=board)
                        continue
                    if status == "lost":
                        boards = self._boards_left()
                        if tries[i] < self.attempts and boards:
                            todo.insert(0, i)  # on another board: the vanished one left the tracker
                            continue
                    results[i] = RunResult(error=str(payload)[:2000], board=board)
                if not boards and todo:  # every board of the key vanished: the rest cannot be measured
                    for i in todo:
                        results[i] = _failed(f"no board with key '{self.key}' is left at tracker {self.tracker}")
                    todo = []
        finally:
            pool.shutdown(wait=True)
        return cast(list[RunResult], results)  # every slot is filled: each input ends in exactly one branch

    def _boards_left(self) -> int:
        try:
            return len(tracker_boards(self.tracker, self.key))
        except MeasurementError:
            return 0
