"""The FastAPI application: jobs, devices, exports, health; errors mapped to 4xx with one clear message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as FPath
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import hwnas
from hwnas.api import _service as svc
from hwnas.api._auth import AuthThrottle, ThrottledError, TokenCache, client_of, user_for_token
from hwnas.api._dashboard import router as dashboard
from hwnas.api._schemas import (
    CandidateOut,
    DeviceCreate,
    DeviceOut,
    DeviceProfileOut,
    ErrorOut,
    ExportCreate,
    ExportOut,
    Health,
    JobCreate,
    JobOut,
    JobPage,
    JobStatus,
    ParetoMemberOut,
    PredictIn,
    PredictionOut,
    Revoked,
    TokenOut,
)
from hwnas.db import Candidate, Database, Export, list_tokens, revoke_token, revoke_tokens
from hwnas.exceptions import (
    AuthError,
    DuplicateError,
    HwnasError,
    InvalidValueError,
    MeasurementError,
    NotFoundError,
    StorageError,
)
from hwnas.jobs import (
    JobBusyError,
    Launcher,
    RayLauncher,
    cancel_job,
    candidates,
    certificate_device,
    count_jobs,
    export_dir,
    front,
    get_job,
    list_jobs,
    reconcile,
    retrained_model,
)
from hwnas.latency import DeviceProfile, DeviceRegistry, measure_config
from hwnas.settings import Settings

log = logging.getLogger("hwnas.api")

# HwnasError subclasses -> HTTP status (the first that matches); any other HwnasError is the input's fault: 422
_STATUS: tuple[tuple[type[HwnasError], int], ...] = (
    (AuthError, 401), (ThrottledError, 429), (NotFoundError, 404), (DuplicateError, 409), (JobBusyError, 409),
    (svc.QuotaError, 429), (svc.ForbiddenError, 403), (InvalidValueError, 422), (StorageError, 503))
UNAVAILABLE = "database unavailable; try again later"  # its URL, host and user stay in the server's log


def _status_of(e: HwnasError) -> int:
    return next((code for cls, code in _STATUS if isinstance(e, cls)), 422)


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (413), declared or streamed.

    The body is read here, up to the limit, before the app sees it: a streamed (chunked) body that crosses the
    limit is then a 413 like a declared one (refused inside the app's body parsing it became a 400)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS") and declared is None:
            return await self.app(scope, receive, send)
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away: let the app see it
                chunks.append(msg)
                break
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                return await self._refuse(send)
            chunks.append(msg)
            if not msg.get("more_body"):
                break
        body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
        if _non_finite(body):
            return await JSONResponse({"detail": "body: NaN, Infinity and numbers beyond the float range are not "
                                                 "accepted"}, status_code=422)({"type": "http"}, _no_receive, send)
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        replay += [m for m in chunks if m["type"] != "http.request"]

        async def buffered() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, buffered, send)

    async def _refuse(self, send: Send) -> None:
        await JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)(
            {"type": "http"}, _no_receive, send)


class _NonFinite(Exception):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise _NonFinite
    return value


def _refuse_constant(text: str) -> Any:  # NaN, Infinity, -Infinity: Python's json reads them, JSON has none
    raise _NonFinite


def _non_finite(body: bytes) -> bool:
    """Whether a JSON body holds a number no JSON renderer can give back (anywhere, unknown fields included)."""
    if not body:
        return False
    try:
        json.loads(body, parse_float=_finite, parse_constant=_refuse_constant)
    except _NonFinite:
        return True
    except ValueError:  # not JSON (or not UTF-8): the route's own parsing says so
        return False
    return False


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(*, settings: Settings | None = None, launcher: Launcher | None = None) -> FastAPI:
    """The service. `launcher` defaults to a `RayLauncher` on `settings.ray_address` (tests pass their own)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await run_in_threadpool(Database, settings.database_url())
        app.state.db = db
        # Not in a worker thread: a local Ray's processes are killed when the thread that started them exits
        # (PR_SET_PDEATHSIG follows threads), so Ray starts on the event loop's thread, once.
        app.state.launcher = launcher or RayLauncher(db.url, address=settings.ray_address)
        loop = asyncio.create_task(_reconcile_forever(app, settings))
        try:
            yield
        finally:
            loop.cancel()
            app.state.launcher.close()
            db.close()

    app = FastAPI(title="hwnas", version=hwnas.__version__, lifespan=lifespan, responses=_BAD_INPUT,
                  description="Hardware-aware neural architecture search (HAT) as a service: submit latency-"
                              "constrained search jobs, query device profiles, export discovered SubTransformers.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.state.settings = settings
    app.state.tokens = TokenCache(settings.token_cache_s)
    app.state.auth_throttle = AuthThrottle(settings.auth_failures_per_minute)

    @app.exception_handler(HwnasError)
    async def _hwnas_error(request: Request, e: HwnasError) -> JSONResponse:
        code = _status_of(e)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if code == 503:
            log.warning("%s %s: %s", request.method, request.url.path, detail)
            detail = UNAVAILABLE
        return JSONResponse({"detail": detail}, status_code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # where and why only: the rejected value is the client's own, and echoing it broke on NaN/Infinity
        errors = [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "invalid")),
                   "type": str(err.get("type", "value_error"))} for err in e.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return JSONResponse({"detail": f"{where}: {first['msg']}{more}", "errors": errors}, status_code=422)

    _routes(app)
    app.include_router(dashboard)
    return app


