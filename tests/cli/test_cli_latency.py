"""`hwnas devices|kernels|latency` as users run them, on the default SQLite database."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hwnas.search_spaces import get_space
from tests.cli.conftest import Workspace
from tests.cli.test_cli import assert_clean_error, hwnas


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_device_lifecycle(home: Path) -> None:
    target = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}'
    r = hwnas("devices", "add", "rpi4", "--kind", "iot", "--target", target, "--tracker", "127.0.0.1:1", "--key",
              "rpi4", "--timed-runs", "60", "--passes", "3", home=home)
    assert r.returncode == 0, r.stderr
    listed = hwnas("devices", "list", home=home).stdout
    assert re.search(r"rpi4 .* shared", listed), listed
    shown = json.loads(hwnas("devices", "show", "rpi4", home=home).stdout)
    assert shown["target"]["mcpu"] == "cortex-a72" and shown["location"] == "rpc" and shown["predictors"] == []
    assert (shown["protocol"]["timed_runs"], shown["protocol"]["passes"]) == (60, 3)
    assert_clean_error(hwnas("devices", "add", "rpi4", "--kind", "iot", "--target", target, "--tracker",
                             "127.0.0.1:1", "--key", "rpi4", home=home), "already exists")
    assert_clean_error(hwnas("latency", "measure", "--device", "rpi4", "--subnet", "smallest", home=home),
                       "cannot reach TVM RPC tracker 127.0.0.1:1")
    assert_clean_error(hwnas("kernels", "tune", "--device", "rpi4", "--trials", "8", home=home),
                       "cannot reach TVM RPC tracker 127.0.0.1:1")  # before minutes of task extraction
    assert_clean_error(hwnas("kernels", "tune", "--device", "local-cpu-torch", "--trials", "8", home=home),
                       "device 'local-cpu-torch' runs torch, not TVM: it has no kernels to tune")
    assert hwnas("devices", "remove", "rpi4", home=home).returncode == 0
    assert_clean_error(hwnas("devices", "show", "rpi4", home=home), "unknown device 'rpi4'")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--kind", "cpu", "--target", "{nope"], "--target is not valid JSON"),
        (["--kind", "cpu", "--target", '{"kind": "llvm", "mcpu": "pentium9"}'], "LLVM knows no CPU 'pentium9'"),
        (["--kind", "tpu", "--target", '{"kind": "llvm"}'], "kind 'tpu' is not one of cpu, gpu, iot"),
        (["--kind", "iot", "--target", '{"kind": "llvm"}', "--key", "k"], "an rpc device needs --tracker"),
        (["--kind", "cpu", "--target", '{"kind": "llvm"}', "--passes", "3"], "must be a multiple of passes"),
    ],
)
def test_bad_device_definitions(home: Path, args: list[str], fragment: str) -> None:
    assert_clean_error(hwnas("devices", "add", "board", *args, home=home), fragment)


def test_collect_resumes_and_train_reports(torch_workspace: Workspace, tmp_path: Path) -> None:
    """The whole loop on the PyTorch-eager device (no compile step, so it fits in a test)."""
    ws = torch_workspace.copy(tmp_path)
    home, space_file = ws.home, ws.space
    common = ["--device", "local-cpu-torch", "--space", str(space_file)]
    assert "14 measured, 0 failed, 0 already" in ws.collected
    again = hwnas("latency", "collect", *common, "-n", "14", "--vocab-size", "300", home=home)
    assert "0 measured, 0 failed, 14 already in the database" in again.stdout
    assert "layerwise" in ws.trained and "11/3" in ws.trained and "revision 1" in ws.trained
    shown = json.loads(hwnas("devices", "show", "local-cpu-torch", home=home).stdout)
    assert shown["measurements"]["ok"]["count"] == 14 and shown["predictors"][0]["version"] == 1
    assert shown["current_revision"] == 1 and shown["predictors"][0]["revision"] == 1
    (rev,) = shown["revisions"]
    assert (rev["measurements"], rev["predictors"], rev["current"]) == (14, 1, True)
    assert rev["fingerprint"]["cores"] == shown["fingerprint"]["cores"]
    predicted = hwnas("latency", "predict", *common, "--subnet", "largest", "--vocab-size", "300", home=home)
    assert predicted.returncode == 0, predicted.stderr
    assert re.search(r"[\d.]+ ms \+- [\d.]+ ms \(held-out MAPE [\d.]+%.* on local-cpu-torch rev 1, space "
                     r"tiny-test-space: layerwise predictor v1", predicted.stdout.replace("\n", " ")), predicted.stdout
    # bad input: one line each, naming what is there
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({**get_space("quickstart").largest().to_dict()}))
    for args, fragment in (
            (["--revision", "7"], "device 'local-cpu-torch' has no revision 7 (revisions: 1:"),
            (["--vocab-size", "4000"], "no latency predictor for local-cpu-torch rev 1 on space 'tiny-test-space' "
                                       "(vocab=4000,qkv=16"),
            (["--subnet", str(outside)], f"subnet file '{outside}': ")):
        base = {"--subnet": "largest", "--vocab-size": "300", **dict(zip(args[::2], args[1::2], strict=True))}
        r = hwnas("latency", "predict", *common, *[x for kv in base.items() for x in kv], home=home)
        assert_clean_error(r, fragment)
    assert_clean_error(hwnas("latency", "predict", "--device", "local-cpu-torch", "--space", "quickstart", home=home),
                       "no latency predictor for local-cpu-torch rev 1 on space 'quickstart' (vocab=4000,qkv=128, "
                       "protocol ")


def test_unknown_device_and_empty_training_set(home: Path) -> None:
    assert_clean_error(hwnas("latency", "collect", "--device", "nope", "-n", "1", home=home),
                       "unknown device 'nope'")
    assert_clean_error(hwnas("latency", "train", "--device", "local-cpu", home=home),
                       "nothing was measured on device 'local-cpu' yet")
