"""THE registry of modular semantics: every spelling fx records an op under -> a function `(op: OpView) -> Semantics`.

An entry maps a `call_module` class, a `call_function` target (the function object, e.g. `torch._C._nn.linear`,
which is what `F.linear` is) or a `call_method` name to a function `(op: OpView) -> Semantics`. Simple bonds are
one line (`bond(...)`); atoms and ops whose constant depends on their inputs' bounds are small functions.

Norm convention (docs/): a tensor is measured by the RMS over its feature axis, maximised over every other
position (batch, token, pixel). The feature axis is the last one, or axis 1 for NCHW feature maps and inputs a conv
reads; layout ops say where it goes. "certified" constants are worst-case over the unit ball; "modula" constants are the nominal values
of Modula 0.0.0.0.0.2 (`--profile modula`), kept so that the paper's package can be reproduced.

Where things live (adding an op touches one of these files plus its test):

    registry.py           Semantics, Bounds, AtomSpec, OpView, Registry, register, bond, lookup (the core)
    ops_elementwise.py    activations, powers, where, softmax family
    ops_arithmetic.py     +, -, ×, ÷, gains, activation products, reductions
    ops_shape.py          reshape, permute, expand, indexing, split, cat, pooling
    ops_atoms.py          Linear, addmm (GPT-2 Conv1D), matmul by a weight, Conv, Embedding (norms: atoms.py)
    ops_normalization.py  LayerNorm, RMSNorm, GroupNorm, BatchNorm
    ops_attention.py      scaled dot-product attention
    ops_aten.py           aten spellings of the torch.export route
    ops_select.py         roll, pad, masked_fill, gather
"""

from __future__ import annotations

# importing the entry files registers their entries, in this order (a later spelling would override)
from . import ops_elementwise, ops_arithmetic, ops_shape, ops_atoms  # noqa: F401
from . import ops_normalization, ops_attention, ops_aten, ops_select, ops_routing  # noqa: F401
from .ops_attention import attention, attention_hessian, rotary
from .ops_normalization import coupling_of, normalization
from .ops_shape import layout_lipschitz
from .registry import (ATEN_ALIASES, GELU_SLOPE, INF, REGISTRY, SILU_SLOPE, SQRT2, AtomSpec, Bounds, Entry, OpView,
                       Registry, Semantics, WeightView, bond, feature_width, leaf_class_names, linear, lookup, register)

__all__ = ["Semantics", "AtomSpec", "Bounds", "OpView", "WeightView", "Registry", "REGISTRY", "lookup", "register",
           "bond", "linear", "feature_width", "leaf_class_names", "attention", "attention_hessian", "rotary", "normalization", "coupling_of",
           "layout_lipschitz", "ATEN_ALIASES", "INF", "SQRT2", "GELU_SLOPE", "SILU_SLOPE", "Entry"]
