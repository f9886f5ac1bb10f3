"""Load benchmark of the service: many clients polling job status at once, SQLite vs PostgreSQL, one run.

    python bench/api_load.py                 # 200 concurrent clients x 10 rounds on each backend
    python bench/api_load.py --concurrency 200 --rounds 10 --backends sqlite postgresql

Starts `hwnas serve` (one uvicorn process, as users run it) on each backend, creates a user, a token and
20 job rows, then fires `--concurrency` simultaneous `GET /jobs/{id}` requests (each authenticated: a
token-hash lookup plus the job row), `--rounds` times. Reports per-request latency p50/p90/p99/max,
errors and throughput; writes bench/results/api-load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

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
    from hwnas.db import Database
    from hwnas.db._models import SearchJob
    from hwnas.search import SearchSpec

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


async def _round(client: httpx.AsyncClient, headers: dict[str, str], ids: list[int], n: int
                 ) -> tuple[list[float], int]:
    async def one(i: int) -> tuple[float, bool]:
        t0 = time.perf_counter()
        try:
            r = await client.get(f"/jobs/{ids[i % len(ids)]}", headers=headers)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        return (time.perf_counter() - t0) * 1e3, ok

    out = await asyncio.gather(*(one(i) for i in range(n)))
    return [ms for ms, _ in out], sum(not ok for _, ok in out)


async def _load(base: str, token: str, ids: list[int], concurrency: int, rounds: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await _round(client, headers, ids, concurrency)  # warm-up: connections opened, caches filled
        latencies, errors = [], 0
        t0 = time.perf_counter()
        for _ in range(rounds):
            ms, err = await _round(client, headers, ids, concurrency)
            latencies += ms
            errors += err
        wall_s = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"requests": len(lat), "errors": errors, "wall_s": round(wall_s, 2),
            "requests_per_s": round(len(lat) / wall_s, 1),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)},
            "max_ms": round(float(lat.max()), 1)}


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


def run_backend(backend: str, concurrency: int, rounds: int) -> dict[str, Any]:
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
                return {"backend": backend, **asyncio.run(_load(base, token, ids, concurrency, rounds))}
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
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    args = ap.parse_args()
    runs = []
    for backend in args.backends:
        print(f"{backend}: {args.concurrency} concurrent GET /jobs/{{id}} x {args.rounds} rounds ...", flush=True)
        runs.append(run_backend(backend, args.concurrency, args.rounds))
        print(json.dumps(runs[-1]), flush=True)
    out = {"benchmark": "api-load", "concurrency": args.concurrency, "rounds": args.rounds, "runs": runs,
           "server": "hwnas serve (one uvicorn process, sync handlers in its threadpool)",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python bench/api_load.py " + " ".join(sys.argv[1:])}
    path = RESULTS / "api-load.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2) + "\n"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
