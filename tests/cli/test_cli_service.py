"""`hwnas users / tokens / serve` as an admin runs them: one-line errors, tokens that work against the API."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cli.test_cli import assert_clean_error, hwnas


def test_users_and_tokens(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert hwnas("users", "create", "alice", home=home).returncode == 0
    assert_clean_error(hwnas("users", "create", "alice", home=home), "user 'alice' exists")
    assert_clean_error(hwnas("users", "create", "no spaces", home=home), "user name 'no spaces'")
    assert_clean_error(hwnas("tokens", "create", "bob", home=home), "no user 'bob'")
    first = hwnas("tokens", "create", "alice", "--label", "laptop", home=home)
    second = hwnas("tokens", "create", "alice", home=home)
    assert first.returncode == second.returncode == 0
    tokens = {first.stdout.strip(), second.stdout.strip()}
    assert len(tokens) == 2 and all(t.startswith("hwnas_") and len(t) > 40 for t in tokens)
    listed = hwnas("users", "list", home=home)
    assert "alice" in listed.stdout and " 2 " in listed.stdout
    listed = hwnas("tokens", "list", "alice", home=home).stdout
    ids = re.findall(r"│ (\d+)\s+│ alice", listed)
    assert len(ids) == 2 and "laptop" in listed and listed.count(" live ") == 2, listed
    one = hwnas("tokens", "revoke", "--id", ids[-1], home=home)  # the oldest: the laptop's
    assert one.returncode == 0 and f"revoked token {ids[-1]} of 'alice'" in one.stdout
    assert " 1 " in hwnas("users", "list", home=home).stdout
    assert_clean_error(hwnas("tokens", "revoke", "--id", "999", home=home), "no token 999")
    assert_clean_error(hwnas("tokens", "revoke", "alice", "--id", ids[0], home=home), "not both")
    revoked = hwnas("tokens", "revoke", "alice", home=home)
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout
    assert "operator" in hwnas("users", "role", "alice", "operator", home=home).stdout
    assert_clean_error(hwnas("users", "role", "alice", "admin", home=home), "role 'admin' is not one of")
    assert_clean_error(hwnas("users", "create", "a.b", home=home), "user name 'a.b'")


def test_serve_refuses_a_bad_database_or_cluster_in_one_line(tmp_path: Path) -> None:
    assert_clean_error(hwnas("serve", "--db", "mysql+nodriver://x/y", home=tmp_path), "database URL")
    assert_clean_error(hwnas("serve", "--db", "postgresql://nobody@127.0.0.1:1/none", home=tmp_path), "unusable")
    assert_clean_error(hwnas("serve", "--ray-address", "127.0.0.1:1", home=tmp_path),
                       "cannot reach the Ray cluster at '127.0.0.1:1'")


def test_serve_answers_with_the_tokens_the_cli_made(tmp_path: Path) -> None:
    """The real `hwnas serve` process (it starts its own local Ray): health, a token from the CLI, 401 without."""
    home = tmp_path / "home"
    hwnas("users", "create", "alice", home=home)
    token = hwnas("tokens", "create", "alice", home=home).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HWNAS_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "hwnas.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        assert httpx.get(f"{base}/healthz", timeout=5).json()["database"] == "sqlite"
        assert httpx.get(f"{base}/jobs", timeout=5).status_code == 401
        r = httpx.get(f"{base}/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 200 and r.json()["total"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
