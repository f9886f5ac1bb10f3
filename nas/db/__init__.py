"""The results database: SQLAlchemy 2.0 models, Alembic migrations, transactional sessions.

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
from hwnas.db._models import Base, Device, Measurement, Predictor, Supernet, UTCDateTime
from hwnas.db._session import Database, create_engine_for, masked, resolve_url, upgrade

__all__ = [
    "DEVICE_KINDS",
    "DEVICE_LOCATIONS",
    "DEVICE_RUNTIMES",
    "Base",
    "Database",
    "Device",
    "DeviceRecord",
    "Measurement",
    "Predictor",
    "Supernet",
    "UTCDateTime",
    "add_device",
    "create_engine_for",
    "get_device",
    "list_devices",
    "masked",
    "remove_device",
    "resolve_url",
    "upgrade",
]
