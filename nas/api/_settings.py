"""Service settings, from the environment (HWNAS_*) or arguments; one frozen object per app."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """`HWNAS_DB_URL`, `HWNAS_RAY_ADDRESS`, ... : the API's configuration."""

    model_config = SettingsConfigDict(env_prefix="HWNAS_", extra="ignore", frozen=True)

    db_url: str | None = None  # None: SQLite under $HWNAS_HOME
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray started by the API
    max_request_bytes: int = Field(64 * 1024, ge=1024)  # a job spec is < 1 KiB; anything bigger is refused (413)
    reconcile_every_s: float = Field(30.0, gt=0)  # how often orphaned jobs are looked for
    max_attempts: int = Field(3, ge=1)  # runs of one job (resumes included) before it is failed
    token_cache_s: float = Field(10.0, ge=0)  # a revoked token may work this long on a process that just saw it
