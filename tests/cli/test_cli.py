"""The CLI as users run it (in this process, or a real subprocess); bad input is one line, exit code 2, no
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_SPACE_DICT

SUBNET = {  # a subnet of the tiny test space
    "encoder_embed_dim": 16, "encoder_layer_num": 2, "encoder_ffn_embed_dim": [32, 48],
    "encoder_self_attention_heads": [2, 4], "decoder_embed_dim": 24, "decoder_layer_num": 1,
    "decoder_ffn_embed_dim": [48], "decoder_self_attention_heads": [4], "decoder_ende_attention_heads": [2],
    "decoder_arbitrary_ende_attn": [2],
}


def hwnas(*args: str, home: Path | None = None, process: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI as `hwnas ARGS` would, with `main`'s error handling: in this process (each command otherwise
    pays 4-8 s of importing torch, TVM and Ray again), or in a real subprocess with `process`.

    In this process, what a command changes for the rest of the process is put back: the environment, torch's
    thread count, the CPUs this process may run on, signal handlers, hwnas's log handler, a local Ray.
    """
    if process:
        env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables to 80 columns when not on a terminal
        if home:
            env["HWNAS_HOME"] = str(home)
        return subprocess.run([sys.executable, "-m", "hwnas.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)
    return _in_process(list(args), home)


def _in_process(args: list[str], home: Path | None) -> subprocess.CompletedProcess[str]:
    import logging
    import signal
    import traceback

    import ray
    import torch
    from typer.testing import CliRunner

    from hwnas.cli import app
    from hwnas.exceptions import HwnasError

    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    env = {"COLUMNS": "200", **({"HWNAS_HOME": str(home)} if home else {})}
    try:
        result = CliRunner().invoke(app, args, env=env, catch_exceptions=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, cpus)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        log = logging.getLogger("hwnas")  # its handler holds the stderr of this invocation
        for h in [h for h in log.handlers if getattr(h, "_hwnas", False)]:
            log.removeHandler(h)
    stderr, code = result.stderr, result.exit_code
    error = result.exception
    if isinstance(error, HwnasError):  # what `hwnas.cli.main` does with it
        stderr, code = stderr + f"error: {error}\n", 2
    elif error is not None and not isinstance(error, SystemExit):
        stderr += "".join(traceback.format_exception(error))
        code = code or 1
    return subprocess.CompletedProcess(["hwnas", *args], code, result.stdout, stderr)


def assert_clean_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, bible_dir: Path) -> tuple[Path, Path]:
    """A tiny supernet trained through the CLI on real Bible text: (space file, checkpoint)."""
    root = tmp_path_factory.mktemp("cli")
    space = root / "tiny.json"
    space.write_text(json.dumps(TINY_SPACE_DICT))
    out = root / "run"
    r = hwnas("supernet", "train", "--space", str(space), "--data", f"files:{bible_dir}:de-en", "--out", str(out),
              "--steps", "4", "--max-tokens", "300", "--vocab-size", "300", "--threads", "1", home=root / "home")
    assert r.returncode == 0, r.stderr
    assert "step 4" in r.stdout and "registered as supernet 1" in r.stdout
    return space, out / "checkpoint.pt"


def test_training_registers_the_supernet(trained: tuple[Path, Path]) -> None:
    _, ckpt = trained
    home = ckpt.parents[1] / "home"
    listed = hwnas("supernet", "list", home=home)
    assert listed.returncode == 0 and "tiny-test-space" in listed.stdout and str(ckpt.parent) in listed.stdout
    again = hwnas("supernet", "register", str(ckpt), home=home)
    assert again.returncode == 0 and again.stdout.startswith("supernet 1: tiny-test-space")  # one row per file
    assert_clean_error(hwnas("supernet", "register", str(ckpt.parent / "nope.pt"), home=home), "nope.pt")


def test_spaces_commands() -> None:
    listed = hwnas("spaces", "list")
    assert listed.returncode == 0 and "wmt14.en-de" in listed.stdout and "quickstart" in listed.stdout
    shown = hwnas("spaces", "show", "iwslt14.de-en")
    data = json.loads(shown.stdout)
    assert data["decoder_ffn_embed_dim"] == [512, 1024, 2048] and data["genes"] == 40
    assert data["largest"]["decoder_layer_num"] == 6
    assert_clean_error(hwnas("spaces", "show", "nope"), "unknown search space 'nope'")


def test_eval_prints_loss_and_bleu(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = trained
    subnet = tmp_path / "small.json"
    subnet.write_text(json.dumps(SUBNET))
    r = hwnas("supernet", "eval", "--checkpoint", str(ckpt), "--subnet", str(subnet), "--limit", "8", "--beam", "2",
              "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sentences"] == 8 and out["valid_loss"] > 0 and 0 <= out["bleu"] <= 100
    assert out["subnet"]["decoder_embed_dim"] == 24


def test_extract_writes_a_standalone_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    from hwnas.search_spaces import SubnetConfig
    from hwnas.supernet import load_subtransformer, load_supernet

    _, ckpt = trained
    (tmp_path / "s.json").write_text(json.dumps(SUBNET))
    out = tmp_path / "model.pt"
    r = hwnas("supernet", "extract", "--checkpoint", str(ckpt), "--subnet", str(tmp_path / "s.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    model, tok = load_subtransformer(out)
    cfg = SubnetConfig.from_dict(SUBNET)
    assert model.cfg == cfg and tok.get_vocab_size() == 300
    supernet = load_supernet(ckpt).model
    src, tgt = torch.tensor([[5, 6, 7, 2]]), torch.tensor([[1, 8, 9]])
    torch.testing.assert_close(model(src, tgt), supernet(src, tgt, cfg), atol=1e-5, rtol=0)
    assert_clean_error(hwnas("supernet", "extract", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.pt"),
                             "--subnet", str(tmp_path / "missing.json")), "cannot be read")
    assert not (tmp_path / "x.pt").exists()


def test_bad_subnet_inputs(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = trained
    malformed = tmp_path / "malformed.json"
    malformed.write_text("{ this is not json")
    assert_clean_error(hwnas("supernet", "eval", "--checkpoint", str(ckpt), "--subnet", str(malformed)),
                       "malformed subnet JSON")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({**SUBNET, "encoder_ffn_embed_dim": [32, 4096]}))
    assert_clean_error(hwnas("supernet", "eval", "--checkpoint", str(ckpt), "--subnet", str(outside)),
                       "'encoder_ffn_embed_dim[1]' = 4096 is not in space 'tiny-test-space'")
    assert_clean_error(hwnas("supernet", "eval", "--checkpoint", str(ckpt), "--subnet", str(tmp_path / "no.json")),
                       "no.json' cannot be read")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00" * 100)
    assert_clean_error(hwnas("supernet", "eval", "--checkpoint", str(bad)), "is corrupt or not a checkpoint")


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({}, "train.de' does not exist"),
        ({"train.de": "a\nb\n", "train.en": "x\n"}, "has 2 lines"),
        ({"train.de": "a\n\nc\n", "train.en": "x\ny\nz\n"}, "line 2 is empty"),
    ],
)
def test_bad_training_data_writes_nothing(tmp_path: Path, files: dict[str, str], fragment: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    out = tmp_path / "out"
    r = hwnas("supernet", "train", "--space", "quickstart", "--data", f"files:{data}:de-en", "--out", str(out),
              "--steps", "1")
    assert_clean_error(r, fragment)
    assert not out.exists() or not any(out.iterdir())


def test_bad_data_spec_and_space() -> None:
    assert_clean_error(hwnas("supernet", "train", "--data", "bible:xx-en", "--steps", "1"),
                       "unknown Bible translation 'xx'")
    assert_clean_error(hwnas("supernet", "train", "--space", "nope", "--steps", "1"), "unknown search space")


def test_data_prepare_and_bad_training_options(tmp_path: Path, bible_dir: Path) -> None:
    out = tmp_path / "prepared"
    r = hwnas("data", "prepare", "--data", f"files:{bible_dir}:de-en", "--out", str(out), "--vocab-size", "300")
    assert r.returncode == 0, r.stderr
    assert "train 300, valid 24, test 24 pairs" in r.stdout and f"prepared:{out}" in r.stdout
    assert_clean_error(hwnas("data", "prepare", "--data", f"files:{bible_dir}:de-en", "--out", str(out)),
                       "exists already")
    assert_clean_error(hwnas("supernet", "train", "--recipe", "wmt14.en-de", "--data", f"prepared:{out}"),
                       "recipe 'wmt14.en-de' is for space 'wmt14.en-de', not 'quickstart'")
    assert_clean_error(hwnas("supernet", "train", "--precision", "fp16", "--device", "cpu", "--data",
                             f"prepared:{out}", "--out", str(tmp_path / "run")), "fp16 training needs a CUDA device")
    assert not (tmp_path / "run").exists()


def test_version() -> None:
    from importlib.metadata import version

    r = hwnas("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hwnas {version('hwnas')}"
