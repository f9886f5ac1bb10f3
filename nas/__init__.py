"""hwnas: hardware-aware neural architecture search for Transformers (HAT), as a service."""

from hwnas.exceptions import (
    CheckpointError,
    DataError,
    HwnasError,
    InfeasibleConstraintError,
    MeasurementError,
    SearchSpaceError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataError",
    "HwnasError",
    "InfeasibleConstraintError",
    "MeasurementError",
    "SearchSpaceError",
    "__version__",
]
