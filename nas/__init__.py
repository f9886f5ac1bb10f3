"""hwnas: hardware-aware neural architecture search for Transformers (HAT), as a service.

One import package laid out in folders by role (pyproject's package-dir): `hwnas` and its `settings`,
`exceptions`, `io`, `db`, `search`, `jobs`, `export`, `api` and `cli` live in `nas/`; `hwnas.search_spaces`,
`hwnas.supernet`, `hwnas.kernels` and `hwnas.latency` in the top-level folders of the same names. The layers
and what each owns: the README's Architecture section. The whole method from Python: `hwnas.jobs`.
"""

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
