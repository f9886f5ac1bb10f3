"""The REST API on SQLite and PostgreSQL: auth, jobs, fronts, exports, devices, bad input as 4xx."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hwnas.db import ApiToken, Database
from hwnas.export import load_bundle
from hwnas.jobs import FitnessConfig, LocalEvaluator, get_job, run_export, run_job
from hwnas.search_spaces import get_space
from tests.api.conftest import DEVICE, RecordingLauncher

Auth = Callable[..., dict[str, str]]


def job_body(budget_ms: float, **changes: object) -> dict[str, object]:
    return {"space": "quickstart", "device": DEVICE, "latency_ms": budget_ms, "population": 8, "generations": 2,
            "valid_sentences": 8, "verify": False, **changes}


def submit(client: TestClient, headers: dict[str, str], budget_ms: float, **changes: object) -> dict:
    r = client.post("/jobs", json=job_body(budget_ms, **changes), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def run_here(db: Database, home: Path, job_id: int) -> None:
    """Stands in for the Ray runner: the same run_job, in this process."""
    from tests.api.conftest import service_checkpoint

    run_job(db, job_id, evaluator=LocalEvaluator(service_checkpoint(), FitnessConfig(valid_sentences=8),
                                                 threads=1))


def test_health_needs_no_token(client: TestClient, db: Database) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["database"] == db.engine.dialect.name


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer hwnas_not-a-token"}, {"Authorization": "Basic x"}])
def test_requests_without_a_valid_token_are_401(client: TestClient, headers: dict[str, str]) -> None:
    r = client.get("/jobs", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert isinstance(r.json()["detail"], str)


def test_tokens_are_stored_hashed_and_can_be_revoked(client: TestClient, db: Database, auth: Auth) -> None:
    from hwnas.api import revoke_tokens

    headers = auth("alice")
    token = headers["Authorization"].split()[1]
    assert client.get("/jobs", headers=headers).status_code == 200
    with db.session() as s:
        stored = list(s.scalars(select(ApiToken.token_sha256)))
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
    assert revoke_tokens(db, "alice") == 1
    assert client.get("/jobs", headers=headers).status_code == 401


def test_token_cache_forgets_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwnas.api import _auth

    clock = [100.0]
    monkeypatch.setattr(_auth.time, "monotonic", lambda: clock[0])
    cache = _auth.TokenCache(ttl_s=10, max_entries=2)
    cache.put("hwnas_a", "alice")
    assert cache.get("hwnas_a") == "alice" and cache.get("hwnas_b") is None
    clock[0] += 10.5
    assert cache.get("hwnas_a") is None  # expired: the next request asks the database again
    cache.put("hwnas_a", "alice")
    cache.put("hwnas_b", "bob")
    cache.put("hwnas_c", "carol")  # over max_entries: the cache starts over instead of growing
    assert cache.get("hwnas_a") is None and cache.get("hwnas_c") == "carol"


def test_submit_starts_the_job_and_users_see_only_their_own(client: TestClient, launcher: RecordingLauncher,
                                                            auth: Auth, budget_ms: float) -> None:
    alice, bob = auth("alice"), auth("bob")
    job = submit(client, alice, budget_ms)
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["generations_total"] == 2
    assert "supernet" not in job["spec"]  # server paths stay on the server
    assert launcher.submitted == [("job", job["id"])]
    assert client.get(f"/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/pareto"), ("GET", "/candidates"),
                         ("GET", "/pareto.png"), ("GET", "/exports")):
        r = client.request(method, f"/jobs/{job['id']}{path}", headers=bob)
        assert r.status_code == 404, (method, path, r.text)
    assert client.get("/jobs", headers=bob).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert get_job_status(client, alice, job["id"]) == "queued"  # bob's DELETE did nothing


def get_job_status(client: TestClient, headers: dict[str, str], job_id: int) -> str:
    return client.get(f"/jobs/{job_id}", headers=headers).json()["status"]


def test_job_list_is_paginated_and_filtered(client: TestClient, auth: Auth, budget_ms: float) -> None:
    alice = auth()
    ids = [submit(client, alice, budget_ms, seed=i)["id"] for i in range(3)]
    page = client.get("/jobs", params={"limit": 2}, headers=alice).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["total"] == 3
    page = client.get("/jobs", params={"limit": 2, "offset": 2}, headers=alice).json()
    assert [j["id"] for j in page["items"]] == [ids[0]]
    assert client.delete(f"/jobs/{ids[1]}", headers=alice).json()["status"] == "cancelled"
    cancelled = client.get("/jobs", params={"status": "cancelled"}, headers=alice).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[1]] and cancelled["total"] == 1
    assert client.delete(f"/jobs/{ids[1]}", headers=alice).status_code == 200  # idempotent
    assert client.get("/jobs", params={"status": "bogus"}, headers=alice).status_code == 422
    assert client.get("/jobs", params={"limit": 10_000}, headers=alice).status_code == 422


@pytest.mark.parametrize(("change", "needle"), [
    ({"space": "no-such-space"}, "unknown space 'no-such-space'"),
    ({"space": "../../etc/passwd.json"}, "space"),
    ({"device": "no-such-device"}, "unknown device 'no-such-device'"),
    ({"latency_ms": 1e-6}, "budget"),
    ({"latency_ms": -1}, "greater than 0"),
    ({"strategy": "annealing"}, "strategy"),
    ({"population": 1}, "population"),
    ({"surprise": 1}, "surprise"),
    ({"also": [{"device": "local-cpu", "latency_ms": 10.0}]}, "nothing was measured on device 'local-cpu'"),
])
def test_bad_specs_are_422_with_a_clear_message(client: TestClient, auth: Auth, budget_ms: float,
                                                launcher: RecordingLauncher, change: dict, needle: str) -> None:
    r = client.post("/jobs", json=job_body(budget_ms, **change), headers=auth())
    assert r.status_code == 422, r.text
    assert needle in json.dumps(r.json()["detail"])
    assert launcher.submitted == []


def test_malformed_and_oversized_bodies_are_refused(client: TestClient, auth: Auth) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    assert client.post("/jobs", content=b"{not json", headers=headers).status_code == 422
    assert client.post("/jobs", content=b"[]", headers=headers).status_code == 422
    big = json.dumps({"latency_ms": 5, "space": "x" * 70_000}).encode()
    r = client.post("/jobs", content=big, headers=headers)
    assert r.status_code == 413 and "request body over" in r.json()["detail"]


def test_finished_job_serves_its_front_candidates_plot_and_an_export(client: TestClient, db: Database, home: Path,
                                                                     launcher: RecordingLauncher, auth: Auth,
                                                                     budget_ms: float, tmp_path: Path) -> None:
    alice = auth()
    job = submit(client, alice, budget_ms)
    run_here(db, home, job["id"])
    done = client.get(f"/jobs/{job['id']}", headers=alice).json()
    assert done["status"] == "finished" and done["progress"] == 1.0 and done["best_loss"] > 0
    front = client.get(f"/jobs/{job['id']}/pareto", headers=alice).json()
    cands = client.get(f"/jobs/{job['id']}/candidates", headers=alice).json()
    assert front and len(cands) == done["evaluations"]
    assert {m["candidate"]["id"] for m in front} <= {c["id"] for c in cands}
    assert all(m["candidate"]["predicted_latency_ms"] <= budget_ms for m in front)
    png = client.get(f"/jobs/{job['id']}/pareto.png", headers=alice)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"

    assert client.post(f"/jobs/{job['id']}/exports", json={"candidate_id": 10**6}, headers=alice).status_code == 404
    member = front[0]["candidate"]["id"]
    export = client.post(f"/jobs/{job['id']}/exports", json={"candidate_id": member, "format": "onnx"},
                         headers=alice)
    assert export.status_code == 202 and export.json()["status"] == "pending"
    export_id = export.json()["id"]
    assert ("export", export_id) in launcher.submitted
    assert client.get(f"/exports/{export_id}", headers=alice).status_code == 202
    assert client.get(f"/exports/{export_id}", headers=auth("bob")).status_code == 404

    run_export(db, export_id)  # stands in for the Ray runner
    r = client.get(f"/exports/{export_id}", headers=alice)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")  # verifies the manifest's checksums
    # an ONNX bundle's latency is certified with ONNX Runtime, on this CPU (the job's device runs PyTorch)
    assert bundle.certificate is not None and bundle.certificate.device == "local-cpu-ort"
    assert bundle.certificate.runtime == "onnxruntime" and bundle.certificate.revision == 1
    listed = client.get(f"/jobs/{job['id']}/exports", headers=alice).json()
    assert [(e["id"], e["status"]) for e in listed] == [(export_id, "ready")]


def test_a_failed_export_says_why(client: TestClient, db: Database, home: Path, auth: Auth, budget_ms: float,
                                  tmp_path: Path) -> None:
    from hwnas.db import Export

    alice = auth()
    job = submit(client, alice, budget_ms)
    run_here(db, home, job["id"])
    member = client.get(f"/jobs/{job['id']}/candidates", headers=alice).json()[0]["id"]
    export_id = client.post(f"/jobs/{job['id']}/exports", json={"candidate_id": member}, headers=alice).json()["id"]
    with db.session() as s:  # the bundle cannot be written: its parent is a file
        row = s.get_one(Export, export_id)
        row.path = str(tmp_path / "a-file" / "bundle")
    (tmp_path / "a-file").write_text("in the way")
    with pytest.raises(Exception, match=f"export {export_id} failed"):
        run_export(db, export_id)
    r = client.get(f"/exports/{export_id}", headers=alice)
    assert r.status_code == 409 and "failed" in r.json()["detail"]


def test_devices_list_add_and_profile(client: TestClient, operator: dict[str, str], budget_ms: float) -> None:
    headers = operator  # shared devices are the operators'
    names = [d["name"] for d in client.get("/devices", headers=headers).json()]
    assert {"local-cpu", DEVICE} <= set(names)
    pi = {"name": "rpi4", "kind": "iot", "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
          "tracker": "127.0.0.1:9190", "key": "rpi4"}
    r = client.post("/devices", json=pi, headers=headers)
    assert r.status_code == 201 and r.json()["location"] == "rpc"
    assert client.post("/devices", json=pi, headers=headers).status_code == 409
    assert client.post("/devices", json={**pi, "name": "local-cpu"}, headers=headers).status_code == 409
    bad = client.post("/devices", json={**pi, "name": "bad", "target": {"kind": "no-such-target"}}, headers=headers)
    assert bad.status_code == 422 and "target" in bad.json()["detail"]
    assert client.post("/devices", json={**pi, "name": "x y"}, headers=headers).status_code == 422
    r = client.post("/devices", json={**pi, "name": "rpi4-5p", "passes": 5}, headers=headers)
    assert r.status_code == 201
    assert client.get("/devices/rpi4-5p", headers=headers).json()["protocol"]["passes"] == 5
    r = client.post("/devices", json={**pi, "name": "rpi4-3p", "passes": 3}, headers=headers)
    assert r.status_code == 422 and "multiple of passes" in r.json()["detail"]
    node = {"name": "rack1", "kind": "cpu", "target": {"kind": "llvm"}, "runtime": "onnxruntime", "ray_node": True}
    r = client.post("/devices", json=node, headers=headers)
    assert r.status_code == 201 and (r.json()["location"], r.json()["tracker"]) == ("ray", None)
    r = client.post("/devices", json={**pi, "name": "both", "ray_node": True}, headers=headers)
    assert r.status_code == 422 and "ray_node and tracker/key exclude each other" in r.json()["detail"]
    profile = client.get(f"/devices/{DEVICE}", headers=headers).json()
    assert profile["fingerprint"]["cores"] >= 1 and profile["protocol"]["timed_runs"] >= 20
    assert [(p["kind"], p["version"], p["metrics"]["mape"]) for p in profile["predictors"]] == [("layerwise", 1, 0.05)]
    assert profile["measurements"] == {"ok": 0, "errors": 0, "cv_median": None, "cv_p90": None}
    assert client.get("/devices/nope", headers=headers).status_code == 404
    (rev,) = profile["revisions"]
    assert (rev["number"], rev["current"], rev["predictors"]) == (1, True, 1)
    assert profile["predictors"][0]["revision"] == 1 and profile["predictors"][0]["model_key"].startswith("vocab=")


def test_predict_names_its_predictor_revision_and_error_bar(client: TestClient, auth: Auth, budget_ms: float) -> None:
    headers, space = auth(), get_space("quickstart")
    ask = {"space": "quickstart", "subnet": space.largest().to_dict()}
    r = client.post(f"/devices/{DEVICE}/predict", json=ask, headers=headers)
    assert r.status_code == 200, r.text
    p = r.json()
    assert (p["device"], p["revision"], p["kind"], p["version"]) == (DEVICE, 1, "layerwise", 1)
    assert p["latency_ms"] > budget_ms and p["error_ms"] == pytest.approx(0.05 * p["latency_ms"])
    small = client.post(f"/devices/{DEVICE}/predict", json={**ask, "subnet": space.smallest().to_dict()},
                        headers=headers).json()
    assert small["latency_ms"] < p["latency_ms"]
    for body, status, fragment in (
            ({**ask, "revision": 9}, 404, f"device '{DEVICE}' has no revision 9"),
            ({**ask, "kind": "hat-mlp"}, 404, f"no hat-mlp latency predictor for {DEVICE} rev 1 on space 'quickstart'"),
            ({**ask, "subnet": {**ask["subnet"], "encoder_embed_dim": 7}}, 422, "encoder_embed_dim"),
            ({**ask, "space": "nope"}, 422, "unknown space 'nope'")):
        r = client.post(f"/devices/{DEVICE}/predict", json=body, headers=headers)
        assert r.status_code == status and fragment in r.json()["detail"], r.text
    assert client.post("/devices/local-cpu/predict", json=ask, headers=headers).status_code == 404


def test_openapi_schema_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/pareto", "/jobs/{job_id}/exports", "/exports/{export_id}",
            "/devices", "/devices/{name}", "/healthz"} <= set(paths)
    assert "bearer" in json.dumps(client.get("/openapi.json").json()["components"]["securitySchemes"]).lower()


def test_job_ids_survive_in_the_database(db: Database, client: TestClient, auth: Auth, budget_ms: float) -> None:
    job = submit(client, auth(), budget_ms)
    assert get_job(db, job["id"]).owner == "alice"
