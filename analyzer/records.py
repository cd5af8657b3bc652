"""What the calculus passes carry: the options of a run, one record per fx node, and the context of the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.fx as fx
from torch import nn

from .semantics import Bounds, Semantics
from .weightstore import WeightStore

__all__ = ["Options", "Record", "Context"]


@dataclass(frozen=True)
class Options:
    """How to run the calculus (all of it is configurable from the CLI and pyproject)."""

    profile: str = "assumed"  # "assumed" (default: normalizer floors stated) | "certified" | "modula"
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
    log_down: float = -math.inf  # ln S_down: finite whenever every constant on the paths is (no overflow)
    log_design_down: float = -math.inf
    module: str = ""
    target: str = ""
    typical: float | None = None  # typical output RMS at init, predicted (floors.typical); None: not predicted


@dataclass
class Context:
    root: nn.Module
    weights: WeightStore
    options: Options
    user_file: str | None
    parameter_names: set[str] = field(default_factory=set)
    measured: dict[str, tuple[float, float]] = field(default_factory=dict)  # floors.measure: per-node RMS at init
