"""One settings object and one workspace for the library, the CLI and the service.

Every `HWNAS_*` variable is read here and nowhere else:

    HWNAS_HOME          the workspace (default: the user's data directory)
    HWNAS_DB_URL        the results database (default: SQLite in the workspace)
    HWNAS_RAY_ADDRESS   the Ray cluster (also read as RAY_ADDRESS, Ray's own name; default: a local Ray)
    HWNAS_LOG_LEVEL     INFO by default
    HWNAS_LEASE_TTL_S, HWNAS_MAX_REQUEST_BYTES, HWNAS_RECONCILE_EVERY_S, HWNAS_MAX_ATTEMPTS, HWNAS_TOKEN_CACHE_S
    HWNAS_QUOTA_*       what one user of the service may ask for (see `Settings`)

The workspace lays out what hwnas writes: supernet checkpoints, tuning databases, exports, job plots.
`Settings()` reads the environment when it is made; nothing is read at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "configure_logging", "safe_name"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def safe_name(text: str) -> str:
    """`text` as one path component: letters, digits and -._ kept, anything else '_'."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


class Settings(BaseSettings):
    """hwnas's configuration: arguments > `HWNAS_*` environment variables > defaults; frozen once made."""

    model_config = SettingsConfigDict(env_prefix="HWNAS_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=lambda: Path(user_data_dir("hwnas")))
    db_url: str | None = None  # None: SQLite in the workspace
    ray_address: str | None = Field(None, validation_alias=AliasChoices("HWNAS_RAY_ADDRESS", "RAY_ADDRESS",
                                                                        "ray_address"))
    log_level: LogLevel = "INFO"
    lease_ttl_s: float = Field(120.0, gt=0)  # a job runner silent this long is presumed dead
    # the service
    max_request_bytes: int = Field(64 * 1024, ge=1024)  # a job spec is < 1 KiB; anything bigger is refused (413)
    reconcile_every_s: float = Field(30.0, gt=0)  # how often orphaned jobs are looked for
    max_attempts: int = Field(3, ge=1)  # runs of one job (resumes included) before it is failed
    token_cache_s: float = Field(10.0, ge=0)  # a revoked token may work this long on a process that just saw it
    # quotas, per user of the service (operators' CLI is not limited): a refusal names the setting
    quota_active_jobs: int = Field(4, ge=1)  # queued, running, verifying or retraining at once (429 beyond)
    quota_evaluations: int = Field(20_000, ge=1)  # one job's population x generations (422 beyond)
    quota_workers: int = Field(8, ge=1)  # one job's scoring actors (422 beyond)
    quota_retrain_steps: int = Field(20_000, ge=0)  # updates of one job's retraining stage (422 beyond; 0: none)
    quota_gpus_per_worker: float = Field(1.0, ge=0)  # GPUs of one scoring actor (422 beyond)
    quota_exports_per_job: int = Field(20, ge=1)  # exports of one job, failed ones included (429 beyond)
    auth_failures_per_minute: int = Field(20, ge=1)  # failed token checks from one client (429 beyond)
    token_ttl_days: float = Field(90.0, gt=0)  # lifetime of a token `hwnas tokens create` makes
    session_ttl_h: float = Field(12.0, gt=0)  # lifetime of a dashboard login's session token
    quota_devices: int = Field(5, ge=0)  # private devices per user (429 beyond)
    # hosts users' private devices may name as trackers (the cluster connects there); None: any, [] none
    user_tracker_hosts: list[str] | None = None

    # -- the workspace ---------------------------------------------------------------------------------------
    def database_url(self) -> str:
        """`db_url`, else a SQLite file in the workspace (its directory is made)."""
        if self.db_url:
            return self.db_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'hwnas.db'}"

    def supernet_dir(self, space: str, data: str) -> Path:
        """Where `hwnas supernet train` writes a space's checkpoint trained on `data` by default."""
        return self.home / "supernets" / safe_name(f"{Path(space).stem}-{data}")

    def tuning_dir(self, device: str, space: str) -> Path:
        """The MetaSchedule database of a (device, space): one per pair, reused by every subnet build."""
        return self.home / "tuning" / device / Path(space).stem

    def reference_builds_dir(self) -> Path:
        """Builds of the reference subnet a reference protocol times with every batch, one per provenance."""
        return self.home / "cache" / "reference-builds"

    def exports_dir(self) -> Path:
        return self.home / "exports"

    def retrained_dir(self, job_id: int, candidate_id: int, job_created: str) -> Path:
        """Where a job's retraining stage trains a candidate (checkpoints, then model.pt). The job's creation
        time keeps apart jobs of two databases that share ids (ids restart in a new database)."""
        return self.home / "retrained" / f"job-{job_id}-{job_created}-candidate-{candidate_id}"

    def jobs_dir(self) -> Path:
        """Job artefacts (Pareto plots)."""
        return self.home / "jobs"


def configure_logging(settings: Settings | None = None) -> None:
    """hwnas's loggers to stderr at the settings' level, once per process (the service, runners, long commands).

    Only the `hwnas` logger tree is configured: libraries keep their own levels and handlers.
    """
    settings = settings or Settings()
    log = logging.getLogger("hwnas")
    log.setLevel(settings.log_level)
    if not any(getattr(h, "_hwnas", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._hwnas = True  # type: ignore[attr-defined]  # marks ours, so a second call adds none
        log.addHandler(handler)
