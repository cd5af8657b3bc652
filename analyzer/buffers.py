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
    owner_path, _, leaf = name.rpartition(".")
    try:
        owner = root.get_submodule(owner_path)
    except AttributeError:
        return None
    cache: dict[str, Any] = root.__dict__.setdefault("_modnorm_recovered", {})
    if owner_path not in cache:
        cache[owner_path] = _recover_owner(root, owner)
    return cache[owner_path].get(leaf)


def _recover_owner(root: nn.Module, owner: nn.Module) -> dict[str, torch.Tensor]:
    initialise = getattr(root, "_init_weights", None)
    unknown = {n: b for n, b in owner._buffers.items()
               if isinstance(b, torch.Tensor) and b.is_meta and b.is_floating_point() and b.numel() <= LIMIT}
    if not callable(initialise) or not unknown:
        return {}
    scratch = {n: torch.full(b.shape, float("nan"), dtype=b.dtype) for n, b in unknown.items()}
    try:
        owner._buffers.update(scratch)
        with torch.no_grad():
            initialise(owner)
        written = {n: owner._buffers[n] for n in unknown}
    except Exception:  # noqa: BLE001 - an initialiser that cannot run on a meta module leaves the buffer unknown
        return {}
    finally:
        owner._buffers.update(unknown)
    return {n: v.detach() for n, v in written.items()
            if isinstance(v, torch.Tensor) and not v.is_meta and not bool(torch.isnan(v).any())}
