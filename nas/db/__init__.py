"""The results database: SQLAlchemy 2.0 models, Alembic migrations, transactional sessions.

SQLite by default (a file under $HWNAS_HOME), PostgreSQL or any SQLAlchemy URL through
`Database(url)` or $HWNAS_DB_URL.
"""

from hwnas.db._models import Base, Device, Measurement, Predictor, Supernet
from hwnas.db._session import Database, masked, resolve_url, upgrade

__all__ = ["Base", "Database", "Device", "Measurement", "Predictor", "Supernet", "masked", "resolve_url", "upgrade"]
