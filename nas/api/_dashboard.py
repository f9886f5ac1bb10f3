"""The web dashboard: server-rendered pages over the same service functions as the API.

Read-only apart from login/logout. The login form stores the user's API token in an HttpOnly,
SameSite=Strict cookie that only these /ui pages read: the JSON API keeps taking bearer tokens
only, so the cookie gives a cross-site page nothing to forge.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from hwnas.api import _service as svc
from hwnas.api._auth import ThrottledError, client_of, throttled_authenticate, user_for_token
from hwnas.api._schemas import JobOut
from hwnas.db import Database, authenticate, create_token, revoke_session
from hwnas.exceptions import AuthError, HwnasError, NotFoundError
from hwnas.jobs import ACTIVE, JOB_STATUSES, candidates, count_candidates, count_jobs, front, list_jobs
from hwnas.latency import DeviceRegistry

router = APIRouter(include_in_schema=False)

COOKIE = "hwnas_token"
JOBS_PER_PAGE = 20
CANDIDATES_PER_PAGE = 50
REFRESH_S = 10  # pages showing an active job reload themselves this often
_HERE = Path(__file__).parent
_STATIC = _HERE / "static"
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin"}


# ------------------------------------------------------------------------------------------------- templates

def _num(v: Any, fmt: str = ".3f") -> str:
    """A number for a table cell; '—' for missing or not-a-number."""
    if v is None or isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, fmt)


def _pct(v: Any, digits: int = 1) -> str:
    s = _num(v * 100 if isinstance(v, int | float) and not isinstance(v, bool) else None, f".{digits}f")
    return s if s == "—" else s + "%"


def _when(v: dt.datetime | None) -> str:
    return "—" if v is None else v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _as_json(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


_env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.filters.update(num=_num, pct=_pct, when=_when, as_json=_as_json)
templates = Jinja2Templates(env=_env)


def _page(request: Request, name: str, user: str | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("refresh", None)
    context.setdefault("active_nav", None)
    return templates.TemplateResponse(request, name, {"user": user, **context}, status_code=status_code,
                                      headers=_HEADERS)


def _not_found(request: Request, user: str, what: str) -> HTMLResponse:
    return _page(request, "not_found.html", user, status_code=404, title="Not found", what=what)


# ------------------------------------------------------------------------------------------------- auth

def _db(request: Request) -> Database:
    return request.app.state.db


def _to_login() -> HTTPException:
    # A 303 with a Location: browsers follow it to the login form (the default handler keeps the header)
    return HTTPException(303, "log in first", headers={"Location": "/ui/login", **_HEADERS})


async def cookie_user(request: Request) -> str:
    """The user whose token the dashboard cookie holds; no or a bad cookie -> redirect to the login form."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 512:
        raise _to_login()
    try:
        return await user_for_token(_db(request), request.app.state.tokens, token,
                                    throttle=request.app.state.auth_throttle, client=client_of(request))
    except (AuthError, ThrottledError):
        raise _to_login() from None


UIUser = Annotated[str, Depends(cookie_user)]
DB = Annotated[Database, Depends(_db)]


