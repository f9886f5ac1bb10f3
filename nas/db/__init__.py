"""The results database (`hwnas.db`, folder `nas/db/`): SQLAlchemy 2.0 models, Alembic migrations, sessions.

SQLite by default (a file under $HWNAS_HOME), PostgreSQL or any SQLAlchemy URL through
`Database(url)` or $HWNAS_DB_URL. The layers above hand out their own records, never live rows
(devices as `hwnas.latency.DeviceProfile`, jobs as `hwnas.jobs.JobInfo`).
"""

from hwnas.db._models import (
    ApiToken,
    Base,
    Candidate,
    Device,
    DeviceRevision,
    Export,
    Generation,
    Measurement,
    ParetoMember,
    Predictor,
    SearchJob,
    Supernet,
    User,
    UTCDateTime,
)
from hwnas.db._session import Database, alembic_config, create_engine_for, masked, resolve_url, upgrade

__all__ = [
    "ApiToken",
    "Base",
    "Candidate",
    "Database",
    "Device",
    "DeviceRevision",
    "Export",
    "Generation",
    "Measurement",
    "ParetoMember",
    "Predictor",
    "SearchJob",
    "Supernet",
    "UTCDateTime",
    "User",
    "alembic_config",
    "create_engine_for",
    "masked",
    "resolve_url",
    "upgrade",
]
