"""Errors a user can act on: one paragraph, the file, the line, what to do (exit code 2)."""

from __future__ import annotations

import functools
import re
import traceback
from pathlib import Path
from typing import Any

__all__ = ["ModnormError", "InputsDoNotFit", "internal_error", "user_frame", "frame_of_exception", "resolved", "short_path"]

_INTERNAL = re.compile(r"(site-packages|dist-packages|/torch/|/lib/python3\.\d+/|[/\\]modnorm[/\\]|[/\\]analyzer[/\\])")


class ModnormError(Exception):
    """Bad input. The CLI prints str(self) as one paragraph and exits with code 2."""

    def __init__(self, problem: str, remedy: str = "", file: str | Path | None = None,
                 line: int | None = None) -> None:
        self.problem, self.remedy = problem, remedy
        self.file = str(file) if file is not None else None
        self.line = line
        super().__init__(self.render())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Crosses the pipe from the worker process (worker.py) with its parts, not only the rendered text.
        return type(self), (self.problem, self.remedy, self.file, self.line)

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        text = where + self.problem.rstrip(".") + "."
        if self.remedy:
            text += " " + self.remedy[:1].upper() + self.remedy[1:].rstrip(".") + "."
        return " ".join(text.split())


class InputsDoNotFit(ModnormError):
    """The example inputs do not fit the model (an op rejects their shape or dtype): no route can do better, so
    tracing stops here instead of falling back to a route that would certify a model that cannot run."""


def internal_error(exc: BaseException) -> ModnormError:
    """An exception modnorm did not expect, as the one paragraph the CLI prints (exit 2): a bug to report."""
    if isinstance(exc, ModnormError):
        return exc
    return ModnormError(f"internal error: {type(exc).__name__}: {exc}",
                        "this is a bug in modnorm; please report it with the model file (run with "
                        "MODNORM_TRACEBACK=1 for the traceback)")


@functools.lru_cache(maxsize=4096)
def resolved(path: str) -> str:
    """`path` made absolute with symlinks resolved (cached: stack traces repeat a few files thousands of times)."""
    return str(Path(path).resolve())


def _is_user_file(filename: str, user_file: str | None) -> bool:
    if user_file is not None:
        return resolved(filename) == resolved(user_file)
    return not _INTERNAL.search(filename) and not filename.startswith("<")


def user_frame(stack: traceback.StackSummary, user_file: str | None = None) -> tuple[str, int, str] | None:
    """The innermost frame of `stack` in the user's code: (file, line, source text)."""
    for wanted in ([user_file] if user_file else []) + [None]:  # the model's file first, then any user code
        for frame in reversed(stack):
            if _is_user_file(frame.filename, wanted):
                return frame.filename, frame.lineno or 0, (frame.line or "").strip()
    return None


def frame_of_exception(exc: BaseException, user_file: str | None = None) -> tuple[str, int, str] | None:
    """Where in the user's code `exc` was raised (innermost user frame of its traceback)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno or 0, (exc.text or "").strip()
    return user_frame(traceback.extract_tb(exc.__traceback__), user_file)


def short_path(path: str | None) -> str:
    """`path` relative to the working directory when inside it (for messages and reports)."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path
