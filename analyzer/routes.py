"""The route chain: trace a model by the first route that gets through (fx with values, torch.export, the op log,
the module hierarchy alone), each failure recorded. One function that knows every route, so that no route module
imports another: tracing.py (fx), export_route.py, oplog.py and module_only.py each build on tracing.py only."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

from .errors import InputsDoNotFit, ModnormError, short_path
from .result import RouteAttempt
from .export_route import trace_export
from .module_only import trace_modules
from .oplog import trace_oplog
from . import tracing
from .tracing import TracedModel, _route_failure

__all__ = ["trace"]


def trace(model: nn.Module, example_inputs: tuple[Any, ...], user_file: str | None = None,
          leaf_types: tuple[type, ...] = (), tracer: str = "auto") -> TracedModel:
    """Trace `model` by the first route that gets through, each failure recorded in `attempts` with its file and
    line: the shape-aware fx tracer, `torch.export` (non-strict, on meta), the op log (oplog.py), and last the
    module hierarchy alone (module_only.py), which always succeeds and withholds what needs a graph.
    `tracer="fx" | "export" | "oplog" | "modules"` forces one route and raises its failure."""
    # routes are looked up on their module at call time, so a test may replace one (monkeypatch tracing.trace_fx)
    routes = {
        "fx": lambda attempts: tracing.trace_fx(model, example_inputs, user_file, leaf_types),
        "export": lambda attempts: trace_export(model, example_inputs, user_file, attempts),
        "oplog": lambda attempts: _explained(trace_oplog, "op log", model, example_inputs, user_file,
                                             leaf_types, attempts),
    }
    odd = [n for n, _ in model.named_modules() if not n.isprintable() or '"' in n or "\\" in n]
    if odd:  # every route writes module names into generated Python source, where these break it
        raise ModnormError(f"the model has submodules named {', '.join(map(repr, odd[:3]))}, which torch.fx "
                           "cannot write into generated code", "name submodules with letters, digits and "
                           "underscores (add_module / setattr)", user_file)
    from .weightstore import start_norms_ahead

    start_norms_ahead(model)  # conv and linear norms on the other core while the model is traced (CLI jobs only)
    with _experts_as_grouped_mm(model) as switched:
        traced = _first_route(model, routes, tracer, user_file)
    if switched:
        traced.attempts = [*traced.attempts[:-1], switched, *traced.attempts[-1:]]
    return traced


@contextlib.contextmanager
def _experts_as_grouped_mm(model: nn.Module) -> Iterator[RouteAttempt | None]:
    """transformers' eager experts loop (`for expert in expert_hit: ...`) iterates over the experts a batch hits, a
    data-dependent loop no graph route can read on meta. Its `grouped_mm` implementation computes the same function
    (same weights, same routing) without the loop: the experts are read through it, and the config restored."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "config")
               and getattr(m.config, "_experts_implementation", None) == "eager"}
    for config in configs.values():
        config._experts_implementation = "grouped_mm"
    try:
        yield (RouteAttempt("experts", True, "the eager experts loop (data-dependent) read through transformers' "
                            "grouped_mm implementation, the same function") if configs else None)
    finally:
        for config in configs.values():
            config._experts_implementation = "eager"


def _first_route(model: nn.Module, routes: dict[str, Any], tracer: str, user_file: str | None) -> TracedModel:
    if tracer in routes:
        return routes[tracer]([])
    if tracer == "modules":
        return trace_modules(model, "forced with --tracer modules", [])
    attempts: list[RouteAttempt] = []
    failures: list[ModnormError] = []
    for name, route in routes.items():
        try:
            traced = route(list(attempts))
        except InputsDoNotFit:
            raise  # every route would fail on these inputs, and the module-only one would hide it
        except ModnormError as failure:
            failures.append(failure)
            problem = failure.problem if len(failure.problem) <= 400 else failure.problem[:399] + "…"
            attempts.append(RouteAttempt("fx_values" if name == "fx" else name, False, problem,
                                         short_path(failure.file) if failure.file and failure.line else None,
                                         failure.line if failure.file else None))
            continue
        if attempts:
            traced.attempts = [*attempts, *traced.attempts[-1:]]
        return traced
    first = failures[0]
    return trace_modules(model, f"every graph route failed; the first stopped at "
                                f"{short_path(first.file) if first.file else 'the model'}"
                                f"{f':{first.line}' if first.line else ''}", attempts)


def _explained(route: Any, label: str, model: nn.Module, example_inputs: tuple[Any, ...], user_file: str | None,
               leaf_types: tuple[type, ...], attempts: list[RouteAttempt]) -> TracedModel:
    try:
        return route(model, example_inputs, user_file, leaf_types, attempts)
    except ModnormError:
        raise
    except Exception as exc:  # noqa: BLE001 - explained to the user
        raise _route_failure(exc, f"the {label} cannot run", user_file,
                             "a model built on the meta device has no values to branch on: make the branch depend "
                             "on shapes, mark the module as a leaf (--leaf), or raise --max-params so the model is "
                             "built on the CPU with real values") from exc
