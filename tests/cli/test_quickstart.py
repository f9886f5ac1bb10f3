"""`hwnas quickstart` end to end: the real stages (training, TVM tuning, measuring on this CPU, predictor, Ray
search, verification, ONNX export) on the tiny test space and a slice of the Bible, so it takes a minute or two."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_clean_error, hwnas
from tests.conftest import NARROW_SPACE_DICT, TINY_SPACE_DICT

SPACE = NARROW_SPACE_DICT  # 96 subnets: plenty for 10 measured and a search, and a quicker TVM task extraction
TINY = ["--steps", "3", "--trials", "8", "--samples", "10", "--population", "4", "--generations", "1",
        "--budget-fraction", "1"]  # the whole space is within budget by prediction: the export cannot miss


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, bible_dir: Path) -> tuple[Path, str, dict]:
    """(home, stdout, summary) of one quickstart run in a fresh $HWNAS_HOME, in this process."""
    import ray
    from typer.testing import CliRunner

    import hwnas.cli._quickstart as qs
    from hwnas.cli import app

    root = tmp_path_factory.mktemp("quickstart")
    space = root / "tiny.json"
    space.write_text(json.dumps(SPACE))
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(home))
        mp.delenv("HWNAS_DB_URL", raising=False)
        mp.setattr(qs, "SPACE", str(space))  # the embedded recipe, pointed at test stand-ins
        mp.setattr(qs, "DATA", f"files:{bible_dir}:de-en")
        try:
            result = CliRunner().invoke(app, ["quickstart", *TINY])
        finally:
            ray.shutdown()  # the search started a local Ray in this process; later tests start their own
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return home, result.output, json.loads((home / "quickstart.json").read_text())


def _printed_paths(output: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^  ([A-Za-z ]+):\s+(\S+)  \(", output, re.MULTILINE)}


@pytest.mark.slow  # the whole quickstart: 4-5 min on 2 cores; each stage has faster tests
def test_quickstart_produces_every_artifact(run: tuple[Path, str, dict]) -> None:
    from hwnas.db import Database
    from hwnas.export import load_bundle
    from hwnas.jobs import front, get_job
    from hwnas.latency import SQLMeasurementStore, list_predictors
    from hwnas.supernet import read_checkpoint

    home, output, summary = run
    paths = _printed_paths(output)
    assert set(paths) == {"checkpoint", "tuning database", "database", "Pareto plot", "export bundle", "summary"}
    for what in ("checkpoint", "tuning database", "Pareto plot", "export bundle", "summary"):
        assert Path(paths[what]).exists(), what
        assert str(home) in paths[what]  # everything lands under $HWNAS_HOME
    assert read_checkpoint(paths["checkpoint"])["step"] == 3
    assert (Path(paths["tuning database"]) / "database_tuning_record.json").stat().st_size > 0
    assert Path(paths["Pareto plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    db = Database(f"sqlite:///{home / 'hwnas.db'}")
    space = TINY_SPACE_DICT["name"]
    records = SQLMeasurementStore(db).records(device="local-cpu", space=space, tuning_key=None)
    assert sum(r.result.ok for r in records) >= 10 and all(r.tuning_key for r in records)  # tuned kernels only
    assert {p["kind"] for p in list_predictors(db, "local-cpu")} == {"layerwise", "hat-mlp"}

    job = summary["job_id"]
    assert get_job(db, job).status == "finished"
    members = front(db, job)
    assert members and all(m.measured_latency_ms is not None and m.measured_latency_ms > 0 for m in members)
    best = summary["best"]
    chosen = next(m for m in members if m.candidate.id == best["candidate"])
    assert chosen.meets_constraint and best["measured_latency_ms"] <= summary["budget"]["budget_ms"]

    bundle = load_bundle(paths["export bundle"])
    assert bundle.format == "onnx" and bundle.subnet == chosen.candidate.subnet
    # the ONNX bundle's latency is certified by ONNX Runtime, the runtime that deploys it, on this CPU
    assert bundle.certificate is not None and bundle.certificate.device == "local-cpu-ort"
    assert bundle.certificate.runtime == "onnxruntime" and "with onnxruntime" in bundle.covers()
    assert set(summary["stage_seconds"]) == {"supernet", "kernels", "latency", "search", "export"}
    assert "budget" in output and "predicted smallest" in output  # the budget says what it is based on


@pytest.mark.slow  # the whole quickstart: 4-5 min on 2 cores; each stage has faster tests
def test_quickstart_rerun_reuses_the_cached_stages(run: tuple[Path, str, dict], bible_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run trains and tunes nothing: same checkpoint file (untouched), same tuning records."""
    import hwnas.cli._quickstart as qs
    from hwnas.cli._common import device
    from hwnas.search_spaces import get_space

    home, _, first = run
    monkeypatch.setenv("HWNAS_HOME", str(home))
    monkeypatch.setattr(qs, "SPACE", str(home.parent / "tiny.json"))
    monkeypatch.setattr(qs, "DATA", f"files:{bible_dir}:de-en")
    ckpt = Path(first["checkpoint"])
    written = ckpt.stat().st_mtime_ns
    summary = qs.Summary(qs.Sizes(steps=3, trials=8, samples=10, population=4, generations=1, budget_fraction=1.0,
                                     workers=2))
    space = get_space(qs.SPACE)
    mc = qs._supernet(summary, space, steps=2)  # fewer steps than the checkpoint has: reused as it is
    qs._kernels(summary, device("local-cpu"), space, mc, trials=8)
    assert summary.checkpoint == str(ckpt) and summary.checkpoint_step == 3 and ckpt.stat().st_mtime_ns == written
    assert summary.tuning_records == first["tuning_records"]


