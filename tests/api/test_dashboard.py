"""The dashboard against a live server (uvicorn in a thread), driven by Debian's headless Chromium.

Each page is loaded in the browser, its content checked, and a screenshot kept under
$HWNAS_SCREENSHOT_DIR (default: .artifacts/screenshots/ at the repository root).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from hwnas.api import create_app, create_token, create_user
from hwnas.db import Candidate, Database, DeviceRevision, Export, Measurement, ParetoMember, Predictor, SearchJob
from hwnas.jobs import SearchSpec
from hwnas.latency import DeviceRegistry, builtin_devices
from hwnas.search_spaces import get_space
from hwnas.settings import Settings
from tests.api.conftest import RecordingLauncher, live_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
BUDGET_MS = 18.0
MAPE = 0.0432  # the stand-in predictor's held-out MAPE: the devices page shows it as 4.3%


@dataclasses.dataclass
class Site:
    base: str
    token: str
    finished: int  # alice's finished job (20 candidates, 4-member front)
    running: int  # alice's running job (generation 3 of 8)
    failed: int
    others: int  # bob's job: never shown to alice


# ------------------------------------------------------------------------------------------- stand-in data

def _now(minutes_ago: float = 0.0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)


def _job(db: Database, owner: str, status: str, *, generation: int, total: int, evaluations: int,
         best_loss: float | None, minutes_ago: float, error: str | None = None) -> int:
    spec = SearchSpec(space="quickstart", device="local-cpu", latency_ms=BUDGET_MS, supernet="/stand-in/supernet.pt",
                      options={"batch_size": 20, "batches": total}, predictor_kind="layerwise", predictor_version=1)
    done = status in ("finished", "failed")
    with db.session() as s:
        job = SearchJob(owner=owner, space="quickstart", device="local-cpu", strategy="evo", spec=spec.to_dict(),
                        status=status, error=error, generation=generation, generations_total=total,
                        evaluations=evaluations, best_loss=best_loss, created_at=_now(minutes_ago),
                        started_at=_now(minutes_ago - 1), heartbeat_at=_now(0.2 if not done else minutes_ago - 20),
                        finished_at=_now(minutes_ago - 20) if done else None, attempts=1)
        s.add(job)
        s.flush()
        return job.id


def fill(db: Database) -> tuple[str, dict[str, int]]:
    """Stand-in test data, written through the ORM: users, jobs, candidates, a front, measurements, predictors.

    None of these numbers were measured or trained; they only give every page something to show.
    """
    create_user(db, "alice")
    create_user(db, "bob")
    token = create_token(db, "alice", label="dashboard test")
    device = builtin_devices()["local-cpu"]
    device_id = DeviceRegistry(db).row_id(device)
    DeviceRegistry(db).revision(device, create=True)
    with db.session() as s:
        rev_id = s.scalars(select(DeviceRevision.id).where(DeviceRevision.device_id == device_id)).one()
    space, rng = get_space("quickstart"), np.random.default_rng(0)

    ids = {"others": _job(db, "bob", "finished", generation=2, total=2, evaluations=40, best_loss=4.2,
                          minutes_ago=300),
           "failed": _job(db, "alice", "failed", generation=1, total=4, evaluations=20, best_loss=4.41, minutes_ago=200,
                          error="its runner was lost 3 times; not resumed again"),
           "finished": _job(db, "alice", "finished", generation=5, total=5, evaluations=20, best_loss=None,
                            minutes_ago=120),
           "running": _job(db, "alice", "running", generation=3, total=8, evaluations=60, best_loss=4.37,
                           minutes_ago=5)}

    subnets: dict[str, dict[str, Any]] = {}
    while len(subnets) < 20:
        cfg = space.sample(rng)
        subnets.setdefault(cfg.key(), cfg.to_dict())
    front_at = (0, 6, 12, 18)  # these four dominate the rest in (loss, latency): the front
    with db.session() as s:
        rows = []
        for i, (key, subnet) in enumerate(subnets.items()):
            lat = 6.0 + 0.6 * i
            loss = 4.5 - 0.01 * lat - (0.2 if i in front_at else -0.1 * rng.random())
            rows.append(Candidate(job_id=ids["finished"], subnet_key=key, subnet=subnet, generation=i // 4, loss=loss,
                                  bleu=None, error=None, predicted_latency_ms=lat, params=int((8 + 1.1 * i) * 1e6),
                                  flops=int((0.6 + 0.09 * i) * 1e9), eval_s=0.5))
        s.add_all(rows)
        s.flush()
        s.get_one(SearchJob, ids["finished"]).best_loss = min(r.loss for r in rows)
        for n, i in enumerate(front_at):
            c = rows[i]
            measured = c.predicted_latency_ms * 1.1  # the slowest member misses the budget once measured
            m = Measurement(device_id=device_id, revision_id=rev_id, space="quickstart", subnet_key=c.subnet_key,
                            subnet=c.subnet,
                            protocol=device.protocol.to_dict(), protocol_key="stand-in", tuning_key="", status="ok",
                            error=None, encoder_ms=[measured / 3], decoder_step_ms=[measured / 30],
                            latency_ms=measured, latency_cv=0.01 + 0.01 * n)
            s.add(m)
            s.flush()
            s.add(ParetoMember(job_id=ids["finished"], candidate_id=c.id, measurement_id=m.id,
                               measured_latency_ms=measured, meets_constraint=measured <= BUDGET_MS))
        bundle = Path(os.environ["HWNAS_HOME"]) / "exports" / "export-1"  # a stand-in bundle: one zipped file
        bundle.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(f"{bundle}.zip", "w") as z:
            z.writestr("manifest.json", "{}")
        s.add(Export(job_id=ids["finished"], candidate_id=rows[6].id, format="onnx", path=str(bundle),
                     status="ready", finished_at=_now(30)))
        for kind, metrics in (("layerwise", {"n": 40.0, "rmse_ms": 0.61, "mape": MAPE, "within_5pct": 0.7,
                                             "within_10pct": 0.95, "spearman": 0.971, "kendall": 0.884}),
                              ("hat-mlp", {"n": 40.0, "rmse_ms": 0.93, "mape": 0.061, "within_5pct": 0.5,
                                           "within_10pct": 0.825, "spearman": 0.952, "kendall": 0.831})):
            s.add(Predictor(device_id=device_id, revision_id=rev_id, kind=kind, version=1, space="quickstart",
                            blob=b"stand-in",
                            metrics=metrics, fingerprint=device.fingerprint, training_data_key="stand-in"))
    return token, ids


# ------------------------------------------------------------------------------------------- live server

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWNAS_HOME", str(tmp / "home"))
        db = Database(f"sqlite:///{tmp / 'hwnas.db'}")
        token, ids = fill(db)
        app = create_app(settings=Settings(db_url=db.url, reconcile_every_s=3600),
                         launcher=RecordingLauncher())
        try:
            with live_server(app) as base:
                yield Site(base=base, token=token, **ids)
        finally:
            db.close()


# ------------------------------------------------------------------------------------------- HTTP level

def test_login_cookie_and_api_boundary(site: Site) -> None:
    with httpx.Client(base_url=site.base, follow_redirects=False, timeout=30) as c:
        r = c.get("/ui/jobs")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        r = c.post("/ui/login", data={"token": "hwnas_wrong"})
        assert r.status_code == 401 and "Invalid, revoked or expired token" in r.text
        r = c.post("/ui/login", data={"token": site.token}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and "hwnas_token" not in r.headers.get("set-cookie", "")
        r = c.post("/ui/login", data={"token": site.token}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "hwnas_token" not in r.headers.get("set-cookie", "")

        r = c.post("/ui/login", data={"token": site.token})
        assert r.status_code == 303 and r.headers["location"] == "/ui/jobs"
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith("hwnas_token=") and "httponly" in cookie and "samesite=strict" in cookie
        assert "path=/ui" in cookie
        session = c.cookies["hwnas_token"]
        assert session != site.token  # a session token of its own: the API token never sits in the browser
        assert c.get("/ui/jobs").status_code == 200
        r = c.get("/ui/jobs", params={"status": "bogus", "page": "x"})  # lenient: all statuses, first page
        assert r.status_code == 200 and f'data-job-id="{site.running}"' in r.text
        r = c.get("/ui/jobs", params={"status": "finished", "page": "99"})  # clamped to the last page
        assert f'data-job-id="{site.finished}"' in r.text and f'data-job-id="{site.running}"' not in r.text
        # the JSON API takes bearer tokens only: the dashboard's cookie opens nothing there
        assert c.get("/jobs", headers={"Cookie": f"hwnas_token={site.token}"}).status_code == 401
        r = c.get(f"/ui/jobs/{site.others}")
        assert r.status_code == 404 and "text/html" in r.headers["content-type"]
        assert c.get(f"/ui/jobs/{site.others}/pareto.png").status_code == 404
        assert c.get("/ui/jobs/not-a-number").status_code == 404
        r = c.get(f"/ui/jobs/{site.finished}/pareto.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
        assert c.get("/ui/static/dashboard.css").headers["content-type"].startswith("text/css")
        r = c.get("/ui/exports/1")  # a ready export downloads with the cookie too
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert zipfile.ZipFile(io.BytesIO(r.content)).namelist() == ["manifest.json"]
        assert c.get("/ui/exports/2").status_code == 404
        assert c.get("/ui/logout").status_code == 405  # a link cannot log anyone out
        r = c.post("/ui/logout", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and c.get("/ui/jobs").status_code == 200
        r = c.post("/ui/logout")
        assert r.status_code == 303 and 'hwnas_token=""' in r.headers["set-cookie"]
        # the session is revoked, not only forgotten by the browser; the API token goes on working
        c.cookies.set("hwnas_token", session)
        r = c.get("/ui/jobs")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert c.get("/jobs", headers={"Authorization": f"Bearer {site.token}"}).status_code == 200


# ------------------------------------------------------------------------------------------- in Chromium

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        msg = f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1360,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    # a driver path given: selenium-manager never runs (so never downloads anything)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir() -> Path:
    out = Path(os.environ.get("HWNAS_SCREENSHOT_DIR") or REPO / ".artifacts" / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def shoot(driver: Any, name: str) -> Path:
    """A screenshot of the whole page (through the DevTools protocol), checked to be a non-empty PNG."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}})
    data = base64.b64decode(shot["data"])
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    path = screenshot_dir() / f"{name}.png"
    path.write_bytes(data)
    return path


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


