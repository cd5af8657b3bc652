"""Values of buffers that a meta build leaves unknown, recovered from the model's own initialiser.

A model built on the meta device has no values for the constants its constructor computes (GPT-J's sinusoidal
position table, Gemma's `sqrt(hidden)` embedding scale): they are non-persistent buffers, in no checkpoint, and
every multiplication by them would be "a constant of unknown value" with an infinite constant. transformers
(5.x) re-creates them after a meta build by calling the model's `_init_weights(module)`, which writes each such
buffer from the config (`init.copy_(module.embed_positions, create_sinusoidal_positions(...))`). modnorm does the
same, one owning module at a time, into CPU tensors of the buffer's shape, and keeps the values on the side: the
model itself stays on meta, so tracing and memory are unchanged.

A value is used only when the initialiser wrote every element (the scratch tensor starts as NaN), and only for
buffers small enough to hold (`LIMIT` elements); anything else stays unknown and is reported as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["recover", "LIMIT"]

LIMIT = 1 << 22  # elements per buffer (16 MB in float32): position tables and scales, never activations


def recover(root: nn.Module, name: str) -> torch.Tensor | None:
    """The value of the meta buffer `name` of `root`, as the model's initialiser writes it, or None."""
    return _recovered(root, name).get("buffers", {}).get(name.rpartition(".")[2])


def recover_constant_parameter(root: nn.Module, name: str) -> torch.Tensor | None:
    """The value of a meta parameter that the initialiser writes *deterministically* (Mamba's
    `A_log = log(arange(1, N + 1))`, `D = ones`), found by running it under two random seeds; None for a random
    draw. Only the constant folding of `c ⊙ x` reads it: atoms' norms on meta stay predicted from their laws."""
    return _recovered(root, name).get("parameters", {}).get(name.rpartition(".")[2])


def _recovered(root: nn.Module, name: str) -> dict[str, dict[str, torch.Tensor]]:
    owner_path = name.rpartition(".")[0]
    try:
        owner = root.get_submodule(owner_path)
    except AttributeError:
        return {}
    cache: dict[str, Any] = root.__dict__.setdefault("_modnorm_recovered", {})
    if owner_path not in cache:
        cache[owner_path] = {"buffers": _recover(root, owner, owner._buffers, seeds=(0,)),
                             "parameters": _recover(root, owner, owner._parameters, seeds=(0, 1))}
    return cache[owner_path]


def _recover(root: nn.Module, owner: nn.Module, slots: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Run the initialiser on `owner` with scratch CPU tensors in `slots` (NaN-filled) once per seed; keep what it
    wrote completely and identically in every run."""
    initialise = getattr(root, "_init_weights", None)
    unknown = {n: t for n, t in slots.items()
               if isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point() and t.numel() <= LIMIT}
    if not callable(initialise) or not unknown:
        return {}
    runs = []
    try:
        for seed in seeds:
            scratch = {n: torch.full(t.shape, float("nan"), dtype=t.dtype) for n, t in unknown.items()}
            slots.update({n: nn.Parameter(v, requires_grad=False) if isinstance(unknown[n], nn.Parameter) else v
                          for n, v in scratch.items()})
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                initialise(owner)
            runs.append({n: slots[n].detach().clone() for n in unknown})
    except Exception:  # noqa: BLE001 - an initialiser that cannot run on a meta module leaves the tensor unknown
        return {}
    finally:
        slots.update(unknown)
    first = runs[0]
    return {n: v for n, v in first.items() if not v.is_meta and not bool(torch.isnan(v).any())
            and all(torch.equal(v, run[n]) for run in runs[1:])}
