"""CLI fixtures: one workspace measured on the PyTorch-eager device, made once with the CLI and copied to each
module that uses it (they add jobs and measurements of their own)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.cli.test_cli import hwnas
from tests.conftest import TINY_SPACE_DICT

TORCH = ["--device", "local-cpu-torch"]
VOCAB = ["--vocab-size", "300"]


@dataclasses.dataclass(frozen=True)
class Workspace:
    home: Path  # $HWNAS_HOME: the database with 14 measured subnets and a layerwise predictor
    space: Path  # the tiny space as a file
    checkpoint: Path  # a tiny supernet trained for 4 steps
    collected: str  # what `hwnas latency collect` printed
    trained: str  # what `hwnas latency train` printed

    def copy(self, to: Path) -> Workspace:
        shutil.copytree(self.home, to / "home")
        return dataclasses.replace(self, home=to / "home")


@pytest.fixture(scope="session")
def torch_workspace(tmp_path_factory: pytest.TempPathFactory, bible_dir: Path) -> Workspace:
    root = tmp_path_factory.mktemp("cli-torch-workspace")
    home, space = root / "home", root / "tiny.json"
    space.write_text(json.dumps(TINY_SPACE_DICT))
    r = hwnas("supernet", "train", "--space", str(space), "--data", f"files:{bible_dir}:de-en", "--out",
              str(root / "run"), "--steps", "4", "--max-tokens", "300", *VOCAB, "--threads", "1")
    assert r.returncode == 0, r.stderr
    common = [*TORCH, "--space", str(space), *VOCAB]
    collected = hwnas("latency", "collect", *common, "-n", "14", home=home)
    assert collected.returncode == 0, collected.stderr
    trained = hwnas("latency", "train", *common, "--kinds", "layerwise", home=home)
    assert trained.returncode == 0, trained.stderr
    return Workspace(home, space, root / "run" / "checkpoint.pt", collected.stdout, trained.stdout)
