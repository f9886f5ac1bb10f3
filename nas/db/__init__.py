"""The results database (`hwnas.db`, folder `nas/db/`): SQLAlchemy 2.0 models, Alembic migrations, sessions.

SQLite by default (a file under $HWNAS_HOME), PostgreSQL or any SQLAlchemy URL through
`Database(url)` or $HWNAS_DB_URL.
"""

from hwnas.db._devices import (
    DEVICE_KINDS,
    DEVICE_LOCATIONS,
    DEVICE_RUNTIMES,
    DeviceRecord,
    add_device,
    get_device,
    list_devices,
    remove_device,
)
from hwnas.db._models import (
    ApiToken,
    Base,
    Candidate,
    Device,
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
    "DEVICE_KINDS",
    "DEVICE_LOCATIONS",
    "DEVICE_RUNTIMES",
    "ApiToken",
    "Base",
    "Candidate",
    "Database",
    "Device",
    "DeviceRecord",
    "Export",
    "Generation",
    "Measurement",
    "ParetoMember",
    "Predictor",
    "SearchJob",
    "Supernet",
    "UTCDateTime",
    "User",
    "add_device",
    "alembic_config",
    "create_engine_for",
    "get_device",
    "list_devices",
    "masked",
    "remove_device",
    "resolve_url",
    "upgrade",
]
