"""The one settings object: environment > defaults, Ray's own RAY_ADDRESS as a fallback, the workspace layout,
and logging that reaches stderr once, at the settings' level."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from hwnas.settings import Settings, configure_logging


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HWNAS_DB_URL", "HWNAS_RAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path))
    s = Settings()
    assert s.home == tmp_path and s.ray_address is None
    assert s.database_url() == f"sqlite:///{tmp_path / 'hwnas.db'}"
    monkeypatch.setenv("HWNAS_DB_URL", "postgresql://hwnas@db/hwnas")
    monkeypatch.setenv("HWNAS_LEASE_TTL_S", "7.5")
    assert Settings().database_url() == "postgresql://hwnas@db/hwnas" and Settings().lease_ttl_s == 7.5
    assert Settings(db_url="sqlite:///x.db").database_url() == "sqlite:///x.db"  # an argument wins


def test_ray_address_prefers_hwnas_then_rays_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HWNAS_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "head:6380")
    assert Settings().ray_address == "head:6380"  # `hwnas search run` and `hwnas serve` read the same name now
    monkeypatch.setenv("HWNAS_RAY_ADDRESS", "other:6380")
    assert Settings().ray_address == "other:6380"
    assert Settings(ray_address="arg:1").ray_address == "arg:1"


def test_workspace_layout(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.tuning_dir("local-cpu", "quickstart") == tmp_path / "tuning" / "local-cpu" / "quickstart"
    assert s.tuning_dir("local-cpu", "spaces/tiny.json") == tmp_path / "tuning" / "local-cpu" / "tiny"
    assert s.supernet_dir("quickstart", "files:/d/x:de-en") == tmp_path / "supernets" / "quickstart-files__d_x_de-en"
    assert s.exports_dir() == tmp_path / "exports" and s.jobs_dir() == tmp_path / "jobs"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWNAS_LOG_LEVEL", "CHATTY")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


def test_logging_reaches_stderr_once_at_the_settings_level(capfd: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("hwnas")
    ours = [h for h in log.handlers if getattr(h, "_hwnas", False)]  # an earlier command in this process
    for h in ours:
        log.removeHandler(h)
    before = list(log.handlers)
    try:
        configure_logging(Settings(log_level="WARNING"))
        configure_logging(Settings(log_level="INFO"))  # a second call changes the level, adds no handler
        assert len(log.handlers) == len(before) + 1
        logging.getLogger("hwnas.api").info("reconcile: job 3: resumed (was running)")
        logging.getLogger("hwnas.jobs").debug("not shown at INFO")
        err = capfd.readouterr().err
        assert "INFO hwnas.api: reconcile: job 3: resumed (was running)" in err and "not shown" not in err
    finally:
        for h in list(log.handlers):
            if h not in before:
                log.removeHandler(h)
        for h in ours:
            log.addHandler(h)
