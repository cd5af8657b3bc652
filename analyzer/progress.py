"""Progress on stderr for work a user waits on (checkpoint audits, sweeps): a rich bar that appears only when the
work has taken more than a second, only at a terminal, and never in machine formats (the CLI decides with
`allow`). Library calls stay silent unless the caller allows it."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

__all__ = ["allow", "Meter", "meter"]

_DELAY_S = 1.0  # shorter work is not worth a bar
_allowed = False


def allow(show: bool) -> None:
    """Let progress bars appear (the CLI calls this with True for human-readable output)."""
    global _allowed
    _allowed = show


def _stderr_is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Meter:
    """Counts units of work (and optionally bytes) and draws a bar once the work has lasted _DELAY_S."""

    def __init__(self, description: str, total: int, unit: str, total_bytes: int | None = None,
                 show: bool | None = None) -> None:
        self.description, self.total, self.unit, self.total_bytes = description, total, unit, total_bytes
        self.done, self.bytes = 0, 0
        self.show = (_allowed and _stderr_is_terminal()) if show is None else show
        self._started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def advance(self, units: int = 1, nbytes: int = 0) -> None:
        self.done += units
        self.bytes += nbytes
        if not self.show:
            return
        if self._bar is None and time.monotonic() - self._started >= _DELAY_S and self.done < self.total:
            self._open()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, read=self._read_text())

    def _read_text(self) -> str:
        if self.total_bytes is None:
            return ""
        return f"{self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB read"

    def _open(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn(self.unit), TextColumn("{task.fields[read]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
                             transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total, completed=self.done,
                                        read=self._read_text())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextlib.contextmanager
def meter(description: str, total: int, unit: str, total_bytes: int | None = None) -> Iterator[Meter]:
    """A Meter that is closed (its bar erased) when the block ends, however it ends."""
    current = Meter(description, total, unit, total_bytes)
    try:
        yield current
    finally:
        current.close()
