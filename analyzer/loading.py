"""Load `model.py[:NAME]`: import the file, find the model, build it on meta (and on CPU when small)."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import ModnormError, frame_of_exception
from .initlaw import laws_of, record_init
from .target import check_input_shape, check_model_path, parse_target

__all__ = ["LoadedModel", "load", "parse_target", "count_parameters"]

DEFAULT_MAX_PARAMS = 100_000_000


@dataclass
class LoadedModel:
    model: nn.Module  # the model analysed: real weights on CPU when small, else on meta
    inputs: tuple[Any, ...]
    file: str
    entry: str
    device: str  # "cpu" | "meta"
    parameters: int
    entry_line: int | None = None  # where the entry is defined: findings with no line of their own point here
    init_laws: dict[str, Any] | None = None  # how the meta build initialised each parameter (initlaw.py)
    checkpoint: Any = None  # (weights.Checkpoint, model name -> stored name) for --weights PATH
    note: str = ""  # how it was built when that is not the usual way (the meta build failed: built on the CPU)


def _import(path: Path) -> Any:
    check_model_path(path)
    if path.suffix != ".py":
        raise ModnormError(f"`{path}` is not a Python file",
                           "pass a .py file that defines the model (checkpoints go to --weights)", path)
    name = f"_modnorm_model_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ModnormError(f"syntax error: {exc.msg}", "fix the file so that `python` can import it",
                           path, exc.lineno) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed at import time
        frame = frame_of_exception(exc, str(path))
        raise ModnormError(f"importing the file raised {type(exc).__name__}: {exc}",
                           "fix the error so that the file imports (modnorm runs it as a module)",
                           frame[0] if frame else path, frame[1] if frame else None) from exc
    finally:
        sys.path.pop(0)
    return module


def _candidates(module: Any, path: Path) -> list[tuple[str, Any]]:
    """Module-level instances, then no-argument nn.Module subclasses defined in this file."""
    instances = [(n, v) for n, v in vars(module).items() if isinstance(v, nn.Module) and not n.startswith("_")]
    if instances:
        return instances
    classes = []
    for n, v in vars(module).items():
        if (inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
                and not n.startswith("_") and _constructible(v)):
            classes.append((n, v))
    return classes


def _constructible(klass: type) -> bool:
    try:
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def _find_entry(module: Any, path: Path, name: str | None) -> tuple[str, Any]:
    if name is not None:
        if not hasattr(module, name):
            found = ", ".join(n for n, _ in _candidates(module, path)) or "none"
            raise ModnormError(f"`{name}` is not defined in the file (candidates: {found})",
                               "name a module instance, an nn.Module subclass or a factory function", path)
        return name, getattr(module, name)
    if callable(getattr(module, "build_model", None)):
        return "build_model", module.build_model
    candidates = _candidates(module, path)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModnormError("no model found: the file defines no build_model(), no module-level nn.Module instance "
                           "and no nn.Module subclass constructible without arguments",
                           "add `def build_model(): return MyModel(...)` or pass path.py:NAME", path)
    names = ", ".join(n for n, _ in candidates)
    raise ModnormError(f"several models found ({names})", f"pick one with {path}:NAME", path)


def _build(entry: Any, name: str, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(entry, nn.Module):
        return entry
    if not callable(entry):
        raise ModnormError(f"`{name}` is neither an nn.Module nor callable", "name a model or a factory", path)
    try:
        built = entry(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        frame = frame_of_exception(exc, str(path))
        raise ModnormError(f"building the model with `{name}({_kwargs_text(kwargs)})` raised "
                           f"{type(exc).__name__}: {exc}", "fix the factory, or pass the keyword arguments it needs "
                           "with --kwargs", frame[0] if frame else path, frame[1] if frame else None) from exc
    if not isinstance(built, nn.Module):
        raise ModnormError(f"`{name}()` returned {type(built).__name__}, not an nn.Module",
                           "return the model from the factory", path)
    return built


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _build_on_cpu_instead(entry: Any, name: str, path: Path, kwargs: dict[str, Any], seed: int, max_params: int,
                          failure: ModnormError) -> tuple[nn.Module, str]:
    """The meta build failed: build on the CPU (the model's real init), refuse above --max-params, and say so."""
    torch.manual_seed(seed)
    try:
        model = _build(entry, name, path, kwargs)
    except ModnormError:
        raise failure from None  # fails on the CPU too: the meta error is the one to read
    parameters = count_parameters(model)
    if parameters > max_params:
        raise ModnormError(f"building on the meta device failed ({failure.problem}), and the CPU build has "
                           f"{parameters:,} parameters, more than --max-params {max_params:,}",
                           "make the constructor work on meta (no .item()/.tolist() on tensors it creates), or "
                           "raise --max-params if the machine has the memory", path)
    first = failure.problem.splitlines()[0] if failure.problem else "error"
    return model, (f"built on the CPU: the meta build failed ({first[:200]}); {parameters:,} parameters, "
                   f"norms measured on the model's own init")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _example_inputs(module: Any, model: nn.Module, path: Path, shape: tuple[int, ...] | None,
                    dtype: str | None) -> tuple[Any, ...]:
    if shape is None and dtype is not None:
        raise ModnormError(f"--input-dtype {dtype} needs --input-shape", "pass the shape too, e.g. "
                           f"--input-shape 4,128 --input-dtype {dtype}, or drop --input-dtype to use the file's "
                           "example_inputs()")
    if shape is not None:
        shape = check_input_shape(tuple(shape))
        torch_dtype = {"long": torch.long, "int": torch.long, "float": torch.float32, "float32": torch.float32,
                       "float64": torch.float64}.get(dtype or "float")
        if torch_dtype is None:
            raise ModnormError(f"unknown --input-dtype `{dtype}`", "use float, float32, float64, long or int")
        if torch_dtype == torch.long:
            return (torch.zeros(shape, dtype=torch.long),)
        return (torch.randn(shape, dtype=torch_dtype),)
    maker: Callable | None = getattr(module, "example_inputs", None)
    if maker is None:
        raise ModnormError("no example inputs: the file defines no example_inputs() and no --input-shape was given",
                           "add `def example_inputs(model): return torch.randn(4, 128)` or pass "
                           "--input-shape 4,128 [--input-dtype long]", path)
    try:
        takes_model = len(inspect.signature(maker).parameters) >= 1
        inputs = maker(model) if takes_model else maker()
    except Exception as exc:  # noqa: BLE001
        frame = frame_of_exception(exc, str(path))
        raise ModnormError(f"example_inputs() raised {type(exc).__name__}: {exc}",
                           "make it return a tensor or a tuple of tensors (it must work for a model on the meta "
                           "device: read sizes from attributes)", frame[0] if frame else path,
                           frame[1] if frame else None) from exc
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise ModnormError("example_inputs() must return a tensor or a tuple of tensors",
                           "return e.g. torch.randn(4, 128) or (ids, mask)", path)
    return tuple(x.to("cpu") if x.is_meta is False else torch.zeros(x.shape, dtype=x.dtype) for x in inputs)


def load(target: str, *, device: str = "auto", max_params: int = DEFAULT_MAX_PARAMS,
         input_shape: tuple[int, ...] | None = None, input_dtype: str | None = None,
         kwargs: dict[str, Any] | None = None, seed: int = 0, weights: str | None = None) -> LoadedModel:
    """Import `target`, build the model on meta, and again on CPU when it is small (or `device="cpu"`).

    With `weights` (a checkpoint path; "init" means the model's own init) the model stays on meta and its
    tensors are read from the checkpoint one at a time, after the shapes are checked against it.
    """
    from_checkpoint = weights not in (None, "init")
    if from_checkpoint:
        device = "meta"
    path, name = parse_target(target)
    from .hf import hf_module, is_hf_target

    module = hf_module(path) if is_hf_target(path) else _import(path)
    entry_name, entry = _find_entry(module, path, name)
    kwargs = kwargs or {}
    laws, note = None, ""
    if isinstance(entry, nn.Module):
        model, built_on = entry, ("meta" if any(p.is_meta for p in entry.parameters()) else "cpu")
    else:
        try:
            with torch.device("meta"), record_init() as recorder:
                model = _build(entry, entry_name, path, kwargs)
        except ModnormError as failure:  # a constructor that needs real values (`.int().tolist()` on meta)
            if device == "meta" or from_checkpoint:
                raise
            model, note = _build_on_cpu_instead(entry, entry_name, path, kwargs, seed, max_params, failure)
            inputs = _example_inputs(module, model, path, input_shape, input_dtype)
            return LoadedModel(model.eval(), inputs, str(path), entry_name, "cpu", count_parameters(model),
                               _definition_line(module, entry_name), None, None, note)
        laws = laws_of(model, recorder)
        built_on = "meta"
        parameters = count_parameters(model)
        if device == "cpu" and parameters > max_params:
            raise ModnormError(f"the model has {parameters:,} parameters, more than --max-params {max_params:,}, "
                               "and --device cpu would allocate them all",
                               "use --device auto or meta (the analysis needs no real weights), or raise "
                               "--max-params if the machine has the memory", path)
        if device == "cpu" or (device == "auto" and parameters <= max_params):
            torch.manual_seed(seed)
            model = _build(entry, entry_name, path, kwargs)
            built_on = "cpu"
    model.eval()
    checkpoint = None
    if from_checkpoint:
        from .weights import check_shapes, open_checkpoint

        if built_on != "meta":
            raise ModnormError("--weights needs a factory or class (the model is built on meta and filled from "
                               "the checkpoint), not a module instance", "point at build_model() or the class",
                               path)
        opened = open_checkpoint(weights)
        checkpoint = (opened, check_shapes(opened, model))
    inputs = _example_inputs(module, model, path, input_shape, input_dtype)
    return LoadedModel(model, inputs, str(path), entry_name, built_on, count_parameters(model),
                       _definition_line(module, entry_name), laws, checkpoint)


def _definition_line(module: Any, name: str) -> int | None:
    """The line that defines `name` in the model file (a def, a class or an assignment)."""
    value = getattr(module, name, None)
    if (inspect.isfunction(value) or inspect.isclass(value)) and _defined_in(value, module):
        try:
            return inspect.getsourcelines(value)[1]
        except (OSError, TypeError):
            return None
    import re

    # an assignment, or the import that brings an entry defined elsewhere (`from nanogpt import build_model`)
    pattern = re.compile(rf"^({re.escape(name)}\s*(:[^=]*)?=|(from\s+\S+\s+)?import\s.*\b{re.escape(name)}\b)")
    try:
        lines = inspect.getsource(module).splitlines()
    except (OSError, TypeError):
        return None
    return next((i for i, line in enumerate(lines, 1) if pattern.match(line)), None)


def _defined_in(value: Any, module: Any) -> bool:
    """Whether `value` is defined in the model file itself (not imported into it)."""
    file = getattr(module, "__file__", None)
    if not file:  # a namespace built for a config (Hugging Face): no file to compare with
        return True
    try:
        return Path(inspect.getsourcefile(value) or "").resolve() == Path(file).resolve()
    except (OSError, TypeError):
        return True


def load_with_weights(target: str, weights: str | None, input_shape: Any, input_dtype: str | None,
                kwargs: dict[str, Any], max_params: int | None = None) -> tuple[Any, tuple]:
    loaded = load(target, device="cpu", max_params=max_params or DEFAULT_MAX_PARAMS, input_shape=input_shape,
                  input_dtype=input_dtype, kwargs=kwargs)
    if weights not in (None, "init"):
        from .weights import check_shapes, open_checkpoint

        checkpoint = open_checkpoint(weights)
        names = check_shapes(checkpoint, loaded.model)
        loaded.model.load_state_dict({name: checkpoint.load(stored) for name, stored in names.items()}, strict=False)
    return loaded.model, loaded.inputs
