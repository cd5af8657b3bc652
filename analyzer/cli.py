"""`modnorm`: the command line. Loads, traces, analyses, checks rules, reports; maps outcomes to exit 0 / 1 / 2.

Exit codes: 0 clean, 1 findings at or above --fail-on, 2 bad input or internal error (one paragraph, never a
traceback). Heavy imports happen inside the commands so that `modnorm --version` is fast.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from ._version import __version__
from .cli_options import (check_output_file, config_start, error, fail, parse_kwargs, parse_mass_of,
                          parse_shape, split_codes, with_rule_options)
from .config import SEVERITIES

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Static modular-norm analysis and linting of PyTorch models.")

EXIT_CLEAN, EXIT_FINDINGS = 0, 1
_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}  # info < warning < error


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modnorm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Static modular-norm analysis and linting of PyTorch models."""


@app.command()
def check(
    targets: List[str] = typer.Argument(None, help="Model files, each optionally with an entry: path.py[:NAME]. "
                                        "Without any, the `models` of [tool.modnorm] in pyproject.toml."),
    output_format: Optional[str] = typer.Option(None, "--output-format", "--format", "-f",
                                                envvar="MODNORM_OUTPUT_FORMAT",
                                                help="full | concise | json | json-lines | sarif | github | junit "
                                                "| html (one self-contained page; with -o)."),
    output_file: Optional[Path] = typer.Option(None, "--output-file", "-o", help="Write the report to this file."),
    statistics: bool = typer.Option(False, "--statistics", help="Print `count  code  name` per rule instead."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Full report: sharpness columns and per-block table."),
    with_probe: bool = typer.Option(False, "--probe", help="Also measure the bounds on real weights (modnorm probe)."),
    sweep: List[str] = typer.Option([], "--sweep", help="NAME=V1,V2,...: build the factory at each value (several "
                                    "--sweep give a grid) and fit how every quantity scales."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a picture (.png, .svg or .html): the sweep, or "
                                        "the per-layer profile of one model. Needs modnorm[plot]."),
    color: str = typer.Option("auto", help="auto | always | never (NO_COLOR and FORCE_COLOR are honoured)."),
    config: Optional[Path] = typer.Option(None, help="Read [tool.modnorm] from this pyproject.toml."),
    isolated: bool = typer.Option(False, help="Ignore every configuration file."),
    profile: Optional[str] = typer.Option(None, help="assumed (default: worst-case constants given stated floors "
                                          "on the RMS entering each normalizer) | certified (unconditional worst "
                                          "case) | modula (nominal)."),
    mass: Optional[str] = typer.Option(None, help="roles (input 1 : hidden m : output 1) | uniform."),
    hidden_mass: Optional[float] = typer.Option(None, help="Total mass of the hidden atoms (the m of 1:m:1)."),
    mass_of: List[str] = typer.Option([], "--mass-of", help="GLOB=VALUE: the matching atoms share VALUE."),
    loss: Optional[str] = typer.Option(None, help="xent | mse: the loss for the gradient Lipschitz bound."),
    device: Optional[str] = typer.Option(None, help="auto | meta | cpu: where to build the model."),
    tracer: Optional[str] = typer.Option(None, help="auto (shape-aware fx, then torch.export, then the op log, then modules only) | fx | export | oplog | modules."),
    leaf: List[str] = typer.Option([], "--leaf", help="Module class traced as one op (register its semantics "
                                   "with modnorm.register in the model file)."),
    weights: Optional[str] = typer.Option(None, help="init (the model's own init, default) or a checkpoint to "
                                          "audit: .safetensors, or a tensor state dict (.pt/.pth/.bin) loaded "
                                          "with torch.load(weights_only=True)."),
    max_params: Optional[int] = typer.Option(None, help="With --device auto, build on CPU up to this many "
                                                        "parameters (default 1e8)."),
    input_shape: Optional[str] = typer.Option(None, help="Example input shape, e.g. 4,128."),
    input_dtype: Optional[str] = typer.Option(None, help="long | float."),
    norm_input_rms: Optional[float] = typer.Option(None, help="Assume normalizer inputs have RMS >= this."),
    kwargs: List[str] = typer.Option([], "--kwargs", help="NAME=VALUE keyword arguments for the factory."),
    select: List[str] = typer.Option([], help="Rule codes or prefixes to enable (default ALL)."),
    ignore: List[str] = typer.Option([], help="Rule codes or prefixes to disable."),
    extend_select: List[str] = typer.Option([], help="Codes or prefixes to enable on top of --select."),
    rule_option: List[str] = typer.Option([], "--rule-option", help="CODE.NAME=VALUE, e.g. MN204.warn=5."),
    fail_on: Optional[str] = typer.Option(None, help="Lowest severity that makes the exit code 1: "
                                                     "error | warning (default) | info."),
    exit_zero: bool = typer.Option(False, help="Exit 0 even with findings (2 still on bad input)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="CPU cores to use (default: every core "
                                       "this process may run on): grid points of --sweep and several models run in "
                                       "up to this many processes, and a single model with two or more computes "
                                       "its weights' norms on a second thread. --jobs 1 stays on one core. The "
                                       "report is the same for every value."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A baseline file: the first run records "
                                            "today's findings in it, later runs report and fail only on new ones."),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="Rewrite the --baseline file with "
                                         "today's findings (accept them)."),
    timeout: Optional[float] = typer.Option(None, help="Seconds the model's code (import, build, trace) may run "
                                            "before it is stopped with exit 2 (default 600; per size with "
                                            "--sweep)."),
) -> None:
    """Analyse model files and report per-layer modular-norm quantities and findings.

    Exit codes: 0 no findings at or above --fail-on, 1 findings, 2 bad input or configuration. The model's code
    runs in a child process: its exits, hangs (--timeout), crashes and prints cannot change the exit code or the
    report (MODNORM_WORKER=inline runs it in this process instead, e.g. for a debugger).
    """
    try:
        settings = _settings(targets, config, isolated, output_format=output_format, profile=profile, mass=mass,
                             hidden_mass=hidden_mass, mass_of=parse_mass_of(mass_of) or None, loss=loss,
                             device=device, max_params=max_params, norm_input_rms=norm_input_rms, weights=weights,
                             tracer=tracer, leaf=tuple(leaf) or None, timeout=timeout,
                             select=split_codes(select) or None, ignore=split_codes(ignore) or None,
                             extend_select=split_codes(extend_select) or None, fail_on=fail_on)
        settings = with_rule_options(settings, rule_option)
        settings = _validate(settings, color)
        shape, factory_kwargs = parse_shape(input_shape, input_dtype), parse_kwargs(kwargs)
        check_output_file(output_file)
        check_output_file(plot, "--plot")
        sweep = list(sweep) or list(settings.sweep)
        from . import progress
        from .parallel import cores_each, run_all, start, stop, usable_cores

        jobs = jobs or usable_cores()
        # Several models: the pool's imports overlap ours. A sweep runs in one isolated child, which starts its own
        # pool (a server started here would import torch on a core the sweep needs, for nothing).
        start(1 if sweep else min(jobs, len(targets or [])))

        progress.allow((settings.output_format or "full") in ("full", "concise"))  # bars on stderr, never in JSON
        chosen = _targets(targets, settings)
        if sweep:
            results = [_run_sweep(chosen, settings, sweep, shape, input_dtype, factory_kwargs, jobs)]
        else:
            cores = cores_each(jobs, len(chosen))
            try:
                results = run_all(_run, [(target, settings, shape, input_dtype, factory_kwargs, cores)
                                         for target in chosen], jobs)
            finally:
                stop()  # parallel.stop: else the server outlives us by its teardown, holding our stderr
        if plot is not None:
            _plot(results, plot)
        results = _with_baseline(results, baseline, update_baseline, settings.root)
        _emit(results, settings, statistics, output_file, color, verbose)
        violated = with_probe and _probe_all(results, settings, shape, input_dtype, factory_kwargs, color)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one paragraph and exit 2
        fail(_explain(exc))
        return
    if violated:
        raise typer.Exit(EXIT_FINDINGS)
    worst = max((_SEVERITY_RANK[f.severity] for r in results for f in r.findings), default=-1)
    raise typer.Exit(EXIT_FINDINGS if worst >= _SEVERITY_RANK[settings.fail_on] and not exit_zero else EXIT_CLEAN)


def _with_baseline(results: list[Any], path: Path | None, update: bool, root: str | None) -> list[Any]:
    """`--baseline`: record the findings when the file is new (or with --update-baseline), else drop the recorded
    ones so that only new findings are reported and counted for the exit code."""
    import dataclasses

    from . import baseline
    from .errors import ModnormError

    if path is None:
        if update:
            raise ModnormError("--update-baseline needs the file to rewrite",
                               "pass it as --baseline modnorm-baseline.json")
        return results
    if update or not path.exists():
        count = baseline.record(path, results, root)
        typer.echo(f"modnorm: recorded {count} finding{'s' if count != 1 else ''} in the baseline {path}; "
                   "later runs report only new ones", err=True)
        return [dataclasses.replace(r, findings=(), baselined=len(r.findings)) for r in results]
    kept, fixed = baseline.apply(results, baseline.load(path), root)
    left_out = sum(r.baselined for r in kept)
    if left_out:
        typer.echo(f"modnorm: {left_out} finding{'s' if left_out != 1 else ''} recorded in the baseline {path} "
                   "left out", err=True)
    if fixed:
        typer.echo(f"modnorm: {fixed} finding{'s' if fixed != 1 else ''} of the baseline {path} "
                   f"{'are' if fixed != 1 else 'is'} gone; --update-baseline drops {'them' if fixed != 1 else 'it'}",
                   err=True)
    return kept


def _settings(targets: list[str] | None, config: Path | None, isolated: bool, **overrides: Any) -> Any:
    from .config import Settings, find_config, load_config, merge
    from .errors import ModnormError
    from .target import parse_target

    base = Settings()
    if config is not None:
        if not config.is_file():
            raise ModnormError(f"no such configuration file `{config}`", "pass the path of a pyproject.toml")
        base = load_config(config)
    elif not isolated:
        found = find_config(config_start(parse_target(targets[0])[0]) if targets else Path.cwd())
        if found is not None:
            base = load_config(found)
    return merge(base, **overrides)


_CLI_SPELLING = {"mass-scheme": "--mass", "mass": "--mass-of", "rules": "--rule-option"}


def _validate(settings: Any, color: str) -> Any:
    """The merged settings checked by config.validate (the checks [tool.modnorm] gets), named as options."""
    from .config import COLORS, validate
    from modnorm.rules import all_rules

    if color not in COLORS:
        fail(f"unknown --color `{color}`; use {', '.join(COLORS)}")
    rules = all_rules()
    for code in settings.select + settings.ignore + settings.extend_select:
        if code != "ALL" and not any(c.startswith(code) for c in rules):
            fail(f"`{code}` is no rule code or prefix; `modnorm rules` lists them")
    return validate(settings, lambda key: _CLI_SPELLING.get(key, f"--{key}"))


def _targets(targets: list[str] | None, settings: Any) -> list[str]:
    from .errors import ModnormError

    if targets:
        return list(targets)
    if settings.models:
        root = Path(settings.root or ".")
        return [str(root / model) if not Path(model).is_absolute() else model for model in settings.models]
    raise ModnormError("no model to check", "pass a model file (`modnorm check model.py`) or list them in "
                       "pyproject.toml under [tool.modnorm] as models = [\"model.py:build_model\"]")


def _explain(exc: BaseException) -> str:
    from .errors import internal_error

    return str(internal_error(exc))


def _run(target: str, settings: Any, input_shape: tuple[int, ...] | None, input_dtype: str | None,
         kwargs: dict[str, Any], cores: int) -> Any:
    """One check on `cores` cores, run in the worker process (worker.py): the model's code cannot exit, hang or
    print for us."""
    from .check import check_model
    from .target import check_model_path, parse_target
    from .worker import run_isolated

    check_model_path(parse_target(target)[0])
    return run_isolated(check_model, target, settings, input_shape=input_shape, input_dtype=input_dtype,
                        kwargs=kwargs, target=target, timeout=settings.timeout, cores=cores)


def _run_sweep(targets: list[str], settings: Any, items: list[str], input_shape: Any, input_dtype: str | None,
               kwargs: dict[str, Any], jobs: int = 1) -> Any:
    from .errors import ModnormError
    from .parallel import cores_each
    from .sweep import parse_sweep
    from .target import check_model_path, parse_target
    from .worker import run_isolated

    if len(targets) != 1:
        raise ModnormError(f"--sweep takes one model, not {len(targets)}", "pass a single path.py:factory")
    check_model_path(parse_target(targets[0])[0])
    axes = parse_sweep(items)
    points = math.prod(len(axis.values) for axis in axes)  # --timeout is per model built
    return run_isolated(_sweep_job, targets[0], settings, axes, input_shape, input_dtype, kwargs, jobs,
                        target=targets[0], timeout=settings.timeout * max(points, 1), cores=cores_each(jobs, points))


def _sweep_job(target: str, settings: Any, axes: Any, input_shape: Any, input_dtype: str | None,
               kwargs: dict[str, Any], jobs: int) -> Any:
    from .parallel import start, stop

    start(jobs)  # the pool's fork server imports torch while this child imports the rest and builds the first point
    from .check import check_sweep

    try:
        return check_sweep(target, settings, axes, input_shape=input_shape, input_dtype=input_dtype, kwargs=kwargs,
                           jobs=jobs)
    finally:
        stop()


def _plot(results: list[Any], path: Path) -> None:
    from .plot import plot_layers, plot_sweep

    result = results[0]
    if result.sweep is not None:
        plot_sweep(result.sweep, path)
    else:
        plot_layers(result.analysis, path)
    typer.echo(f"modnorm: wrote {path}", err=True)


def _console(color: str, file: Any = None) -> Any:
    import os

    from rich.console import Console

    interactive = file is None and sys.stdout.isatty()
    force = {"always": True, "never": False}.get(color)
    if force is None and os.environ.get("FORCE_COLOR") and file is None:
        force = True
    # Not a terminal: widen instead of squeezing the table into 80 columns.
    width = None if interactive else max(int(os.environ.get("COLUMNS", "0") or 0), 200)
    return Console(file=file, width=width, force_terminal=force if force is not None else None,
                   no_color=color == "never" or (force is None and bool(os.environ.get("NO_COLOR"))),
                   highlight=False, soft_wrap=False)


def _emit(results: list[Any], settings: Any, statistics: bool, output_file: Path | None, color: str,
          verbose: bool = False) -> None:
    import io

    from . import formats
    from .report import render_full

    output_format = settings.output_format or "full"
    if statistics:
        text = formats.statistics(results)
    elif output_format == "full":
        buffer = io.StringIO() if output_file else None
        console = _console("never" if output_file else color, buffer)
        for result in results:
            if result.sweep is not None:
                from .report import render_sweep

                render_sweep(result.sweep, console)
            render_full(result.analysis, result.findings, console, suppressed=result.suppressed, verbose=verbose,
                        root=settings.root, note=result.note, baselined=result.baselined, changes=result.changes)
        text = buffer.getvalue() if buffer is not None else None
    elif output_format == "html":
        from .html import render_html

        text = render_html(results, settings.root)
    else:
        text = formats.render(output_format, results, settings.root)
    if output_format == "github":
        formats.append_step_summary(results, settings.root)
    if text is None:
        return
    if output_file:
        try:
            output_file.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
        except OSError as exc:
            raise error(f"--output-file `{output_file}` cannot be written ({exc.strerror or exc})",
                         "choose a writable path")
    elif text:
        typer.echo(text)


@app.command("probe")
def probe_command(
    target: str = typer.Argument(..., help="Model file, optionally with an entry: path.py[:NAME]."),
    output_format: str = typer.Option("full", "--output-format", "--format", "-f", help="full | json."),
    weights: Optional[str] = typer.Option(None, help="init (default) or a checkpoint (.safetensors/.pt) to load; "
                                          "the bounds are computed from the same weights that are measured."),
    input_shape: Optional[str] = typer.Option(None, help="Example input shape, e.g. 4,128."),
    input_dtype: Optional[str] = typer.Option(None, help="long | float."),
    kwargs: List[str] = typer.Option([], "--kwargs", help="NAME=VALUE keyword arguments for the factory."),
    profile: str = typer.Option("assumed", help="assumed (default; its normalizer floors are checked) | certified "
                                "| modula (nominal bounds may be exceeded)."),
    trials: int = typer.Option(4, help="Random directions per measurement (at least 1)."),
    max_params: Optional[int] = typer.Option(None, help="Refuse models above this many parameters (default "
                                                        "1e8): the probe builds the model on the CPU."),
    timeout: Optional[float] = typer.Option(None, help="Seconds the model's code may run (default 600)."),
) -> None:
    """Measure on real weights what the calculus bounds: bound, measured, tightness.

    Exit 0 when every measurement is within its bound, 1 when one is not (a modnorm bug: please report it),
    2 on bad input.
    """
    import json

    try:
        from .config import PROBE_FORMATS, Settings, check_value, validate
        from .target import check_model_path, parse_target
        from .worker import run_isolated

        if output_format not in PROBE_FORMATS:
            fail(f"unknown --output-format `{output_format}`; use {', '.join(PROBE_FORMATS)}")
        if isinstance(trials, bool) or trials < 1:
            fail(f"--trials must be at least 1 (random directions per measurement), not {trials}")
        settings = validate(Settings(device="cpu", profile=profile, weights=weights,
                                     **{k: v for k, v in (("max_params", max_params), ("timeout", timeout))
                                        if v is not None}))
        shape, factory_kwargs = parse_shape(input_shape, input_dtype), parse_kwargs(kwargs)
        check_model_path(parse_target(target)[0])
        result, measured = run_isolated(_probe_job, target, settings, shape, input_dtype, factory_kwargs, trials,
                                        target=target, timeout=settings.timeout)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        fail(_explain(exc))
        return
    if output_format == "json":
        typer.echo(json.dumps({"schema": "modnorm-probe/1", "notes": list(measured.notes), "rows": [
            {"what": r.what, "bound": _finite(r.bound), "measured": _finite(r.measured),
             "tightness": _finite(r.tightness), "kind": r.kind, "violated": r.violated,
             "assumption_broken": r.assumption_broken, "op": r.op, "note": r.note}
            for r in measured.rows]}, indent=2, allow_nan=False))
    else:
        from .report import render_probe

        render_probe(measured, _console("auto"))
    raise typer.Exit(EXIT_FINDINGS if measured.violations or measured.broken_assumptions else EXIT_CLEAN)


def _probe_job(target: str, settings: Any, input_shape: Any, input_dtype: str | None, kwargs: dict[str, Any],
               trials: int) -> tuple[Any, Any]:
    """In the worker: the analysis and the measurement, both of the same weights (init or the checkpoint)."""
    from .check import check_model

    result = check_model(target, settings, input_shape=input_shape, input_dtype=input_dtype, kwargs=kwargs)
    return result, _measure_job(result.analysis, target, settings, input_shape, input_dtype, kwargs, trials)


def _measure_job(analysis: Any, target: str, settings: Any, input_shape: Any, input_dtype: str | None,
                 kwargs: dict[str, Any], trials: int = 4) -> Any:
    from .probe import probe

    from .loading import load_with_weights

    model, inputs = load_with_weights(target, settings.weights, input_shape, input_dtype, kwargs, settings.max_params)
    return probe(model, inputs, analysis, trials=trials)


def _probe_all(results: list[Any], settings: Any, input_shape: Any, input_dtype: str | None,
               kwargs: dict[str, Any], color: str) -> bool:
    """`check --probe`: the probe table under each report (stderr for machine formats); True on a violation."""
    from .worker import run_isolated

    violated = False
    machine = (settings.output_format or "full") != "full"
    for result in results:
        measured = run_isolated(_measure_job, result.analysis, result.target, settings, input_shape, input_dtype,
                                kwargs, target=result.target, timeout=settings.timeout)
        from .report import render_probe

        render_probe(measured, _console(color, sys.stderr) if machine else _console(color))
        violated = violated or bool(measured.violations) or bool(measured.broken_assumptions)
    return violated


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@app.command("rules")
def list_rules(output_format: str = typer.Option("table", "--output-format", "--format", "-f",
                                                 help="table | markdown | json.")) -> None:
    """List every rule with its code, name and default severity."""
    import json

    from modnorm.rules import all_rules, rules_markdown

    from .config import RULES_FORMATS

    if output_format not in RULES_FORMATS:
        fail(f"unknown --output-format `{output_format}`; use {', '.join(RULES_FORMATS)}")
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

    from .config import RULE_FORMATS

    if output_format not in RULE_FORMATS:
        fail(f"unknown --output-format `{output_format}`; use {', '.join(RULE_FORMATS)}")
    rule = all_rules().get(code.upper())
    if rule is None:
        fail(f"unknown rule `{code}`; `modnorm rules` lists them")
        return
    from .docsite import absolute_links, rule_page, rule_url

    doc = absolute_links(inspect.cleandoc(rule.__doc__ or ""), rule_page(rule.code))
    if output_format == "json":
        typer.echo(json.dumps({"code": rule.code, "name": rule.name, "severity": rule.severity,
                               "options": rule.options, "doc": doc, "url": rule_url(rule.code)}, indent=2))
    else:
        typer.echo(f"# {rule.code} {rule.name} ({rule.severity})\n\n{doc}\n\nOnline: {rule_url(rule.code)}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
