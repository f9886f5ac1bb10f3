"""One exception root for hwnas; each boundary (CLI, API) translates it to one clear message."""

from __future__ import annotations

__all__ = [
    "HwnasError",
    "SearchSpaceError",
    "DataError",
    "CheckpointError",
    "InfeasibleConstraintError",
    "MeasurementError",
    "StorageError",
    "InvalidValueError",
    "NotFoundError",
    "DuplicateError",
    "ExportError",
    "SearchError",
    "ClusterError",
    "TrainingError",
    "AuthError",
]


class HwnasError(Exception):
    """Root of every error hwnas raises on purpose; its message is meant for the user."""


class SearchSpaceError(HwnasError, ValueError):
    """A subnet config or a search space is malformed, or a subnet lies outside its space."""


class DataError(HwnasError):
    """Training or evaluation data is missing, unreadable or malformed."""


class CheckpointError(HwnasError):
    """A checkpoint is missing, corrupt, or does not match what it is loaded into."""


class InfeasibleConstraintError(HwnasError):
    """No subnet satisfies a constraint within the sampling budget."""


class MeasurementError(HwnasError):
    """A device, target or measurement setup is unusable (bad target, unreachable tracker...)."""


class StorageError(HwnasError):
    """The results database is unreachable, or a write broke a constraint (the transaction rolled back)."""


class InvalidValueError(StorageError, ValueError):
    """A value the database cannot hold (a NUL byte in text, a number out of its column's range): the input's
    fault, not the database's."""


class NotFoundError(HwnasError, LookupError):
    """An id or name (device, predictor, job) that does not exist."""


class DuplicateError(HwnasError):
    """Something with that name already exists."""


class ExportError(HwnasError):
    """An export bundle cannot be written (its directory is taken, the export failed), or a bundle on disk
    is unusable (missing or tampered files, a foreign manifest) or is run with inputs it was not built for."""


class SearchError(HwnasError, ValueError):
    """A search cannot run: a bad spec (strategy, options, budget), workers that cannot start, or a finished job."""


class ClusterError(HwnasError, ValueError):
    """Ray cannot be started or joined, or the cluster cannot place the workers asked of it."""


class TrainingError(HwnasError, ValueError):
    """Training cannot run as asked: a bad hyper-parameter or recipe, a precision the device lacks, or a
    data-parallel run whose workers failed."""


class AuthError(HwnasError):
    """A missing, unknown, revoked or expired token (HTTP 401)."""
