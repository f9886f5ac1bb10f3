"""hwnas: hardware-aware neural architecture search for Transformers (HAT), as a service."""

from hwnas.exceptions import (
    CheckpointError,
    DataError,
    DuplicateError,
    HwnasError,
    InfeasibleConstraintError,
    MeasurementError,
    NotFoundError,
    SearchSpaceError,
    StorageError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataError",
    "DuplicateError",
    "HwnasError",
    "InfeasibleConstraintError",
    "MeasurementError",
    "NotFoundError",
    "SearchSpaceError",
    "StorageError",
    "__version__",
]
