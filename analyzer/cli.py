"""`modnorm`: the command line. Loads, traces, analyses, checks rules, reports; maps outcomes to exit 0 / 1 / 2.

Exit codes: 0 clean, 1 findings at or above --fail-on, 2 bad input or internal error (one paragraph, never a
traceback). Heavy imports happen inside the commands so that `modnorm --version` is fast.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

import typer

from ._version import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Static modular-norm analysis and linting of PyTorch models.")

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modnorm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Static modular-norm analysis and linting of PyTorch models."""


def _fail(message: str) -> None:
    typer.echo(f"modnorm: error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        _fail(f"--input-shape `{text}` is not a comma-separated list of integers (e.g. 4,128)")
    return None


def _parse_mass_of(items: list[str]) -> tuple[tuple[str, float], ...]:
    parsed = []
    for item in items:
        glob, sep, value = item.rpartition("=")
        try:
            parsed.append((glob, float(value)))
        except ValueError:
            sep = ""
        if not sep or not glob:
            _fail(f"--mass-of `{item}` must look like GLOB=VALUE (e.g. 'blocks.*.attn.*=2')")
    return tuple(parsed)


def _parse_kwargs(items: list[str]) -> dict[str, Any]:
    import ast

    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            _fail(f"--kwargs `{item}` must look like NAME=VALUE (e.g. width=256)")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _split_codes(items: list[str]) -> tuple[str, ...]:
    return tuple(code.strip().upper() for item in items for code in item.split(",") if code.strip())


@app.command()
def check(
    target: str = typer.Argument(..., help="Model file, optionally with an entry: path.py[:NAME]."),
    output_format: str = typer.Option("full", "--output-format", "--format", "-f", envvar="MODNORM_OUTPUT_FORMAT",
                                      help="full | json."),
    profile: str = typer.Option("certified", help="certified (worst-case constants) | modula (nominal constants)."),
    mass: str = typer.Option("roles", help="roles (input 1 : hidden m : output 1) | uniform."),
    hidden_mass: float = typer.Option(1.0, help="Total mass of the hidden atoms (the m of 1:m:1)."),
    mass_of: List[str] = typer.Option([], "--mass-of", help="GLOB=VALUE: the matching atoms share VALUE."),
    device: str = typer.Option("auto", help="auto | meta | cpu: where to build the model."),
    max_params: int = typer.Option(100_000_000, help="With --device auto, build on CPU up to this many parameters."),
    input_shape: Optional[str] = typer.Option(None, help="Example input shape, e.g. 4,128."),
    input_dtype: Optional[str] = typer.Option(None, help="long | float."),
    norm_input_rms: Optional[float] = typer.Option(None, help="Assume normalizer inputs have RMS >= this."),
    kwargs: List[str] = typer.Option([], "--kwargs", help="NAME=VALUE keyword arguments for the factory."),
    select: List[str] = typer.Option([], help="Rule codes or prefixes to enable (default ALL)."),
    ignore: List[str] = typer.Option([], help="Rule codes or prefixes to disable."),
    extend_select: List[str] = typer.Option([], help="Codes or prefixes to enable on top of --select."),
    fail_on: str = typer.Option("warning", help="Lowest severity that makes the exit code 1: error|warning|info."),
    exit_zero: bool = typer.Option(False, help="Exit 0 even with findings (2 still on bad input)."),
) -> None:
    """Analyse a model file and report per-layer modular-norm quantities and findings."""
    if output_format not in ("full", "json"):
        _fail(f"unknown --output-format `{output_format}`; use full or json")
    if fail_on not in _SEVERITY_RANK:
        _fail(f"unknown --fail-on `{fail_on}`; use error, warning or info")
    if profile not in ("certified", "modula"):
        _fail(f"unknown --profile `{profile}`; use certified or modula")
    if device not in ("auto", "meta", "cpu"):
        _fail(f"unknown --device `{device}`; use auto, meta or cpu")
    try:
        analysis, findings = _run(target, profile, mass, hidden_mass, _parse_mass_of(mass_of), device, max_params,
                                  _parse_shape(input_shape), input_dtype, norm_input_rms, _parse_kwargs(kwargs),
                                  _split_codes(select) or ("ALL",), _split_codes(ignore), _split_codes(extend_select))
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one paragraph and exit 2
        _fail(_explain(exc))
        return
    _emit(analysis, findings, output_format)
    worst = max((_SEVERITY_RANK[f.severity] for f in findings), default=-1)
    raise typer.Exit(EXIT_FINDINGS if worst >= _SEVERITY_RANK[fail_on] and not exit_zero else EXIT_CLEAN)


def _explain(exc: BaseException) -> str:
    from .errors import ModnormError

    if isinstance(exc, ModnormError):
        return str(exc)
    return (f"internal error: {type(exc).__name__}: {exc}. This is a bug in modnorm; please report it with the "
            f"model file (run with MODNORM_TRACEBACK=1 for the traceback)")


def _run(target: str, profile: str, mass: str, hidden_mass: float, mass_of: tuple, device: str, max_params: int,
         input_shape: tuple[int, ...] | None, input_dtype: str | None, norm_input_rms: float | None,
         kwargs: dict[str, Any], select: tuple, ignore: tuple, extend_select: tuple) -> tuple[Any, tuple]:
    import os

    from .calculus import Options, analyze_traced
    from .loading import load
    from .tracing import trace

    try:
        loaded = load(target, device=device, max_params=max_params, input_shape=input_shape,
                      input_dtype=input_dtype, kwargs=kwargs)
        traced = trace(loaded.model, loaded.inputs, user_file=loaded.file)
        options = Options(profile=profile, mass=mass, hidden_mass=hidden_mass, mass_of=mass_of,
                          norm_input_rms=norm_input_rms)
        analysis = analyze_traced(traced, options, user_file=loaded.file, entry=loaded.entry, device=loaded.device)
        from modnorm.rules import RuleSelection, run_rules

        findings = run_rules(analysis, RuleSelection(select, ignore, extend_select))
    except Exception:
        if os.environ.get("MODNORM_TRACEBACK"):
            import traceback

            traceback.print_exc()
        raise
    return analysis, findings


def _emit(analysis: Any, findings: tuple, output_format: str) -> None:
    from .report import render_full, to_json

    if output_format == "json":
        typer.echo(to_json(analysis, findings))
    else:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 160)
        render_full(analysis, findings, console)


