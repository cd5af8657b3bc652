"""Atom kinds: one class per kind of weight, and the one place that knows its natural norm
(docs/theory/constants.md#atoms).

An atom is a weight tensor with a forward multiplier `scale` (|c| in `c · x Wᵀ`). Its natural norm is the operator
norm of the map it computes, in the RMS norms of its input and output features:

    Linear     (out, in)            |c| √(in/out) σ_max(W)                         (stored (in, out): transposed)
    Conv       (out, in/g, *k)      |c| k √(in/out) max over positions and groups σ_max(W_pos,group)
    Embedding  (n, d)               |c| max row RMS          (one-hot ℓ1 input -> RMS output)
    Gain       any                  max |w|                  (a diagonal map)
    Batched    (E, out, in)         |c| √(in/out) max_e σ_max(W_e)   (expert / batched matmul weights)
    TokenMixing (out, in) positions |c| max row ℓ1 = |c| ‖W‖_∞→∞   (a Linear over a position axis: MLP-Mixer)

Every norm is `factor × raw`, where `raw` is a property of the tensor alone (σ_max, max row RMS, ...) and `factor`
depends only on the shape, groups and scale. modnorm's semantics, its weight access, `modnorm.optim` (which
normalizes updates) and `modnorm.probe` (which draws directions of a given norm) all call the classes here, so a new
kind of atom is one subclass plus `register_atom_kind`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = ["AtomKind", "Atom", "Matrix", "Linear", "Conv", "Embedding", "Gain", "Batched", "TokenMixing", "atom_class",
           "make_atom", "register_atom_kind", "ATOM_KINDS"]


class AtomKind(enum.StrEnum):
    """The kinds of atom modnorm knows. str-valued, so JSON and comparisons with plain strings are unchanged."""

    LINEAR = "Linear"
    CONV1D = "Conv1d"
    CONV2D = "Conv2d"
    CONV3D = "Conv3d"
    EMBEDDING = "Embedding"
    GAIN = "Gain"
    BATCHED = "Batched"
    TOKEN_MIXING = "TokenMixing"


@dataclass(frozen=True)
class Atom:
    """A weight of a given shape and forward scale; subclasses say how its natural norm is computed."""

    shape: tuple[int, ...]
    scale: float = 1.0
    groups: int = 1
    transposed: bool = False  # stored (in, out), as GPT-2's Conv1D keeps its weight

    kind: ClassVar[str] = ""

    def fans(self) -> tuple[int, int]:
        """(fan_out, fan_in) of the map, in features."""
        raise NotImplementedError

    @property
    def factor(self) -> float:
        """natural norm = factor × raw norm of the weight."""
        raise NotImplementedError

    def raw_norm(self, weight: torch.Tensor) -> float:
        """The shape-free part of the norm (σ_max, max row RMS, max |w|), computed exactly in float64."""
        raise NotImplementedError

    def norm(self, weight: torch.Tensor) -> float:
        """The natural norm of `weight` (a weight of this atom, or an update of it)."""
        return self.factor * self.raw_norm(weight)


def _as_double(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().to(torch.float64)


def _largest_sigma(matrices: torch.Tensor) -> float:
    """max over a batch of matrices of σ_max (0 for an empty tensor)."""
    if matrices.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(_as_double(matrices), ord=2).max())


class Matrix(Atom):
    """Atoms whose raw norm is the largest σ over a stack of matrices (`matrices`)."""

    def matrices(self, weight: torch.Tensor) -> torch.Tensor:
        """(batch, rows, cols): the matrices whose largest σ is the raw norm (used by optim's power iteration)."""
        raise NotImplementedError

    def raw_norm(self, weight: torch.Tensor) -> float:
        return _largest_sigma(self.matrices(weight))

    @property
    def factor(self) -> float:
        fan_out, fan_in = self.fans()
        return abs(self.scale) * math.sqrt(fan_in / fan_out)


@dataclass(frozen=True)
class Linear(Matrix):
    kind: ClassVar[str] = AtomKind.LINEAR

    def fans(self) -> tuple[int, int]:
        rows, cols = self.shape[0], self.shape[1]
        return (cols, rows) if self.transposed else (rows, cols)

    def matrices(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.unsqueeze(0)  # σ_max is the same for W and Wᵀ: no need to undo the storage order


@dataclass(frozen=True)
class Conv(Matrix):
    """Conv1d/2d/3d with `groups`: per kernel position and group an (out/g, in/g) matrix; k positions add up."""

    kind: ClassVar[str] = AtomKind.CONV2D

    @property
    def kernel(self) -> int:
        return math.prod(self.shape[2:])

    def fans(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1] * self.groups

    @property
    def factor(self) -> float:
        # k positions each contribute at most the largest slice norm (triangle inequality over the kernel)
        return self.kernel * super().factor

    def matrices(self, weight: torch.Tensor) -> torch.Tensor:
        out_channels, in_per_group = weight.shape[:2]
        grouped = weight.reshape(self.groups, out_channels // self.groups, in_per_group, -1)
        return grouped.permute(0, 3, 1, 2).reshape(-1, out_channels // self.groups, in_per_group)

    @classmethod
    def kind_of(cls, shape: tuple[int, ...]) -> str:
        return {3: AtomKind.CONV1D, 4: AtomKind.CONV2D, 5: AtomKind.CONV3D}[len(shape)]


@dataclass(frozen=True)
class Batched(Matrix):
    """A stack of E independent (out, in) matrices applied by a batched matmul (mixture-of-experts weights)."""

    kind: ClassVar[str] = AtomKind.BATCHED

    def fans(self) -> tuple[int, int]:
        rows, cols = self.shape[-2], self.shape[-1]
        return (cols, rows) if self.transposed else (rows, cols)

    def matrices(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1, weight.shape[-2], weight.shape[-1])


@dataclass(frozen=True)
class Embedding(Atom):
    kind: ClassVar[str] = AtomKind.EMBEDDING

    def fans(self) -> tuple[int, int]:
        return self.shape[1], self.shape[0]

    @property
    def factor(self) -> float:
        return abs(self.scale)

    def raw_norm(self, weight: torch.Tensor) -> float:
        return float(_as_double(weight).pow(2).mean(1).sqrt().max()) if weight.numel() else 0.0


@dataclass(frozen=True)
class Gain(Atom):
    """A diagonal map x -> w ⊙ x: its norm is max |w|. The scale is not applied (a gain's scale is its weight)."""

    kind: ClassVar[str] = AtomKind.GAIN

    def fans(self) -> tuple[int, int]:
        width = self.shape[-1] if self.shape else 1
        return width, width

    @property
    def factor(self) -> float:
        return 1.0

    def raw_norm(self, weight: torch.Tensor) -> float:
        return float(weight.detach().abs().max()) if weight.numel() else 0.0


@dataclass(frozen=True)
class TokenMixing(Atom):
    """A Linear applied across positions (MLP-Mixer's token mixing, `fc(x.transpose(1, 2))`): output position t is
    Σ_s W_ts x_s with every feature vector kept whole, so in the max-position RMS norm its operator norm is
    ‖W‖_∞→∞ = max row ℓ1 — for the map and, the same way, for a weight update ΔW. (The spectral norm of a Linear
    over features would undercount a perturbation by up to √out.) Stored (out, in) positions, or (in, out)."""

    kind: ClassVar[str] = AtomKind.TOKEN_MIXING

    def fans(self) -> tuple[int, int]:
        return (self.shape[0], self.shape[1]) if self.transposed else (self.shape[-2], self.shape[-1])

    @property
    def factor(self) -> float:
        return abs(self.scale)

    def raw_norm(self, weight: torch.Tensor) -> float:
        w = _as_double(weight)
        w = w.transpose(-2, -1) if self.transposed else w
        return float(w.abs().sum(-1).max()) if w.numel() else 0.0


ATOM_KINDS: dict[str, type[Atom]] = {
    AtomKind.LINEAR: Linear, AtomKind.CONV1D: Conv, AtomKind.CONV2D: Conv, AtomKind.CONV3D: Conv,
    AtomKind.EMBEDDING: Embedding, AtomKind.GAIN: Gain, AtomKind.BATCHED: Batched,
    AtomKind.TOKEN_MIXING: TokenMixing,
}


def register_atom_kind(kind: str, cls: type[Atom]) -> type[Atom]:
    """Make a new kind of atom known to optim, probe and the report (one subclass of `Atom` per kind)."""
    ATOM_KINDS[kind] = cls
    return cls


def atom_class(kind: str) -> type[Atom]:
    try:
        return ATOM_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown atom kind {kind!r}: register it with modnorm.atoms.register_atom_kind") from None


def make_atom(kind: str, shape: tuple[int, ...], scale: float = 1.0, groups: int = 1, transposed: bool = False,
              **extra: Any) -> Atom:
    """The atom object of a given kind (e.g. from a `Layer` of an analysis: kind, shape, scale, groups)."""
    return atom_class(kind)(tuple(shape), scale, groups, transposed, **extra)
