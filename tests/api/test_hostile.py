"""Hostile input: requests that crashed the service or got a 5xx (issue 14), and their siblings, on SQLite and
PostgreSQL. Each must be a 4xx with one clear line, and the service must answer the next request."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from hwnas.api import _service as svc
from hwnas.api._app import UNAVAILABLE
from hwnas.db import Database
from hwnas.exceptions import StorageError
from tests.api.conftest import DEVICE

Auth = Callable[..., dict[str, str]]
JSON = {"Content-Type": "application/json"}


def device_body(**changes: object) -> dict[str, object]:
    return {"name": "alice.board", "kind": "cpu", "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
            **changes}  # alice's private device


def assert_refused(r: object, code: int = 422) -> str:
    """A 4xx with one line of detail that names no database; returns the detail."""
    status, body = r.status_code, r.json()  # type: ignore[attr-defined]
    assert status == code, (status, body)
    detail = body["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "postgresql" not in detail and "sqlite" not in detail
    return detail


def assert_alive(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------------------- targets

@pytest.mark.parametrize(("target", "needle"), [
    ({"kind": "llvm", "mtriple": "zzz", "mcpu": "x"}, "TVM crashed on it"),  # segfaulted the server before
    ({"kind": "llvm", "mtriple": "zzz"}, "TVM crashed on it"),  # was stored, to crash whoever measured it
    ({"kind": "llvm", "cl-opt": ["-print-after-all"]}, "'cl-opt' is a compiler option: only operators"),
    ({"kind": "llvm", "libs": ["cblas"]}, "'libs' is a compiler option"),
    ({"kind": "llvm", "surprise": 1}, "'surprise' is not an attribute of llvm targets"),
    ({"kind": "llvm", "num-cores": "many"}, "'num-cores' must be an integer"),
    ({"kind": "llvm", "num-cores": True}, "'num-cores' must be an integer"),
    ({"kind": "llvm", "mcpu": "a\u0000b"}, "'mcpu' must be a string"),
    ({"kind": "llvm", "mattr": "+neon"}, "'mattr' must be a list"),
    ({"kind": "hexagon"}, "kind 'hexagon' is not one hwnas builds for"),
    ({"mcpu": "znver4"}, "'kind'"),
])
def test_targets_that_crash_or_smuggle_options_are_refused(client: TestClient, auth: Auth, target: dict,
                                                           needle: str) -> None:
    r = client.post("/devices", json=device_body(target=target), headers=auth())
    assert needle in assert_refused(r)
    assert_alive(client)
    assert "alice.board" not in {d["name"] for d in client.get("/devices", headers=auth()).json()}


def test_a_target_tvm_builds_for_is_registered(client: TestClient, auth: Auth) -> None:
    r = client.post("/devices", json=device_body(target={"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                                         "mcpu": "cortex-a72", "num-cores": 4}), headers=auth())
    assert r.status_code == 201, r.text
    assert r.json()["target"]["mcpu"] == "cortex-a72"


# ------------------------------------------------------------------------------------------- numbers JSON has not

NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize("template", [
    b'{"space": "quickstart", "device": "local-cpu", "latency_ms": %s}',
    b'{"space": "quickstart", "device": "local-cpu", "latency_ms": 5, "options": {"deep": [1, %s]}}',
    b'{"space": "quickstart", "device": "local-cpu", "latency_ms": 5, "surprise": %s}',
])
def test_non_finite_numbers_in_a_job_are_422(client: TestClient, auth: Auth, number: bytes,
                                            template: bytes) -> None:
    r = client.post("/jobs", content=template % number, headers={**auth(), **JSON})
    assert "NaN, Infinity" in assert_refused(r)


@pytest.mark.parametrize("number", NON_FINITE)
def test_non_finite_numbers_elsewhere_are_422(client: TestClient, auth: Auth, number: bytes) -> None:
    headers = {**auth(), **JSON}
    body = b'{"name": "alice.b", "kind": "cpu", "target": {"kind": "llvm", "num-cores": %s}}' % number
    assert_refused(client.post("/devices", content=body, headers=headers))
    assert_refused(client.post("/jobs/1/exports", content=b'{"candidate_id": %s, "format": "onnx"}' % number,
                               headers=headers))
    assert_refused(client.post(f"/devices/{DEVICE}/predict", content=b'{"subnet": {"x": %s}}' % number,
                               headers=headers))


def test_validation_errors_do_not_echo_the_input(client: TestClient, auth: Auth) -> None:
    r = client.post("/jobs", json={"space": "quickstart", "device": "local-cpu", "latency_ms": "secret-looking"},
                    headers=auth())
    body = r.json()
    assert r.status_code == 422 and "secret-looking" not in json.dumps(body)
    assert body["detail"].startswith("body.latency_ms:") and body["errors"][0]["loc"] == ["body", "latency_ms"]


# ------------------------------------------------------------------------------------------- bytes the database refuses

@pytest.mark.parametrize("change", [{"name": "alice.a\u0000b"}, {"key": "rpi\u00004", "tracker": "h:9190"},
                                    {"key": "\u0000"}, {"key": "é" * 10}])
def test_nul_bytes_and_odd_keys_are_422(client: TestClient, auth: Auth, change: dict) -> None:
    r = client.post("/devices", json=device_body(**change), headers=auth())
    assert_refused(r)
    assert_alive(client)


def test_a_value_the_database_cannot_store_is_an_input_error(db: Database) -> None:
    """Below the API's own checks: PostgreSQL refuses NUL in text; that is the value's fault, a 422 and no URL."""
    from hwnas.db import User
    from hwnas.exceptions import InvalidValueError

    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite stores NUL bytes")
    with pytest.raises(InvalidValueError, match="NUL") as e, db.session() as s:  # straight to the table
        s.add(User(name="bad\u0000name"))
    assert "postgresql" not in str(e.value) and "127.0.0.1" not in str(e.value)


def test_a_database_failure_is_a_503_without_the_database_url(client: TestClient, auth: Auth,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_: object) -> None:
        raise StorageError("database postgresql://hwnas@db.internal:5432/hwnas: connection refused")

    headers = auth()
    monkeypatch.setattr(svc, "owned_job", down)
    r = client.get("/jobs/1", headers=headers)
    assert r.status_code == 503 and r.json() == {"detail": UNAVAILABLE}


# ------------------------------------------------------------------------------------------- bodies

def _chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_a_streamed_body_over_the_limit_is_413(client: TestClient, auth: Auth) -> None:
    headers = {**auth(), **JSON}
    r = client.post("/jobs", content=_chunks(70_000), headers=headers)  # no Content-Length: chunked
    assert "request body over" in assert_refused(r, 413)
    r = client.post("/jobs", content=_chunks(1000), headers=headers)  # under it: parsed as usual
    assert r.status_code == 422
    assert_alive(client)


# ------------------------------------------------------------------------------------------- dashboard ids

@pytest.fixture()
def logged_in(client: TestClient, auth: Auth) -> TestClient:
    token = auth()["Authorization"].split()[1]
    r = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303
    return client


@pytest.mark.parametrize("raw", ["²", "٣", "１", "9" * 5000, "999999999999999999999999999999", "0", "-1", "1e3",
                                 "%00", "2147483648"])
def test_dashboard_ids_that_are_no_ids_are_404(logged_in: TestClient, raw: str) -> None:
    for path in (f"/ui/jobs/{raw}", f"/ui/jobs/{raw}/pareto.png", f"/ui/exports/{raw}"):
        r = logged_in.get(path)
        assert r.status_code == 404, (path, r.status_code)
    assert logged_in.get("/ui/jobs", params={"page": "٣"}).status_code == 200


# ------------------------------------------------------------------------------------------- quotas and throttling

def test_job_quotas_name_their_setting(strict: TestClient, auth: Auth, budget_ms: float) -> None:
    alice, bob = auth("alice"), auth("bob")
    body = {"space": "quickstart", "device": DEVICE, "latency_ms": budget_ms, "population": 8, "generations": 2,
            "verify": False}
    assert "HWNAS_QUOTA_EVALUATIONS" in assert_refused(strict.post("/jobs", json={**body, "population": 50,
                                                                                   "generations": 3}, headers=alice))
    assert "HWNAS_QUOTA_WORKERS" in assert_refused(strict.post("/jobs", json={**body, "workers": 3}, headers=alice))
    assert "HWNAS_QUOTA_RETRAIN_STEPS" in assert_refused(strict.post("/jobs", json={**body, "retrain": {
        "steps": 50_000}}, headers=alice))
    assert "HWNAS_QUOTA_GPUS_PER_WORKER" in assert_refused(strict.post("/jobs", json={**body, "gpus_per_worker": 2},
                                                                       headers=alice))
    assert_refused(strict.post("/jobs", json={**body, "retrain": {"steps": 10, "average_last": 5,
                                                                  "checkpoint_every": 10}}, headers=alice))
    first = strict.post("/jobs", json={**body, "retrain": {"steps": 100, "init": "inherited"}}, headers=alice).json()
    assert first["spec"]["retrain"]["init"] == "inherited" and first["retrained"] is None
    first = first["id"]
    assert strict.post("/jobs", json=body, headers=alice).status_code == 201
    assert "HWNAS_QUOTA_ACTIVE_JOBS" in assert_refused(strict.post("/jobs", json=body, headers=alice), 429)
    assert strict.post("/jobs", json=body, headers=bob).status_code == 201  # per user
    assert strict.delete(f"/jobs/{first}", headers=alice).status_code == 200
    assert strict.post("/jobs", json=body, headers=alice).status_code == 201  # a cancelled job frees its place


def test_export_quota_per_job(strict: TestClient, auth: Auth, db: Database, budget_ms: float) -> None:
    from hwnas.db import Candidate, Export
    from hwnas.search_spaces import get_space

    alice = auth()
    job = strict.post("/jobs", json={"space": "quickstart", "device": DEVICE, "latency_ms": budget_ms,
                                     "population": 8, "generations": 2, "verify": False}, headers=alice).json()["id"]
    cfg = get_space("quickstart").smallest()
    with db.session() as s:  # a stand-in candidate and one earlier export of it: what a run would have left
        cand = Candidate(job_id=job, subnet_key=cfg.key(), subnet=cfg.to_dict(), generation=0, loss=5.0, bleu=None,
                         predicted_latency_ms=1.0, params=1, flops=1, eval_s=0.1)
        s.add(cand)
        s.flush()
        s.add(Export(job_id=job, candidate_id=cand.id, format="onnx", path="/srv/hwnas/exports/1", status="failed",
                     error="ExportError: output '/srv/hwnas/exports/1' exists"))
        cand_id = cand.id
    r = strict.post(f"/jobs/{job}/exports", json={"candidate_id": cand_id, "format": "torchscript"}, headers=alice)
    assert "HWNAS_QUOTA_EXPORTS_PER_JOB" in assert_refused(r, 429)
    (shown,) = strict.get(f"/jobs/{job}/exports", headers=alice).json()  # a failure names no server path
    assert shown["error"] == "ExportError: output '<server path>' exists"


def test_failed_logins_are_throttled_per_client(strict: TestClient, auth: Auth) -> None:
    good = auth()
    for _ in range(3):
        assert strict.get("/jobs", headers={"Authorization": "Bearer hwnas_guess"}).status_code == 401
    assert "too many failed logins" in assert_refused(strict.get("/jobs", headers=good), 429)
    r = strict.post("/ui/login", data={"token": good["Authorization"].split()[1]}, follow_redirects=False)
    assert r.status_code == 429 and "Too many failed logins" in r.text