async def _reconcile_forever(app: FastAPI, settings: Settings) -> None:
    """Resume orphaned jobs at start-up, then every `reconcile_every_s` (a failure is logged, never fatal)."""
    while True:
        try:
            for line in await run_in_threadpool(reconcile, app.state.db, app.state.launcher,
                                                max_attempts=settings.max_attempts):
                log.info("reconcile: %s", line)
        except Exception:  # the loop must outlive a database hiccup
            log.exception("reconcile failed")
        await asyncio.sleep(settings.reconcile_every_s)


_bearer = HTTPBearer(auto_error=False, description="A token from `hwnas tokens create USER`")


async def db_of(request: Request) -> Database:  # async: no threadpool hop for a lookup
    return request.app.state.db


async def current_user(request: Request,
                       cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    if cred is None:
        raise AuthError("missing bearer token (Authorization: Bearer <token>)")
    return await user_for_token(request.app.state.db, request.app.state.tokens, cred.credentials,
                                throttle=request.app.state.auth_throttle, client=client_of(request))


User = Annotated[str, Depends(current_user)]
DB = Annotated[Database, Depends(db_of)]
PAGE_LIMIT_MAX = 200
Limit = Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
JobId = Annotated[int, FPath(ge=1, le=2**31 - 1)]  # database integers: a larger id can exist nowhere

def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Documented on every route (FastAPI then leaves out its own 422 schema: ours is one line plus the fields)
_BAD_INPUT: dict[int | str, dict[str, Any]] = {
    400: _error("Unparsable body"), 413: _error("Body too large"), 422: _error("Invalid input (detail says which)"),
    503: _error("Database unavailable")}
_UNAUTH: dict[int | str, dict[str, Any]] = {401: _error("Missing or invalid token"),
                                            429: _error("A quota, or too many failed logins from this client")}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {**_UNAUTH, 404: _error("Not found (or not yours)")}


def _routes(app: FastAPI) -> None:

    @app.get("/healthz", response_model=Health, tags=["service"])
    def health(db: DB) -> Health:
        try:
            with db.session() as s:
                s.execute(text("SELECT 1"))
        except StorageError as e:  # unauthenticated: the reason goes to the log, never to the caller
            log.warning("healthz: %s", e)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE) from e
        return Health(status="ok", database=db.engine.dialect.name, version=hwnas.__version__)

    @app.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"],
              responses={**_UNAUTH, 422: _error("Invalid spec (unknown space or device, a budget no subnet meets)")})
    def submit_job(body: JobCreate, user: User, db: DB) -> JobOut:
        """Validate a search spec, store it as a queued job and start it on the cluster."""
        job_id = svc.create_owned_job(db, user, body, app.state.settings)
        try:
            app.state.launcher.submit("job", job_id)
        except Exception as e:  # the job is stored: the reconciler starts it once the cluster is back
            log.warning("job %d: not started yet (%s); the reconciler will retry", job_id, e)
        return JobOut.of(get_job(db, job_id))

    @app.get("/jobs", response_model=JobPage, tags=["jobs"], responses=_UNAUTH)
    def jobs(user: User, db: DB, status_: Annotated[JobStatus | None, Query(alias="status")] = None,
             limit: Limit = 50, offset: Offset = 0) -> JobPage:
        """Your jobs, newest first."""
        items = list_jobs(db, status=status_, owner=user, limit=limit, offset=offset)
        return JobPage(items=[JobOut.of(j) for j in items], total=count_jobs(db, owner=user, status=status_),
                       limit=limit, offset=offset)

    @app.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_NOT_FOUND)
    def job(job_id: JobId, user: User, db: DB) -> JobOut:
        """Status, progress, generation and best loss so far; the retrained model once the job retrained one."""
        return JobOut.of(svc.owned_job(db, user, job_id), retrained_model(db, job_id))

    @app.delete("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_NOT_FOUND)
    def cancel(job_id: JobId, user: User, db: DB) -> JobOut:
        """Cancel a job; a running search stops at its next candidate."""
        svc.owned_job(db, user, job_id)
        return JobOut.of(cancel_job(db, job_id))

    @app.get("/jobs/{job_id}/pareto", response_model=list[ParetoMemberOut], tags=["jobs"], responses=_NOT_FOUND)
    def pareto(job_id: JobId, user: User, db: DB) -> list[ParetoMemberOut]:
        """The verified Pareto front (empty until the job has finished its search)."""
        svc.owned_job(db, user, job_id)
        return [ParetoMemberOut.of(m) for m in front(db, job_id)]

    @app.get("/jobs/{job_id}/candidates", response_model=list[CandidateOut], tags=["jobs"], responses=_NOT_FOUND)
    def job_candidates(job_id: JobId, user: User, db: DB, limit: Limit = 100, offset: Offset = 0) -> list[CandidateOut]:
        """Every evaluated candidate, in evaluation order."""
        svc.owned_job(db, user, job_id)
        return [CandidateOut.of(c) for c in candidates(db, job_id, limit=limit, offset=offset)]

    @app.get("/jobs/{job_id}/pareto.png", tags=["jobs"], responses={**_NOT_FOUND, 200: {"content": {"image/png": {}}}},
             response_class=Response)
    def pareto_plot(job_id: JobId, user: User, db: DB) -> Response:
        """The Pareto plot: valid loss against latency, front members measured."""
        return Response(svc.pareto_png(db, svc.owned_job(db, user, job_id)), media_type="image/png")

    @app.post("/jobs/{job_id}/exports", response_model=ExportOut, status_code=202, tags=["exports"],
              responses=_NOT_FOUND)
    def export(job_id: JobId, body: ExportCreate, user: User, db: DB) -> ExportOut:
        """Export a candidate as a standalone bundle (written on the cluster; poll GET /exports/{id}), its latency
        certified with the runtime of its format (ONNX by ONNX Runtime, TorchScript by PyTorch, TVM by TVM)."""
        job = svc.owned_job(db, user, job_id)
        certificate_device(db, job.spec.device, body.format)  # no device to certify it on: 422 now, not later
        svc.check_export_quota(db, job_id, app.state.settings)
        with db.session() as s:
            if s.scalar(select(Candidate.id).where(Candidate.job_id == job_id,
                                                   Candidate.id == body.candidate_id)) is None:
                raise NotFoundError(f"search job {job_id} has no candidate {body.candidate_id}")
            row = Export(job_id=job_id, candidate_id=body.candidate_id, format=body.format, path="", status="pending")
            s.add(row)
            s.flush()
            row.path = str(export_dir(row.id, app.state.settings))
            out = svc.export_out(row)
        try:
            app.state.launcher.submit("export", out.id)
        except Exception as e:
            log.warning("export %d: not started yet (%s); the reconciler will retry", out.id, e)
        return out

    @app.get("/jobs/{job_id}/exports", response_model=list[ExportOut], tags=["exports"], responses=_NOT_FOUND)
    def exports(job_id: JobId, user: User, db: DB) -> list[ExportOut]:
        svc.owned_job(db, user, job_id)
        return svc.job_exports(db, job_id)

    @app.get("/exports/{export_id}", tags=["exports"], response_model=None,
             responses={**_NOT_FOUND, 200: {"content": {"application/zip": {}}, "description": "The bundle"},
                        202: {"model": ExportOut, "description": "Still being written"},
                        409: _error("The export failed (detail says why)")})
    def download(export_id: JobId, user: User, db: DB) -> Response:
        """The bundle as a .zip once ready; 202 with its status while it is written."""
        out, zip_path = svc.owned_export(db, user, export_id)
        if out.status == "pending":
            return JSONResponse(out.model_dump(mode="json"), status_code=202)
        if out.status == "failed" or not zip_path.exists():
            raise DuplicateError(f"export {export_id} failed: {out.error or 'its bundle is gone from the server'}")
        return FileResponse(zip_path, media_type="application/zip",
                            filename=f"hwnas-job{out.job_id}-candidate{out.candidate_id}-{out.format}.zip")

    @app.get("/tokens", response_model=list[TokenOut], tags=["tokens"], responses=_UNAUTH)
    def tokens(user: User, db: DB) -> list[TokenOut]:
        """Your tokens, newest first: labels, expiry, last use, whether revoked (never the tokens themselves)."""
        return [TokenOut.of(t) for t in list_tokens(db, user)]

    @app.delete("/tokens/{token_id}", response_model=TokenOut, tags=["tokens"], responses=_NOT_FOUND)
    def revoke(token_id: JobId, user: User, db: DB) -> TokenOut:
        """Revoke one of your tokens (the one you call with too, if you name it)."""
        out = TokenOut.of(revoke_token(db, token_id, user=user))
        app.state.tokens.clear()  # this process forgets it at once; others within token_cache_s
        return out

    @app.delete("/tokens", response_model=Revoked, tags=["tokens"], responses=_UNAUTH)
    def revoke_all(user: User, db: DB) -> Revoked:
        """Revoke every token of yours, this one included (a leaked token's holder is locked out)."""
        n = revoke_tokens(db, user)
        app.state.tokens.clear()
        return Revoked(revoked=n)

    @app.get("/devices", response_model=list[DeviceOut], tags=["devices"], responses=_UNAUTH)
    def devices(user: User, db: DB) -> list[DeviceOut]:
        """The devices you can use: the shared ones (trackers and keys shown to operators only) and your own."""
        viewer = svc.Viewer.of(db, user)
        return [svc.device_out(d, viewer) for d in DeviceRegistry(db).list(visible_to=viewer.sees)]

    @app.post("/devices", response_model=DeviceOut, status_code=201, tags=["devices"],
              responses={**_UNAUTH, 409: _error("Name taken")})
    def add_device(body: DeviceCreate, user: User, db: DB) -> DeviceOut:
        """Register a device; remote ones join a TVM RPC tracker with `hwnas devices serve`. An operator's device
        is shared; a user's is private, named `USER.NAME`, within the user's quota."""
        if body.ray_node and (body.tracker or body.key):
            raise MeasurementError(f"device '{body.name}': ray_node and tracker/key exclude each other (a device is "
                                   f"measured on its Ray node or through an RPC tracker)")
        profile = DeviceProfile(name=body.name, kind=body.kind, target=body.target, runtime=body.runtime,
                                location="rpc" if body.tracker or body.key else "ray" if body.ray_node else "local",
                                tracker=body.tracker,
                                rpc_key=body.key, protocol=measure_config(timed_runs=body.timed_runs,
                                                                          passes=body.passes))
        viewer = svc.Viewer.of(db, user)
        return svc.device_out(svc.add_device(db, viewer, profile, app.state.settings), viewer)

    @app.delete("/devices/{name}", status_code=204, tags=["devices"],
                responses={**_NOT_FOUND, 403: _error("A shared device: only operators remove it")})
    def remove_device(name: str, user: User, db: DB) -> Response:
        """Remove a device with its measurements and predictors: your own, or any as an operator."""
        svc.remove_device(db, svc.Viewer.of(db, user), name)
        return Response(status_code=204)

    @app.get("/devices/{name}", response_model=DeviceProfileOut, tags=["devices"], responses=_NOT_FOUND)
    def device(name: str, user: User, db: DB) -> DeviceProfileOut:
        """Fingerprint, protocol, revisions, measurement count and noise, predictors with their provenance and
        held-out accuracy."""
        return svc.device_profile(db, name, svc.Viewer.of(db, user))

    @app.post("/devices/{name}/predict", response_model=PredictionOut, tags=["devices"],
              responses={**_NOT_FOUND, 422: _error("Subnet outside the space, or no supernet for it")})
    def predict(name: str, body: PredictIn, user: User, db: DB) -> PredictionOut:
        """A subnet's predicted latency on the device (its current revision, unless asked), with the predictor's
        version, the revision and the predictor's held-out error bar; no predictor of exactly that provenance
        is a 404 listing those stored."""
        return svc.predict(db, name, body, svc.Viewer.of(db, user))

