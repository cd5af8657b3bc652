"""What `modnorm check` is pointed at: `path.py[:NAME]` (or a Hugging Face config), checked before any of it runs.

Light to import (no torch): the CLI checks its targets before the worker process starts.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import ModnormError

__all__ = ["parse_target", "check_model_path"]


def parse_target(target: str) -> tuple[Path, str | None]:
    """`path.py:NAME` → (path, NAME). A Windows drive letter is not a NAME."""
    head, sep, tail = target.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return Path(head), tail
    return Path(target), None


def check_model_path(path: Path) -> None:
    """Refuse, with what to do, a model path that is missing, a symlink loop, a directory without a Hugging Face
    config.json, or not a regular file (a FIFO named model.py would block the import forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModnormError("the model path is a symbolic link loop", "point at the model file itself",
                               path) from None
        if exc.errno == errno.ENOENT:
            raise ModnormError(f"no such file `{path}`", "pass the path of a Python file that defines your model")
        raise ModnormError(f"the model file cannot be read ({exc.strerror or exc})",
                           "pass a readable Python file", path) from None
    if stat.S_ISDIR(mode):
        if not (path / "config.json").is_file():
            raise ModnormError("the model path is a directory without a config.json",
                               "pass a .py file that defines the model, or a Hugging Face model directory", path)
        return
    if not stat.S_ISREG(mode):
        raise ModnormError("the model path is not a regular file (a FIFO, socket or device)",
                           "pass a .py file that defines the model", path)
    if not os.access(path, os.R_OK):
        raise ModnormError("the model file is not readable", "check its permissions", path)


MAX_INPUT_ELEMENTS = 2**28  # an example input above this (1 GiB of float32) is refused: batch 1 traces the same graph


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`--input-shape 4,128` (or 4x128) → (4, 128): positive sizes, small enough to allocate."""
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    if not text.strip() or any(not part.lstrip("+").isdigit() for part in parts):
        raise ModnormError(f"--input-shape `{text}` is not a comma-separated list of positive integers",
                           "pass the example input's shape, e.g. --input-shape 4,128")
    return check_input_shape(tuple(int(part) for part in parts), "--input-shape")


def check_input_shape(shape: tuple[int, ...], option: str = "the input shape") -> tuple[int, ...]:
    """`shape` if every size is positive and the tensor it describes is small enough to build as an example."""
    if not shape or any(size < 1 for size in shape):
        raise ModnormError(f"{option} {','.join(map(str, shape)) or '(empty)'} has a size below 1",
                           "give every dimension a positive size, e.g. 4,128")
    elements = 1
    for size in shape:
        elements *= size
    if elements > MAX_INPUT_ELEMENTS:
        raise ModnormError(f"{option} {','.join(map(str, shape))} describes {elements:,} elements, more than the "
                           f"{MAX_INPUT_ELEMENTS:,} an example input may have",
                           "use a batch of 1 or 2 and a short sequence: the graph is the same")
    return shape
