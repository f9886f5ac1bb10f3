"""`hwnas search ...` as users run it: a real local Ray, the default SQLite database, real measurements."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import TINY_SPACE_DICT
from tests.nas.test_cli import assert_clean_error, hwnas

DEVICE = ["--device", "local-cpu-torch"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, bible_dir: Path) -> tuple[Path, Path, Path, float]:
    """(home, space file, checkpoint, budget): a tiny supernet, 14 measured subnets and a trained predictor."""
    root = tmp_path_factory.mktemp("cli-search")
    home, space = root / "home", root / "tiny.json"
    space.write_text(json.dumps(TINY_SPACE_DICT))
    r = hwnas("supernet", "train", "--space", str(space), "--data", f"files:{bible_dir}:de-en", "--out",
              str(root / "run"), "--steps", "4", "--max-tokens", "300", "--vocab-size", "300", "--threads", "1")
    assert r.returncode == 0, r.stderr
    common = [*DEVICE, "--space", str(space)]
    r = hwnas("latency", "collect", *common, "-n", "14", "--vocab-size", "300", home=home)
    assert r.returncode == 0, r.stderr
    r = hwnas("latency", "train", *common, "--kinds", "layerwise", home=home)
    assert r.returncode == 0, r.stderr
    from hwnas.db import Database
    from hwnas.latency._registry import load_predictor
    from hwnas.search_spaces import SearchSpace

    tiny = SearchSpace.from_dict(TINY_SPACE_DICT)
    pred, _ = load_predictor(Database(f"sqlite:///{home / 'hwnas.db'}"), device="local-cpu-torch")
    fast, slow = pred.predict([tiny.smallest(), tiny.largest()])
    return home, space, root / "run" / "checkpoint.pt", float((fast + slow) / 2)


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
