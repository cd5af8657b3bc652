"""A toy op, in one file: a module computing c · x Wᵀ, registered with `modnorm.register` as an atom of the toy kind
(tests/data/toy_atom.py). Import it inside `modnorm.semantics.REGISTRY.override()` so the entry goes away after.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from modnorm.semantics import AtomSpec, Semantics, linear
from tests.data.toy_atom import FrobeniusLinear


class ToyLinear(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, scale: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / math.sqrt(fan_in))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(x, self.weight)


def toy_linear(op) -> Semantics:
    name = f"{op.node.target}.weight"
    weight = op.weights.tensor(name)
    geometry = FrobeniusLinear(tuple(weight.shape), op.module.scale)
    norm = geometry.norm(weight)
    atom = AtomSpec(geometry.kind, name, tuple(weight.shape), norm, "measured", op.module.scale, (name,),
                    factor=geometry.factor)
    return linear(Semantics("atom", (norm,), "toy: |c| √(in/out) ‖W‖_F", atom=atom, upper=norm * op.bounds[0].upper,
                            label="ToyLinear"))


# Registered by qualified name, so that the tracer keeps ToyLinear whole (a class object registered would be
# traced through unless passed as a leaf): the name is looked up live, not from a list frozen at import.
modnorm.register(f"{ToyLinear.__module__}.{ToyLinear.__qualname__}")(toy_linear)
