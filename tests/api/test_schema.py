"""Schemathesis over the OpenAPI schema against a live server: whatever it sends, never a 5xx, and every
response matches the schema (declared status codes, content types and bodies)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwnas.api import create_app, create_token, create_user
from hwnas.db import Database
from hwnas.settings import Settings
from tests.api.conftest import RecordingLauncher, live_server, ready_for_jobs


@pytest.fixture(scope="module")
def server(service_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A live API over SQLite with a user, a stand-in predictor and one real (tiny) job to find."""
    from hwnas.api._schemas import JobCreate
    from hwnas.api._service import create_owned_job
    from tests.api.conftest import DEVICE

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(service_home))
        db = Database(f"sqlite:///{tmp_path_factory.mktemp('schema') / 'hwnas.db'}")
        budget_ms = ready_for_jobs(db, service_home)
        create_user(db, "fuzz")
        token = create_token(db, "fuzz")
        settings = Settings(db_url=db.url, reconcile_every_s=3600)
        create_owned_job(db, "fuzz", JobCreate(space="quickstart", device=DEVICE, latency_ms=budget_ms,
                                               population=8, generations=1, verify=False), settings)
        app = create_app(settings=settings, launcher=RecordingLauncher())
        with live_server(app) as base:
            yield base, token
        db.close()


CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_no_request_gets_a_server_error(server: tuple[str, str], tmp_path: Path) -> None:
    """`schemathesis run` (its CLI, as users run it) with examples, fuzzed and stateful phases."""
    base, token = server
    out = subprocess.run([str(Path(sys.executable).parent / "schemathesis"), "run", f"{base}/openapi.json",
                          "-H", f"Authorization: Bearer {token}", "--checks", CHECKS, "--max-examples", "25",
                          "--seed", "1", "--report", "junit", "--report-dir", str(tmp_path), "--no-color"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "No issues found" in out.stdout or " passed" in out.stdout, out.stdout[-3000:]
