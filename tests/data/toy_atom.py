"""A toy atom kind, in one file: a Linear whose raw norm is the Frobenius norm (an upper bound on σ_max, so the
natural norm it gives is still a sound operator-norm bound). Registering it is all optim, probe and the report need.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from modnorm import atoms


@dataclass(frozen=True)
class FrobeniusLinear(atoms.Linear):
    kind: ClassVar[str] = "FrobeniusLinear"

    def raw_norm(self, weight: torch.Tensor) -> float:
        return float(weight.detach().double().norm())  # ‖W‖_F >= σ_max(W)


atoms.register_atom_kind(FrobeniusLinear.kind, FrobeniusLinear)
