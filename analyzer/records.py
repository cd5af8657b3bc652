"""What the calculus passes carry: the options of a run, one record per fx node, and the context of the run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx
from torch import nn

from .semantics import Bounds, Semantics
from .weightstore import WeightStore

__all__ = ["Options", "Record", "Context"]


@dataclass(frozen=True)
class Options:
    """How to run the calculus (all of it is configurable from the CLI and pyproject)."""

    profile: str = "certified"  # "certified" | "modula"
    mass: str = "roles"  # "roles" | "uniform"
    hidden_mass: float = 1.0
    mass_of: tuple[tuple[str, float], ...] = ()
    norm_input_rms: float | None = None  # an assumed floor for normalizer inputs, stated in the report
    loss: str = "xent"  # "xent" | "mse": the loss of the gradient Lipschitz bound
    input_rms: float = 1.0  # inputs are assumed to have max-position RMS <= this


@dataclass
class Record:
    node: fx.Node
    kind: str
    inputs: list["Record"]
    semantics: Semantics | None
    bounds: Bounds
    lipschitz: tuple[float, ...] = ()
    design: tuple[float, ...] = ()
    index: int = 0
    down: float = 0.0
    design_down: float = 0.0
    module: str = ""
    target: str = ""


@dataclass
class Context:
    root: nn.Module
    weights: WeightStore
    options: Options
    user_file: str | None
    parameter_names: set[str] = field(default_factory=set)
