"""Command-line option text to values: shapes, masses, keyword arguments, rule codes and options, output paths.
A malformed option is one line on stderr and exit 2 (`fail`), or a ModnormError naming the option (`error`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["EXIT_ERROR", "fail", "error", "parse_shape", "parse_mass_of", "parse_kwargs", "split_codes",
           "config_start", "check_output_file", "with_rule_options"]

EXIT_ERROR = 2


def fail(message: str) -> None:
    typer.echo(f"modnorm: error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def parse_shape(text: str | None, dtype: str | None = None) -> tuple[int, ...] | None:
    from .config import INPUT_DTYPES
    from .target import parse_input_shape

    if dtype is not None and dtype not in INPUT_DTYPES:
        fail(f"unknown --input-dtype `{dtype}`; use {', '.join(INPUT_DTYPES)}")
    if text is None:
        if dtype is not None:
            fail(f"--input-dtype {dtype} needs --input-shape (it sets the dtype of the input that --input-shape "
                  "describes); pass both, or neither to use the file's example_inputs()")
        return None
    return parse_input_shape(text)


def parse_mass_of(items: list[str]) -> tuple[tuple[str, float], ...]:
    from .config import check_value

    parsed = []
    for item in items:
        glob, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not glob:
            fail(f"--mass-of `{item}` must look like GLOB=VALUE (e.g. 'blocks.*.attn.*=2')")
        parsed.append((glob, check_value("hidden-mass", number, f"--mass-of `{item}`")))
    return tuple(parsed)


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    import ast

    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            fail(f"--kwargs `{item}` must look like NAME=VALUE (e.g. width=256)")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def split_codes(items: list[str]) -> tuple[str, ...]:
    return tuple(code.strip().upper() for item in items for code in item.split(",") if code.strip())


def config_start(model_path: Path) -> Path:
    """Where the search for pyproject.toml starts: the model's directory (the cwd if the path cannot resolve,
    e.g. a symlink loop, which loading then reports)."""
    try:
        return model_path.resolve().parent
    except (OSError, RuntimeError):
        return Path.cwd()


def check_output_file(path: Path | None, option: str = "--output-file") -> None:
    """Refuse before the analysis, not after it, an output path that cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise error(f"{option} `{path}` is a directory", "name a file inside it, e.g. "
                     f"{path / 'modnorm-report.json'}")
    if not path.parent.is_dir():
        raise error(f"{option} `{path}`: the directory `{path.parent}` does not exist",
                     "create the directory first or write the report elsewhere")


def error(problem: str, remedy: str, file: Any = None) -> Exception:
    from .errors import ModnormError

    return ModnormError(problem, remedy, file)


def with_rule_options(settings: Any, items: list[str]) -> Any:
    import ast
    import dataclasses

    options = {code: dict(values) for code, values in settings.rule_options.items()}
    for item in items:
        key, sep, value = item.partition("=")
        code, dot, name = key.partition(".")
        if not sep or not dot:
            fail(f"--rule-option `{item}` must look like CODE.NAME=VALUE (e.g. MN204.warn=5)")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        options.setdefault(code.upper(), {})[name.replace("-", "_")] = parsed
    return dataclasses.replace(settings, rule_options=options)