def test_bad_budget_fraction_is_one_line(tmp_path: Path) -> None:
    for fraction in ("0", "1.5", "-0.2"):
        assert_clean_error(hwnas("quickstart", "--budget-fraction", fraction, home=tmp_path),
                           "--budget-fraction must be in (0, 1]")
    assert not (tmp_path / "supernets").exists()  # rejected before any work


def _readme_python_example() -> str:
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python"):text.index("## Architecture")]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]


@pytest.mark.slow  # the whole quickstart: 4-5 min on 2 cores; each stage has faster tests
def test_readme_python_example_runs(run: tuple[Path, str, dict], bible_dir: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example, as written but with the quickstart test's sizes, in the workspace the quickstart
    left: it reuses the supernet, the tuning database and the measurements, then searches and exports."""
    import ray

    from hwnas.db import Database
    from hwnas.export import load_bundle
    from hwnas.jobs import front, list_supernets, tuning_records

    home, _, summary = run
    monkeypatch.setenv("HWNAS_HOME", str(home))
    monkeypatch.delenv("HWNAS_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    code = _readme_python_example()
    sizes = {'SPACE, DATA = "quickstart", "bible:de-en"':
             f'SPACE, DATA = {str(home.parent / "tiny.json")!r}, "files:{bible_dir}:de-en"',
             "TrainConfig(steps=300)": "TrainConfig(steps=3)",
             "records=64": "records=8", "mc, n=16)": "mc, n=10)", "latency_ms=10.0": "latency_ms=1e6",
             "population=16, generations=4": "population=4, generations=1"}
    for written, smaller in sizes.items():
        assert written in code, f"the README example no longer says {written}"
        code = code.replace(written, smaller)
    scope: dict[str, object] = {}
    try:
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        ray.shutdown()

    db = Database(f"sqlite:///{home / 'hwnas.db'}")
    (net,) = list_supernets(db)  # the quickstart's checkpoint, registered once and reused
    assert net.path == summary["checkpoint"] and net.step == 3
    bundle = load_bundle(tmp_path / "bundle")
    best = scope["best"]
    assert bundle.format == "onnx" and bundle.subnet == best.candidate.subnet  # type: ignore[attr-defined]
    assert best in front(db, scope["job"])  # type: ignore[arg-type]
    assert tuning_records("local-cpu", TINY_SPACE_DICT["name"]) == summary["tuning_records"]  # nothing tuned again