@router.get("/ui/login")
def login_form(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        try:
            authenticate(_db(request), token)
            return RedirectResponse("/ui/jobs", status_code=303)
        except AuthError:
            pass
    return _page(request, "login.html", None, title="Log in", error=None)


def _same_origin(request: Request) -> bool:
    """Whether a form was posted from this site: browsers say so in Sec-Fetch-Site, older ones in Origin."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


@router.post("/ui/login")
def login(request: Request, token: Annotated[str, Form(max_length=512)] = "") -> Response:
    """The user's API token opens a dashboard session: a token of its own (session, `session_ttl_h`) in the
    cookie, which logging out revokes; the API token itself never sits in the browser."""
    if not _same_origin(request):  # login CSRF: only our own form logs in
        return _page(request, "login.html", None, status_code=403, title="Log in",
                     error="Log in from this site's own form.")
    try:
        user = throttled_authenticate(_db(request), token.strip(), request.app.state.auth_throttle,
                                      client_of(request))
    except ThrottledError as e:
        return _page(request, "login.html", None, status_code=429, title="Log in", error=f"{str(e).capitalize()}.")
    except AuthError:
        return _page(request, "login.html", None, status_code=401, title="Log in",
                     error="Invalid, revoked or expired token.")
    settings = request.app.state.settings
    session = create_token(_db(request), user, label="dashboard session", session=True,
                           ttl=dt.timedelta(hours=settings.session_ttl_h))
    out = RedirectResponse("/ui/jobs", status_code=303)
    out.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/ui", secure=request.url.scheme == "https",
                   max_age=int(settings.session_ttl_h * 3600))
    return out


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    """Ends the session: its token is revoked, not only forgotten by the browser (a POST from this site)."""
    if not _same_origin(request):
        return _page(request, "login.html", None, status_code=403, title="Log in",
                     error="Log out from this site's own page.")
    token = request.cookies.get(COOKIE)
    if token and len(token) <= 512:
        revoke_session(_db(request), token)
        request.app.state.tokens.forget(token)  # this process at once; others within token_cache_s
    out = RedirectResponse("/ui/login", status_code=303)
    out.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return out


@router.get("/ui/static/dashboard.css")
def stylesheet() -> FileResponse:
    return FileResponse(_STATIC / "dashboard.css", media_type="text/css", headers={"Cache-Control": "max-age=300"})


# ------------------------------------------------------------------------------------------------- pages

@router.get("/ui")
def home() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


_ID_MAX = 2**31 - 1  # database integers: a larger id can exist nowhere


def _ascii_int(raw: str | None) -> int | None:
    """`raw` as an integer if it is 1-10 ASCII digits (int() also reads Unicode digits such as '٣', and
    str.isdigit() passes '²', which int() refuses), else None."""
    return int(raw) if raw is not None and re.fullmatch(r"[0-9]{1,10}", raw) else None


def _id(raw: str) -> int | None:
    value = _ascii_int(raw)
    return value if value is not None and 1 <= value <= _ID_MAX else None


def _int(raw: str | None, default: int, lo: int = 1, hi: int = 10**6) -> int:
    """A lenient query integer: garbage falls back to the default, out-of-range values are clamped."""
    value = _ascii_int(raw)
    return default if value is None else min(hi, max(lo, value))


@router.get("/ui/jobs")
def jobs_page(request: Request, user: UIUser, db: DB, status: str | None = None, page: str | None = None) -> Response:
    status_ = status if status in JOB_STATUSES else None
    total = count_jobs(db, owner=user, status=status_)
    pages = max(1, math.ceil(total / JOBS_PER_PAGE))
    page_ = min(_int(page, 1), pages)
    items = [JobOut.of(j) for j in list_jobs(db, status=status_, owner=user, limit=JOBS_PER_PAGE,
                                             offset=(page_ - 1) * JOBS_PER_PAGE)]
    active = any(j.status in ACTIVE for j in items)
    return _page(request, "jobs.html", user, title="Jobs", jobs=items, total=total, page=page_, pages=pages,
                 status=status_, statuses=JOB_STATUSES, refresh=REFRESH_S if active else None)


def _owned(db: Database, user: str, raw_id: str) -> Any:
    """The user's job `raw_id`, or None when it is no id, not theirs, or does not exist (all look the same)."""
    job_id = _id(raw_id)
    if job_id is None:
        return None
    try:
        return svc.owned_job(db, user, job_id)
    except NotFoundError:
        return None


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: str, user: UIUser, db: DB, page: str | None = None) -> Response:
    job = _owned(db, user, job_id)
    if job is None:
        return _not_found(request, user, f"search job {job_id}")
    members = front(db, job.id)
    total = count_candidates(db, job.id)
    pages = max(1, math.ceil(total / CANDIDATES_PER_PAGE))
    page_ = min(_int(page, 1), pages)
    shown = candidates(db, job.id, limit=CANDIDATES_PER_PAGE, offset=(page_ - 1) * CANDIDATES_PER_PAGE)
    out = JobOut.of(job)
    return _page(request, "job.html", user, title=f"Job {job.id}", job=out, front=members,
                 front_ids={m.candidate.id for m in members}, candidates=shown, candidates_total=total,
                 page=page_, pages=pages, exports=svc.job_exports(db, job.id),
                 refresh=REFRESH_S if job.status in ACTIVE else None)


@router.get("/ui/jobs/{job_id}/pareto.png")
def pareto_png(request: Request, job_id: str, user: UIUser, db: DB) -> Response:
    job = _owned(db, user, job_id)
    if job is None:
        return _not_found(request, user, f"search job {job_id}")
    return Response(svc.pareto_png(db, job), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/ui/exports/{export_id}")
def export_download(request: Request, export_id: str, user: UIUser, db: DB) -> Response:
    """A ready export's bundle for the logged-in owner (the same file as GET /exports/{id} with a token)."""
    try:
        wanted = _id(export_id)
        out, zip_path = svc.owned_export(db, user, wanted) if wanted is not None else (None, None)
    except NotFoundError:
        out, zip_path = None, None
    if out is None or out.status != "ready" or zip_path is None or not zip_path.exists():
        return _not_found(request, user, f"a ready export {export_id}")
    return FileResponse(zip_path, media_type="application/zip",
                        filename=f"hwnas-job{out.job_id}-candidate{out.candidate_id}-{out.format}.zip")


PREDICTOR_METRICS = (("n", "held-out n", "num0"), ("mape", "MAPE", "pct"), ("within_5pct", "within ±5%", "pct"),
                     ("within_10pct", "within ±10%", "pct"), ("rmse_ms", "RMSE ms", "num"),
                     ("spearman", "Spearman", "num"), ("kendall", "Kendall", "num"))


@router.get("/ui/devices")
def devices_page(request: Request, user: UIUser, db: DB) -> Response:
    devices: list[dict[str, Any]] = []
    viewer = svc.Viewer.of(db, user)
    for d in DeviceRegistry(db).list(visible_to=viewer.sees):
        try:
            devices.append({"name": d.name, "profile": svc.device_profile(db, d.name, viewer), "error": None})
        except HwnasError as e:  # one broken device does not take the page down
            devices.append({"name": d.name, "profile": None, "error": str(e).splitlines()[0] if str(e) else
                            type(e).__name__})
    return _page(request, "devices.html", user, title="Devices", devices=devices, metrics=PREDICTOR_METRICS)
