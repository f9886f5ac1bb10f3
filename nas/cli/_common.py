"""What every command shares: the console, the settings, the database, device and subnet lookups, job progress bars.

The CLI imports the library inside commands: `hwnas --help` takes 0.3 s this way, against 3.1-3.8 s for importing
`hwnas.jobs` (torch, TVM, Ray) at the top (measured on the 2-core VM); that is the reason, here and in every
`hwnas.cli` module, for first-party imports inside functions.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from hwnas.exceptions import SearchSpaceError
from hwnas.settings import Settings, configure_logging

if TYPE_CHECKING:
    from hwnas.db import Database
    from hwnas.jobs import JobProgress
    from hwnas.latency import DeviceProfile
    from hwnas.search_spaces import SearchSpace, SubnetConfig

console = Console()


def settings() -> Settings:
    """The settings of this command, read from the environment once it runs (logging follows them)."""
    current = Settings()
    configure_logging(current)
    return current


def db() -> Database:
    from hwnas.db import Database

    return Database(settings().database_url())


def device(name: str) -> DeviceProfile:
    """Built-in devices need no database; any other name is looked up in it."""
    from hwnas.latency import DeviceRegistry, builtin_devices

    return builtin_devices().get(name) or DeviceRegistry(db()).get(name)


def load_subnet(spec: str, space: SearchSpace) -> SubnetConfig:
    """A subnet from a JSON file, or the space's 'largest' / 'smallest'; checked against the space."""
    from hwnas.search_spaces import SubnetConfig

    if spec in ("largest", "smallest"):
        return space.largest() if spec == "largest" else space.smallest()
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SearchSpaceError(f"subnet file '{path}' cannot be read: {getattr(e, 'strerror', None) or e}") from e
    try:
        return space.validate(SubnetConfig.from_json(text))
    except SearchSpaceError as e:
        raise SearchSpaceError(f"subnet file '{path}': {e}") from e


class JobBars:
    """A job's progress as rich bars on stderr: generations, the batch's candidates, the front's measurements."""

    def __init__(self) -> None:
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True))
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, event: JobProgress) -> None:
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._tasks[event.stage] = self._bar.add_task(event.description, total=event.total, info="")
        self._bar.update(task, completed=event.done, total=event.total, info=event.info)
        if event.stage == "candidates" and event.done >= event.total:  # the batch is scored: its bar goes
            self._bar.remove_task(self._tasks.pop(event.stage))

    def __enter__(self) -> JobBars:
        self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)
