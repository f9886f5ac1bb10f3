"""Load benchmark of the service: many clients polling job status at once, SQLite vs PostgreSQL, one run.

    python bench/api_load.py                 # 200 concurrent connections for 15 s on each backend
    python bench/api_load.py --concurrency 200 --duration-s 15 --backends sqlite postgresql

Starts `hwnas serve` (one uvicorn process, as users run it) on each backend, creates a user, a token and
20 job rows, then keeps `--concurrency` connections polling `GET /jobs/{id}` (authenticated) with wrk
(Debian's `wrk`: the load generator must not eat the server's CPU). Reports latency p50/p75/p90/p99,
errors and throughput; writes bench/results/api-load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from hwnas.io import atomic_write

RESULTS = Path(__file__).parent / "results"
PG_ADMIN = os.environ.get("HWNAS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed(db_url: str, jobs: int) -> tuple[str, list[int]]:
    """A user, a token and `jobs` queued job rows (a real spec shape; status polling reads only the row)."""
    from hwnas.api import create_token, create_user
    from hwnas.db import Database, SearchJob
    from hwnas.jobs import SearchSpec

    spec = SearchSpec(space="quickstart", device="local-cpu", latency_ms=10.0, supernet="/nonexistent").to_dict()
    with Database(db_url) as db:
        create_user(db, "bench")
        token = create_token(db, "bench")
        with db.session() as s:
            rows = [SearchJob(owner="bench", space="quickstart", device="local-cpu", strategy="evo", spec=spec,
                              status="queued", generations_total=30) for _ in range(jobs)]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
    return token, ids


def _wrk(base: str, token: str, job_id: int, concurrency: int, duration_s: int) -> dict[str, Any]:
    """`wrk` (C, one epoll loop per thread) as the load: a Python client on the same 2 cores would be the
    bottleneck, not the server."""
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", "10s", "--latency",
                          "-H", f"Authorization: Bearer {token}", f"{base}/jobs/{job_id}"],
                         capture_output=True, text=True, timeout=duration_s + 60, check=True).stdout
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", out, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)s", out)
    if not (pct and total):
        raise SystemExit(f"error: cannot read wrk's output:\n{out}")
    return {"requests": int(total.group(1)), "wall_s": float(total.group(2)),
            "requests_per_s": round(int(total.group(1)) / float(total.group(2)), 1),
            **{f"p{q}_ms": _ms(v) for q, v in pct.items()},
            "errors_socket": sum(int(x) for x in errors.groups()) if errors else 0,
            "errors_http": int(non_2xx.group(1)) if non_2xx else 0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit], 2)


def _backend_url(backend: str, tmp: Path) -> tuple[str, Any]:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'hwnas.db'}", None
    from sqlalchemy import create_engine, text

    name = f"hwnas_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", drop


def run_backend(backend: str, concurrency: int, duration_s: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        url, cleanup = _backend_url(backend, tmp)
        try:
            token, ids = _seed(url, jobs=20)
            port = _free_port()
            env = {**os.environ, "HWNAS_HOME": str(tmp / "home"), "HWNAS_DB_URL": url}
            hwnas = str(Path(sys.executable).parent / "hwnas")
            server = subprocess.Popen([hwnas, "serve", "--port", str(port), "--log-level", "warning"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.3)
                else:
                    raise SystemExit(f"error: hwnas serve on {backend} did not come up")
                httpx.get(f"{base}/jobs/{ids[0]}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
                return {"backend": backend, **_wrk(base, token, ids[0], concurrency, duration_s)}
            finally:
                server.terminate()
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
        finally:
            if cleanup:
                cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--duration-s", type=int, default=15)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("error: bench/api_load.py needs wrk (apt-get install wrk)")
    runs = []
    for backend in args.backends:
        print(f"{backend}: {args.concurrency} concurrent GET /jobs/{{id}} for {args.duration_s} s ...", flush=True)
        runs.append(run_backend(backend, args.concurrency, args.duration_s))
        print(json.dumps(runs[-1]), flush=True)
    out = {"benchmark": "api-load", "concurrency": args.concurrency, "duration_s": args.duration_s, "runs": runs,
           "server": "hwnas serve (one uvicorn process, sync handlers in its threadpool); load: wrk -t2",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python bench/api_load.py " + " ".join(sys.argv[1:])}
    path = RESULTS / "api-load.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2) + "\n"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