@pytest.fixture()
def ui(site: Site, browser: Any) -> Any:
    """The browser, logged in as alice through the login form."""
    if browser.get_cookie("hwnas_token") is None:
        browser.get(f"{site.base}/ui/login")
        assert browser.current_url.endswith("/ui/login")
        css(browser, "#token")[0].send_keys(site.token)
        css(browser, "#login-form button")[0].click()
        _wait(lambda: browser.current_url.endswith("/ui/jobs"))
    return browser


def _wait(cond: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the page")
        time.sleep(0.05)


def test_jobs_page(site: Site, ui: Any) -> None:
    ui.get(f"{site.base}/ui/jobs")
    listed = [int(r.get_attribute("data-job-id")) for r in css(ui, "#jobs tbody tr")]
    assert listed == [site.running, site.finished, site.failed]  # hers only, newest first
    assert site.others not in listed
    bar = css(ui, f"#progress-{site.running}")[0]
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("3", "8")
    assert ui.execute_script("return arguments[0].position", bar) == pytest.approx(3 / 8)
    assert css(ui, f"#progress-{site.finished}")[0].get_attribute("value") == "5"
    row = css(ui, f'tr[data-job-id="{site.running}"]')[0].text
    assert "running" in row and "60" in row and "4.370" in row and "local-cpu" in row and "quickstart" in row
    assert css(ui, 'meta[http-equiv="refresh"]'), "an active job is listed: the page refreshes itself"
    shoot(ui, "jobs")

    ui.get(f"{site.base}/ui/jobs?status=failed")
    assert [int(r.get_attribute("data-job-id")) for r in css(ui, "#jobs tbody tr")] == [site.failed]
    assert not css(ui, 'meta[http-equiv="refresh"]')


def test_job_page(site: Site, ui: Any) -> None:
    ui.get(f"{site.base}/ui/jobs/{site.finished}")
    assert f"Job #{site.finished}" in css(ui, "h1")[0].text
    front = css(ui, "#front tbody tr")
    assert len(front) == 4
    cells = [[td.text for td in r.find_elements("css selector", "td")] for r in front]
    assert [c[5] for c in cells] == ["yes", "yes", "yes", "no"]  # measured 10% over: the slowest misses 18 ms
    assert cells[0][3] == "6.00" and cells[0][4] == "6.60"
    assert len(css(ui, "#candidates tbody tr")) == 20 and "20 evaluated" in css(ui, "#candidates-count")[0].text
    assert len(css(ui, "#candidates tr.on-front")) == 4
    assert "/exports/1" in css(ui, "#exports")[0].text
    img = css(ui, "#pareto")[0]
    _wait(lambda: ui.execute_script("return arguments[0].complete", img))
    assert ui.execute_script("return arguments[0].naturalWidth", img) > 0
    shoot(ui, "job")


def test_devices_page(site: Site, ui: Any) -> None:
    ui.get(f"{site.base}/ui/devices")
    card = css(ui, "#device-local-cpu")[0]
    mapes = [td.text for td in card.find_elements("css selector", "td.metric-mape")]
    assert mapes == ["6.1%", "4.3%"]  # hat-mlp, layerwise: held-out MAPE of the stand-in predictors
    assert card.find_element("css selector", ".m-ok").text == "4"
    assert card.find_element("css selector", ".cv-median").text == "2.50%"
    assert css(ui, "#device-local-cpu-torch"), "every device is listed, with or without predictors"
    shoot(ui, "devices")


def test_someone_elses_job_is_not_found(site: Site, ui: Any) -> None:
    ui.get(f"{site.base}/ui/jobs/{site.others}")
    assert "404" in css(ui, "h1")[0].text and f"search job {site.others}" in css(ui, "#not-found")[0].text
    shoot(ui, "not_found")


def test_logged_out_visit_goes_to_login(site: Site, ui: Any) -> None:
    ui.get(f"{site.base}/ui/jobs")
    css(ui, "#logout")[0].click()
    _wait(lambda: ui.current_url.endswith("/ui/login"))
    assert ui.get_cookie("hwnas_token") is None
    ui.get(f"{site.base}/ui/jobs/{site.finished}")
    assert ui.current_url.endswith("/ui/login") and css(ui, "#login-form")
    css(ui, "#token")[0].send_keys("hwnas_not-a-token")
    css(ui, "#login-form button")[0].click()
    _wait(lambda: bool(css(ui, "#login-error")))
    assert "Invalid, revoked or expired token" in css(ui, "#login-error")[0].text
    shoot(ui, "login")
