"""Roles and ownership: operators register shared devices and see their trackers and keys; users see the shared
devices and their own private ones (named USER.NAME), and nobody else's; tokens expire, one is revoked alone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from hwnas.db import Database, create_token, list_tokens, revoke_token
from tests.api.conftest import DEVICE

Auth = Callable[..., dict[str, str]]
PI = {"kind": "iot", "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, "tracker": "10.0.0.5:9190",
      "key": "rpi4"}


def names(client: TestClient, headers: dict[str, str]) -> dict[str, dict]:
    return {d["name"]: d for d in client.get("/devices", headers=headers).json()}


def test_shared_and_private_devices(client: TestClient, auth: Auth, operator: dict[str, str],
                                    budget_ms: float) -> None:
    alice, bob = auth("alice"), auth("bob")
    assert client.post("/devices", json={**PI, "name": "rpi4"}, headers=operator).status_code == 201
    # a user cannot take a shared name: their devices are named after them
    r = client.post("/devices", json={**PI, "name": "rpi5"}, headers=alice)
    assert r.status_code == 422 and "'alice.NAME'" in r.json()["detail"]
    r = client.post("/devices", json={**PI, "name": "bob.pi"}, headers=alice)
    assert r.status_code == 422 and "'alice.NAME'" in r.json()["detail"]
    r = client.post("/devices", json={**PI, "name": "alice.pi"}, headers=alice)
    assert r.status_code == 201 and r.json()["owner"] == "alice" and r.json()["rpc_key"] == "rpi4"

    # the shared board's tracker and key: operators only
    shared = names(client, alice)["rpi4"]
    assert shared["owner"] is None and (shared["tracker"], shared["rpc_key"]) == (None, None)
    assert client.get("/devices/rpi4", headers=alice).json()["tracker"] is None
    assert names(client, operator)["rpi4"]["tracker"] == "10.0.0.5:9190"
    assert names(client, operator)["alice.pi"]["owner"] == "alice"  # operators see every device

    # a private device does not exist for anyone else, its name not even in a "known" list
    assert "alice.pi" not in names(client, bob)
    r = client.get("/devices/alice.pi", headers=bob)
    assert r.status_code == 404 and "alice.pi" not in r.json()["detail"].split("known:")[1]
    assert client.post("/devices/alice.pi/predict", json={"subnet": {}}, headers=bob).status_code == 404
    body = {"space": "quickstart", "device": "alice.pi", "latency_ms": budget_ms, "verify": False}
    r = client.post("/jobs", json=body, headers=bob)
    assert r.status_code == 422 and "unknown device 'alice.pi'" in r.json()["detail"]
    r = client.post("/jobs", json={**body, "device": DEVICE, "also": [{"device": "alice.pi", "latency_ms": 5}]},
                    headers=bob)
    assert r.status_code == 422 and "unknown device 'alice.pi'" in r.json()["detail"]
    assert client.get("/devices/alice.pi", headers=alice).status_code == 200

    # compiler options: operators only
    opts = {"kind": "llvm", "cl-opt": ["-unroll-threshold:int=100"]}
    r = client.post("/devices", json={**PI, "name": "alice.fast", "target": opts}, headers=alice)
    assert r.status_code == 422 and "only operators" in r.json()["detail"]
    r = client.post("/devices", json={**PI, "name": "rpi4-tuned", "target": opts}, headers=operator)
    assert r.status_code == 201

    # removing follows the same rules
    assert client.delete("/devices/rpi4", headers=alice).status_code == 403
    assert client.delete("/devices/alice.pi", headers=bob).status_code == 404
    assert client.delete("/devices/alice.pi", headers=alice).status_code == 204
    assert "alice.pi" not in names(client, operator)
    assert client.delete("/devices/rpi4", headers=operator).status_code == 204
    assert client.delete("/devices/local-cpu", headers=operator).status_code == 409  # built in


def test_tokens_expire_and_one_is_revoked_alone(client: TestClient, db: Database, auth: Auth) -> None:
    first = auth("alice")
    assert client.get("/jobs", headers=first).status_code == 200
    second = {"Authorization": f"Bearer {create_token(db, 'alice', label='ci')}"}
    (newest, older) = list_tokens(db, "alice")
    assert newest.label == "ci" and newest.expires_at is not None and newest.live()
    assert dt.timedelta(days=89) < newest.expires_at - newest.created_at <= dt.timedelta(days=90)
    revoke_token(db, older.id)  # one token: the other goes on working
    assert client.get("/jobs", headers=first).status_code == 401
    assert client.get("/jobs", headers=second).status_code == 200
    with pytest.raises(Exception, match="no token"):
        revoke_token(db, newest.id, user="bob")  # another's token is no token

    short = create_token(db, "alice", ttl=dt.timedelta(seconds=1))
    with db.session() as s:  # let it expire without waiting: its expiry moved into the past
        from hwnas.db import ApiToken, hash_token

        s.query(ApiToken).filter(ApiToken.token_sha256 == hash_token(short)).update(
            {"expires_at": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)})
    r = client.get("/jobs", headers={"Authorization": f"Bearer {short}"})
    assert r.status_code == 401 and "token expired at" in r.json()["detail"]


def test_the_private_device_quota_and_tracker_hosts(strict: TestClient, auth: Auth, operator: dict[str, str]) -> None:
    alice = auth("alice")
    r = strict.post("/devices", json={**PI, "name": "alice.in", "tracker": "169.254.169.254:80"}, headers=alice)
    assert r.status_code == 403 and "HWNAS_USER_TRACKER_HOSTS: 10.0.0.5" in r.json()["detail"]
    r = strict.post("/devices", json={**PI, "name": "far", "tracker": "192.168.1.9:9190"}, headers=operator)
    assert r.status_code == 201  # operators name any tracker
    assert strict.post("/devices", json={**PI, "name": "alice.a"}, headers=alice).status_code == 201
    r = strict.post("/devices", json={**PI, "name": "alice.b"}, headers=alice)
    assert r.status_code == 429 and "HWNAS_QUOTA_DEVICES" in r.json()["detail"]
    assert strict.delete("/devices/alice.a", headers=alice).status_code == 204
    assert strict.post("/devices", json={**PI, "name": "alice.b"}, headers=alice).status_code == 201


def test_users_list_and_revoke_their_own_tokens(client: TestClient, db: Database, auth: Auth) -> None:
    alice, bob = auth("alice"), auth("bob")
    laptop = {"Authorization": f"Bearer {create_token(db, 'alice', label='laptop')}"}
    mine = client.get("/tokens", headers=alice).json()
    assert [t["label"] for t in mine] == ["laptop", None] and all(t["live"] and t["expires_at"] for t in mine)
    bobs = client.get("/tokens", headers=bob).json()
    assert client.delete(f"/tokens/{bobs[0]['id']}", headers=alice).status_code == 404  # not hers
    r = client.delete(f"/tokens/{mine[0]['id']}", headers=alice)
    assert r.status_code == 200 and r.json()["revoked_at"] and not r.json()["live"]
    assert client.get("/jobs", headers=laptop).status_code == 401
    assert client.get("/jobs", headers=alice).status_code == 200
    assert client.delete("/tokens", headers=alice).json() == {"revoked": 1}  # the rest: this one too
    assert client.get("/jobs", headers=alice).status_code == 401
    assert client.get("/jobs", headers=bob).status_code == 200
