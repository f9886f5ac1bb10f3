"""Targets from users, checked where a crash cannot hurt.

TVM builds an LLVM codegen for whatever triple a target names, and LLVM aborts the process on a triple it does
not know (`{"kind": "llvm", "mtriple": "zzz"}` segfaults in `llvm_get_cpu_archlist`). A service cannot let one
request take it down, so a target from outside is checked in two steps: its attributes against the kinds hwnas
builds for (no TVM call), then by a short-lived subprocess that makes the target and compiles a one-line kernel
for it. A crash or a hang there is a refusal naming the target, never a dead server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from hwnas.exceptions import MeasurementError

__all__ = ["COMPILER_OPTIONS", "TARGET_CHECK_TIMEOUT_S", "TARGET_OPTIONS", "check_target"]

TARGET_CHECK_TIMEOUT_S = 60.0  # TVM's import (~2.5 s) and one tiny compile; a hang beyond this is a refusal

# The attributes TVM 0.27 declares for the kinds hwnas builds for (`tvm.target.Target(kind).kind.options`),
# less its internal ones (from_device, target_device_type) and `host`, which hwnas sets itself.
_COMMON = {"keys": "list", "tag": "str", "device": "str", "model": "str", "libs": "list", "mcpu": "str"}
TARGET_OPTIONS: dict[str, dict[str, str]] = {
    "llvm": {**_COMMON, "mattr": "list", "mtriple": "str", "mfloat-abi": "str", "mabi": "str", "num-cores": "int",
             "fast-math": "bool", "fast-math-nnan": "bool", "fast-math-ninf": "bool", "fast-math-nsz": "bool",
             "fast-math-arcp": "bool", "fast-math-contract": "bool", "fast-math-reassoc": "bool", "opt-level": "int",
             "cl-opt": "list", "jit": "str", "vector-width": "int"},
    "cuda": {**_COMMON, "arch": "str", "max_shared_memory_per_block": "int", "max_threads_per_block": "int",
             "thread_warp_size": "int", "registers_per_block": "int", "l2_cache_size_bytes": "int",
             "max_num_threads": "int"},
}
# LLVM command-line options apply to everything compiled in the process that reads them, libraries are linked
# into every build, and the JIT choice is the compiling host's: operators' settings, not a device's.
COMPILER_OPTIONS = frozenset({"cl-opt", "libs", "jit"})
_MAX_STR = 256
_MAX_LIST = 64
_MAX_INT = 2**31 - 1


def check_target(target: Any, *, compiler_options: bool = False,
                 timeout_s: float = TARGET_CHECK_TIMEOUT_S) -> dict[str, Any]:
    """`target` if hwnas can build for it; a MeasurementError naming it otherwise.

    Attributes are checked against `TARGET_OPTIONS` (types, sizes); `COMPILER_OPTIONS` only when
    `compiler_options` (operators). Then a subprocess makes the target and compiles a one-line kernel for it,
    so a target that crashes or hangs TVM is refused here, in this process's stead.
    """
    _check_attributes(target, compiler_options=compiler_options)
    shown = json.dumps(target, sort_keys=True)
    if shown not in _CHECKED:  # one TVM, one answer: a target checked once in this process is not checked again
        if len(_CHECKED) >= 256:
            _CHECKED.clear()
        _CHECKED[shown] = _probe_in_subprocess(shown, timeout_s)  # a timeout raised: not kept, may be the load
    error = _CHECKED[shown]
    if error is not None:
        raise MeasurementError(error)
    return dict(target)


_CHECKED: dict[str, str | None] = {}  # target JSON -> its refusal line, or None when TVM builds for it


def _probe_in_subprocess(shown: str, timeout_s: float) -> str | None:
    """The refusal line for a target, or None when TVM builds for it."""
    try:
        proc = subprocess.run([sys.executable, "-m", "hwnas.kernels._target"], input=shown, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"bad TVM target {shown}: TVM did not build for it within {timeout_s:.0f} s") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"bad TVM target {shown}: TVM crashed on it ({name}); LLVM does not know this triple or CPU"
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith("bad TVM target")), None)
        return reason or f"bad TVM target {shown}: the check failed ({lines[-1] if lines else proc.returncode})"
    return None


def _check_attributes(target: Any, *, compiler_options: bool) -> None:
    def bad(why: str) -> MeasurementError:
        return MeasurementError(f"bad TVM target {_shown(target)}: {why}")

    if not isinstance(target, dict) or not isinstance(target.get("kind"), str):
        raise bad("a TVM target must be a JSON object with a 'kind'")
    kind = target["kind"]
    if kind not in TARGET_OPTIONS:
        raise bad(f"kind '{kind[:_MAX_STR]}' is not one hwnas builds for ({', '.join(TARGET_OPTIONS)})")
    options = TARGET_OPTIONS[kind]
    for key, value in target.items():
        if key == "kind":
            continue
        if key not in options:
            known = ", ".join(k for k in options if compiler_options or k not in COMPILER_OPTIONS)
            raise bad(f"'{str(key)[:_MAX_STR]}' is not an attribute of {kind} targets (known: {known})")
        if key in COMPILER_OPTIONS and not compiler_options:
            raise bad(f"'{key}' is a compiler option: only operators set it (hwnas devices add)")
        want = options[key]
        if want == "str" and not _text(value):
            raise bad(f"'{key}' must be a string of 1-{_MAX_STR} printable characters")
        if want == "int" and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT):
            raise bad(f"'{key}' must be an integer from 0 to {_MAX_INT}")
        if want == "bool" and not isinstance(value, bool):
            raise bad(f"'{key}' must be true or false")
        if want == "list" and not (isinstance(value, list) and len(value) <= _MAX_LIST and all(map(_text, value))):
            raise bad(f"'{key}' must be a list of at most {_MAX_LIST} strings")


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_STR and value.isprintable()


def _shown(target: Any) -> str:
    try:
        shown = json.dumps(target, allow_nan=False)
    except (TypeError, ValueError):
        shown = repr(target)
    return shown if len(shown) <= 300 else shown[:300] + "..."


def _probe() -> int:
    """Subprocess body: make the target read from stdin and compile one kernel for it (exit 2 with the reason)."""
    import tvm
    from tvm import te

    from hwnas.kernels._build import make_target

    target = json.loads(sys.stdin.read())
    try:
        tgt = make_target(target)
        if tgt.kind.name == "llvm":
            tvm.target.codegen.llvm_get_cpu_archlist(tgt)  # where an unknown triple aborts
        a = te.placeholder((4,), name="a")
        b = te.compute((4,), lambda i: a[i] * 2.0, name="b")
        if tgt.kind.name == "cuda":  # GPU kernels need their threads bound; the host part is what can crash
            tvm.target.Target(tgt.host or "llvm")
        else:
            tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=tgt)
    except MeasurementError as e:
        print(str(e).splitlines()[0])
        return 2
    except Exception as e:  # boundary: TVM raises its own FFI errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bad TVM target {json.dumps(target)}: {first}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_probe())