def rules_markdown() -> str:
    """The rules table of README.md, generated from the rule docs (a test keeps README in sync)."""
    from modnorm.rules import all_rules

    lines = ["| code | name | severity | what it does |", "| --- | --- | --- | --- |"]
    for code, rule in all_rules().items():
        summary = " ".join(rule.__doc__.split("## What it does")[1].split("##")[0].split())
        lines.append(f"| {code} | {rule.name} | {rule.severity} | {summary} |")
    return "\n".join(lines)


@app.command("rules")
def list_rules(output_format: str = typer.Option("table", "--output-format", "--format", "-f",
                                                 help="table | markdown | json.")) -> None:
    """List every rule with its code, name and default severity."""
    import json

    from modnorm.rules import all_rules

    if output_format == "markdown":
        typer.echo(rules_markdown())
        return
    rules = all_rules()
    if output_format == "json":
        typer.echo(json.dumps([{"code": c, "name": r.name, "severity": r.severity, "options": r.options}
                               for c, r in rules.items()], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("code", "name", "severity")
    for code, rule in rules.items():
        table.add_row(code, rule.name, rule.severity)
    Console().print(table)


@app.command("rule")
def explain_rule(code: str = typer.Argument(..., help="A rule code, e.g. MN201."),
                 output_format: str = typer.Option("text", "--output-format", "--format", "-f",
                                                   help="text | json.")) -> None:
    """Print a rule's documentation."""
    import inspect
    import json

    from modnorm.rules import all_rules

    rule = all_rules().get(code.upper())
    if rule is None:
        _fail(f"unknown rule `{code}`; `modnorm rules` lists them")
        return
    doc = inspect.cleandoc(rule.__doc__ or "")
    if output_format == "json":
        typer.echo(json.dumps({"code": rule.code, "name": rule.name, "severity": rule.severity,
                               "options": rule.options, "doc": doc}, indent=2))
    else:
        typer.echo(f"# {rule.code} {rule.name} ({rule.severity})\n\n{doc}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
