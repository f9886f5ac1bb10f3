"""`hwnas search ...` as users run it: a real local Ray, the default SQLite database, real measurements."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import Workspace
from tests.cli.test_cli import assert_clean_error, hwnas

DEVICE = ["--device", "local-cpu-torch"]


def _predicted_ms(home: Path, space: Path, subnet: str) -> float:
    """`hwnas latency predict --json`: the figure, with the predictor and revision it came from."""
    r = hwnas("latency", "predict", *DEVICE, "--space", str(space), "--subnet", subnet, "--vocab-size", "300",
              "--json", home=home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["kind"], out["revision"], out["device"]) == ("layerwise", 1, "local-cpu-torch")
    assert out["model_key"] == "vocab=300,qkv=16" and 0 <= out["error_ms"] < out["latency_ms"]
    return float(out["latency_ms"])


@pytest.fixture(scope="module")
def setup(torch_workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, float]:
    """(home, space file, checkpoint, budget): a tiny supernet, 14 measured subnets and a trained predictor."""
    ws = torch_workspace.copy(tmp_path_factory.mktemp("cli-search"))
    fast, slow = (_predicted_ms(ws.home, ws.space, which) for which in ("smallest", "largest"))
    return ws.home, ws.space, ws.checkpoint, float((fast + slow) / 2)


def test_search_run_show_and_list(setup: tuple[Path, Path, Path, float]) -> None:
    home, space, ckpt, budget = setup
    r = hwnas("search", "run", "--space", str(space), *DEVICE, "--latency-ms", f"{budget:.4f}", "--supernet",
              str(ckpt), "--population", "8", "--generations", "2", "--valid-sentences", "8", "--workers", "2",
              home=home)
    assert r.returncode == 0, r.stderr
    job = int(re.search(r"search job (\d+):", r.stdout).group(1))  # type: ignore[union-attr]
    assert "finished" in r.stdout and "measured ms" in r.stdout
    shown = hwnas("search", "show", str(job), "--plot", str(home / "front.png"), home=home)
    assert shown.returncode == 0, shown.stderr
    assert (home / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in shown.stdout.splitlines() if re.match(r"\s*│?\s*\d+\s+│", line)]
    assert rows, shown.stdout
    listed = hwnas("search", "list", home=home)
    assert re.search(rf"{job}\s+│\s+finished", listed.stdout), listed.stdout
    candidate = rows[0].split("│")[0].strip() or rows[0].split("│")[1].strip()
    exported = hwnas("export", str(job), "--candidate", candidate, "--format", "torchscript", "--out",
                     str(home / "b"), home=home)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((home / "b" / "certificate.json").read_text())["device"] == "local-cpu-torch"
    assert re.search(r"certificate: [\d.]+ ms median .* on device 'local-cpu-torch' rev 1 with torch", exported.stdout)
    assert "weights: inherited" in exported.stdout
    # HAT's step 5: retrain the found subnet, then export those weights with the same certificate
    trained = hwnas("subnet", "train", "--job", str(job), "--candidate", candidate, "--out", str(home / "rt"),
                    "--steps", "2", "--checkpoint-every", "1", "--average-last", "2", "--test-limit", "4", "--beam",
                    "1", "--device", "cpu", home=home)
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"retrained, 2 updates, 2 checkpoint\(s\) averaged, .* test BLEU [\d.]+ \(4 sentences",
                     trained.stdout), trained.stdout
    again = hwnas("export", str(job), "--candidate", candidate, "--format", "torchscript", "--out",
                  str(home / "b2"), "--weights", str(home / "rt" / "model.pt"), home=home)
    assert again.returncode == 0, again.stderr
    assert re.search(r"weights: retrained \(2 updates, test BLEU [\d.]+\)", again.stdout), again.stdout
    manifest = json.loads((home / "b2" / "manifest.json").read_text())
    assert manifest["weights"]["weights"] == "retrained" and manifest["weights"]["averaged_checkpoints"] == 2
    assert (json.loads((home / "b2" / "certificate.json").read_text())
            == json.loads((home / "b" / "certificate.json").read_text()))  # same subnet, same measured latency
    assert_clean_error(hwnas("subnet", "train", "--out", str(home / "x"), home=home), "name the subnet to train")
    assert_clean_error(hwnas("export", str(job), "--candidate", candidate, "--format", "onnx", "--device",
                             "local-cpu-torch", home=home), "onnx bundles run on onnxruntime, but device "
                                                            "'local-cpu-torch' measures with torch")
    assert_clean_error(hwnas("export", str(job), "--candidate", "99999", home=home), "has no candidate 99999")


def _job_result(home: Path, job: int) -> tuple[str, dict[str, float | None]]:
    from hwnas.db import Database
    from hwnas.jobs import candidates, get_job

    db = Database(f"sqlite:///{home / 'hwnas.db'}")
    return get_job(db, job).status, {c.subnet.key(): c.loss for c in candidates(db, job)}


@pytest.mark.slow  # 45 s; the API lifecycle test resumes a killed runner
def test_killed_search_resumes_to_the_same_result(setup: tuple[Path, Path, Path, float]) -> None:
    """SIGKILL (the process group: the driver and its local Ray) mid-way through generation 2, then resume."""
    home, space, ckpt, budget = setup
    args = ["search", "run", "--space", str(space), *DEVICE, "--latency-ms", f"{budget:.4f}", "--supernet", str(ckpt),
            "--population", "10", "--generations", "5", "--valid-sentences", "8", "--no-verify", "--seed", "3"]
    full = hwnas(*args, home=home)
    assert full.returncode == 0, full.stderr
    reference = _job_result(home, int(re.search(r"search job (\d+):", full.stdout).group(1)))  # type: ignore[union-attr]

    env = {**os.environ, "HWNAS_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "hwnas.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    job = int(re.search(r"search job (\d+):", proc.stdout.readline()).group(1))  # type: ignore[union-attr, arg-type]
    deadline = time.monotonic() + 240
    while len(_job_result(home, job)[1]) < 12 and time.monotonic() < deadline:  # 10 in gen 1, then into gen 2
        time.sleep(0.05)  # 5 generations: the kill lands long before the end, however fast candidates are scored
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status, cut = _job_result(home, job)
    assert status == "running" and 12 <= len(cut) < len(reference[1])  # killed: nothing could mark it
    resumed = hwnas("search", "resume", str(job), home=home)
    assert resumed.returncode == 0, resumed.stderr
    assert _job_result(home, job) == reference


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--space", "nope"], "unknown search space 'nope'"),
        (["--device", "nope"], "unknown device 'nope'"),
        (["--latency-ms", "0.000001"], "the fastest found is predicted at"),
        (["--supernet", "/nonexistent/checkpoint.pt"], "does not exist"),
        (["--strategy", "annealing"], "Unknown strategy: annealing"),
    ],
)
def test_bad_search_input(setup: tuple[Path, Path, Path, float], args: list[str], fragment: str) -> None:
    home, space, ckpt, budget = setup
    base = {"--space": str(space), "--device": "local-cpu-torch", "--latency-ms": f"{budget}",
            "--supernet": str(ckpt), "--population": "4", "--generations": "1"}  # small, should a check slip
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert_clean_error(hwnas("search", "run", *[x for kv in base.items() for x in kv], home=home), fragment)
    assert "running" not in hwnas("search", "list", home=home).stdout  # no job left stuck


def test_unreachable_database(setup: tuple[Path, Path, Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    home, space, ckpt, budget = setup
    monkeypatch.setenv("HWNAS_DB_URL", "postgresql+psycopg://nobody:secret@127.0.0.1:1/hwnas")
    r = hwnas("search", "run", "--space", str(space), *DEVICE, "--latency-ms", f"{budget}", "--supernet", str(ckpt),
              home=home)
    assert_clean_error(r, "is unusable")
    assert "secret" not in r.stderr
    assert_clean_error(hwnas("search", "show", "999", home=home), "is unusable")
