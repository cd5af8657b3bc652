"""One check, end to end: load a model file, trace, analyse, run the rules, apply suppressions.

This is what `modnorm check` runs once per model; the CLI only parses options and renders the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import Settings
from .result import Analysis, Finding

__all__ = ["CheckResult", "check_model", "check_analysis", "selection_of"]


@dataclass(frozen=True)
class CheckResult:
    target: str
    analysis: Analysis
    findings: tuple[Finding, ...]  # after per-module ignores and inline suppressions, MN001 included
    suppressed: int = 0
    sweep: Any = None  # modnorm.sweep.Sweep when the check swept sizes (analysis is then the last size)
    note: str = ""  # e.g. where the findings of a Hugging Face config point (the transformers source)
    baselined: int = 0  # findings left out because the baseline file records them (baseline.py)
    changes: tuple[Any, ...] = ()  # result.Change: the fixes that matter most, ranked (rules.rank_changes)


def check_sweep(target: str, settings: Settings, axes: Any, *, input_shape: tuple[int, ...] | None = None,
                input_dtype: str | None = None, kwargs: dict[str, Any] | None = None, jobs: int = 1) -> CheckResult:
    """Every grid point analysed (in `jobs` worker processes); the findings of the last (largest) size plus the
    MN4xx sweep findings."""
    from . import suppression, sweep as sweeping
    from modnorm.rules import run_sweep_rules, sort_findings

    result, last = sweeping.run(target, settings, axes, check_model, input_shape=input_shape,
                                input_dtype=input_dtype, kwargs=kwargs, jobs=jobs)
    selection = selection_of(settings)
    file = last.analysis.model.file
    extra = [_located(f, file, last.analysis.model.entry_line) for f in run_sweep_rules(result, selection)]
    kept, suppressed = suppression.apply(extra, [file, *(f.file for f in extra if f.file)], selection.enabled, None)
    return CheckResult(target, last.analysis, sort_findings([*last.findings, *kept]), last.suppressed + suppressed,
                       sweep=result, changes=last.changes)


def _leaf_types(model: Any, names: tuple[str, ...], file: str) -> tuple[type, ...]:
    """The module classes named by --leaf (traced as one call_module node, looked up in the registry)."""
    from .errors import ModnormError

    classes = {type(m).__name__: type(m) for m in model.modules()}
    missing = [n for n in names if n not in classes]
    if missing:
        raise ModnormError(f"--leaf names {', '.join(missing)}, which the model does not use",
                           f"module classes in this model: {', '.join(sorted(classes))}", file)
    return tuple(classes[n] for n in names)


def _located(finding: Finding, file: str, line: int | None) -> Finding:
    """A finding the graph could not place (e.g. inside nn.Sequential) points at the model's entry."""
    if finding.file and finding.line:
        return finding
    return replace(finding, file=finding.file or file, line=finding.line or line)


def _modules_of(analysis: Any) -> set[str]:
    return {layer.name for layer in analysis.layers} | {m.module for m in analysis.merges if m.module}


def selection_of(settings: Settings) -> Any:
    from modnorm.rules import RuleSelection

    return RuleSelection(settings.select, settings.ignore, settings.extend_select, settings.rule_options,
                         settings.per_module_ignores)


def check_model(target: str, settings: Settings, *, input_shape: tuple[int, ...] | None = None,
                input_dtype: str | None = None, kwargs: dict[str, Any] | None = None) -> CheckResult:
    from .calculus import Options, analyze_traced
    from .loading import load
    from .routes import trace

    loaded = load(target, device=settings.device, max_params=settings.max_params, input_shape=input_shape,
                  input_dtype=input_dtype, kwargs=kwargs or {}, weights=settings.weights)
    source, entry_line, note = _source_of(loaded)
    traced = trace(loaded.model, loaded.inputs, user_file=source, tracer=settings.tracer,
                   leaf_types=_leaf_types(loaded.model, settings.leaf, loaded.file))
    options = Options(profile=settings.profile, mass=settings.mass, hidden_mass=settings.hidden_mass,
                      mass_of=settings.mass_of, norm_input_rms=settings.norm_input_rms, loss=settings.loss)
    from .weights import audit_progress

    with audit_progress(loaded.checkpoint):  # a progress bar while a checkpoint is read (terminal, text output)
        analysis = analyze_traced(traced, options, user_file=source, entry=loaded.entry,
                                  device=loaded.device, init_laws=loaded.init_laws, checkpoint=loaded.checkpoint,
                                  example_inputs=tuple(loaded.inputs))
    if loaded.checkpoint is not None:
        analysis = replace(analysis, model=replace(analysis.model, weights=str(settings.weights)))
    # The header names what the user passed (a config.json for Hugging Face), the findings the code lines.
    analysis = replace(analysis, model=replace(analysis.model, file=loaded.file, entry_line=entry_line))
    note = "; ".join(n for n in (note, loaded.note) if n)
    return replace(check_analysis(target, analysis, settings, source, entry_line), note=note)


def check_analysis(target: str, analysis: Analysis, settings: Settings, source: str | None,
                   entry_line: int | None) -> CheckResult:
    """Rules, per-module ignores and inline suppressions on an analysis: what `modnorm check` and the pytest
    plugin (`assert_well_normed`) both report, so that the two give the same findings."""
    from . import suppression
    from modnorm.rules import all_rules, rank_changes, run_rules, sort_findings

    selection = selection_of(settings)
    findings = tuple(_located(f, source, entry_line) if source else f for f in run_rules(analysis, selection))
    unused_rule = all_rules()["MN001"]()

    def unused(s: suppression.Suppression, why: str) -> Finding:
        return unused_rule.finding(f"unused suppression: {why}", fix="remove the comment or correct its code",
                                   file=s.file, line=s.line)

    files = [*([source] if source else []), *(f.file for f in findings if f.file)]
    kept, suppressed = suppression.apply(findings, files, selection.enabled,
                                         unused if selection.enabled("MN001") else None)

    from .grouping import group_by_role

    return CheckResult(target, analysis, sort_findings(group_by_role(kept, _modules_of(analysis))), suppressed,
                       changes=rank_changes(analysis, kept, selection))


def _source_of(loaded: Any) -> tuple[str, int | None, str]:
    """The file findings point at, the line of the entry in it, and a note when that is not the target.

    A Hugging Face config.json has no code: its findings point at the transformers source of the model's class
    (where each module is called in `forward`), and the report says so."""
    import inspect

    from .hf import is_hf_target

    if not is_hf_target(Path(loaded.file)):
        return loaded.file, loaded.entry_line, ""
    klass = type(loaded.model)
    try:
        source = inspect.getsourcefile(klass)
        line = inspect.getsourcelines(klass)[1]
    except (OSError, TypeError):
        return loaded.file, None, ""
    if source is None:
        return loaded.file, None, ""
    import transformers

    config = "config.json" if Path(loaded.file).is_dir() else Path(loaded.file).name
    note = (f"{klass.__name__} built from {config} with transformers {transformers.__version__}; "
            f"findings point at its source, {source}")
    return str(Path(source).resolve()), line, note
