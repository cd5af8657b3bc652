"""Hypothesis strategies: for every registry entry, tiny models around the op, over its parameters, the layout it
sees (feature axis first, middle, last; NCHW; across tokens) and its operand roles.

A case's model takes x in modnorm's input convention — (B, T, C) features last, or (B, C, H, W) — moves the
features where the layout puts them, applies the op with `dim` pointing at that axis (or at the tokens), and moves
them back, so that its output is again in the convention and measured in the norm modnorm bounds.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from tests.adversary import Case

Body = Callable[[nn.ModuleDict, torch.Tensor, int], torch.Tensor]
LAYOUTS = ("last", "middle", "first", "tokens", "nchw")


class Net(nn.Module):
    """x -> layout -> body(layers, h, axis) -> back to modnorm's convention."""

    def __init__(self, body: Body, layout: str, layers: dict[str, nn.Module] | None = None,
                 buffers: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.body, self.layout = body, layout
        self.layers = nn.ModuleDict(layers or {})
        for name, value in (buffers or {}).items():
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "middle":  # (B, C, T): NCL, the feature axis in the middle
            return self.body(self, x.transpose(1, 2), 1).transpose(1, 2)
        if self.layout == "first":  # (C, B, T)
            return self.body(self, x.permute(2, 0, 1), 0).permute(1, 2, 0)
        if self.layout == "tokens":  # (B, T, C), the op acts across tokens
            return self.body(self, x, 1)
        if self.layout == "nchw":
            return self.body(self, x, 1)
        return self.body(self, x, 2)  # "last"


def example(layout: str, width: int, tokens: int = 5) -> torch.Tensor:
    shape = (2, width, 3, 3) if layout == "nchw" else (2, tokens, width)
    return torch.randn(shape, dtype=torch.float64)


def case(label: str, body: Body, layout: str, width: int, *, layers: dict | None = None,
         buffers: dict | None = None, atoms: tuple[str, ...] = (), tokens: int = 5, route: str = "auto",
         **options: Any) -> Case:
    torch.manual_seed(0)
    model = Net(body, layout, layers, buffers).double().eval()
    return Case(f"{label} [{layout}, C={width}]", model, example(layout, width, tokens), atoms, route, options)


widths = st.sampled_from([4, 8, 16])
layouts = st.sampled_from(LAYOUTS)
feature_layouts = st.sampled_from(("last", "middle", "first", "nchw"))  # for bodies that move the features last
gains = st.sampled_from([1.0, 3.0, 10.0])


# ------------------------------------------------------------------------------------------- elementwise bonds
def elementwise(label: str, make: Callable[[st.DrawFn], nn.Module]) -> st.SearchStrategy[Case]:
    """An elementwise module applied to c·x (c a drawn gain: inputs of every size inside the unit ball)."""

    @st.composite
    def strategy(draw: st.DrawFn) -> Case:
        module, c, layout = make(draw), draw(gains), draw(layouts)
        return case(f"{label} {module!r} on {c:g}·x", lambda s, h, a: s.layers["f"](h * c), layout, draw(widths),
                    layers={"f": module})

    return strategy()


def _hf(name: str) -> Callable[[st.DrawFn], nn.Module]:
    def make(draw: st.DrawFn) -> nn.Module:
        import transformers.activations as acts

        return getattr(acts, name)()

    return make


ELEMENTWISE: dict[Any, Callable[[st.DrawFn], nn.Module]] = {
    nn.ReLU: lambda d: nn.ReLU(),
    nn.GELU: lambda d: nn.GELU(approximate=d(st.sampled_from(["none", "tanh"]))),
    nn.SiLU: lambda d: nn.SiLU(),
    nn.Tanh: lambda d: nn.Tanh(),
    nn.Sigmoid: lambda d: nn.Sigmoid(),
    nn.Hardtanh: lambda d: d(st.sampled_from([nn.Hardtanh(), nn.ReLU6(), nn.Hardtanh(-2.0, 3.0)])),
    nn.Hardswish: lambda d: nn.Hardswish(),
    nn.Hardsigmoid: lambda d: nn.Hardsigmoid(),
    nn.Softplus: lambda d: nn.Softplus(beta=d(st.sampled_from([10.0, 0.5, 1.0])), threshold=20.0),
    nn.Mish: lambda d: nn.Mish(),
    nn.ELU: lambda d: nn.ELU(alpha=d(st.sampled_from([3.0, 0.5, 1.0]))),
    nn.LeakyReLU: lambda d: nn.LeakyReLU(negative_slope=d(st.sampled_from([-1.5, 3.0, 0.01, 0.2]))),
    nn.Identity: lambda d: d(st.sampled_from([nn.Identity(), nn.Dropout(0.5)])),
    "transformers.activations.NewGELUActivation": _hf("NewGELUActivation"),
    "transformers.activations.QuickGELUActivation": _hf("QuickGELUActivation"),
    "transformers.activations.SiLUActivation": _hf("SiLUActivation"),
}


class BloomGelu(nn.Module):
    """BLOOM's GeLUFunction, an autograd.Function registered by name (the tracer keeps it as a leaf). It has no
    setup_context, so functorch's jvp cannot run it: the measurement runs its forward, bloom_gelu_forward, whose
    derivative its backward equals (tests/test_constructs.py checks that)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from transformers.models.bloom.modeling_bloom import GeLUFunction, bloom_gelu_forward

        if isinstance(x, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(x):
            return bloom_gelu_forward(x)
        return GeLUFunction.apply(x)


ELEMENTWISE["transformers.models.bloom.modeling_bloom.GeLUFunction"] = lambda d: BloomGelu()


class Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class Neg(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


ELEMENTWISE[torch.abs] = lambda d: Abs()
ELEMENTWISE[torch.neg] = lambda d: Neg()


# ----------------------------------------------------------------------------------------------- arithmetic
@st.composite
def powers(draw: st.DrawFn) -> Case:
    p, spelling, layout = draw(st.sampled_from([1, 2, 3, 2.5])), draw(st.sampled_from(["pow", "**", "square"])), \
        draw(layouts)
    if spelling == "square":
        body, p = (lambda s, h, a: torch.square(h)), 2
    elif spelling == "**":
        body = lambda s, h, a: h ** p  # noqa: E731
    else:
        body = lambda s, h, a: h.pow(p)  # noqa: E731
    return case(f"x {spelling} {p}", body, layout, draw(widths))


@st.composite
def products(draw: st.DrawFn) -> Case:
    """Operand roles of `*`: two activations, a number, a parameter (gain), a constant tensor, on either side."""
    role, layout, width = draw(st.sampled_from(["x*x", "x*sigmoid(x)", "x*c", "c*x", "x*gain", "x*const",
                                                 "x*(1+gain)"])), \
        draw(layouts), draw(widths)
    c = draw(st.sampled_from([0.5, -2.0, 4.0]))
    shape = [1, 1, 1]
    axis = {"middle": 1, "first": 0, "nchw": 1}.get(layout, 2)
    if layout == "nchw":
        shape = [1, 1, 1, 1]
    shape[axis] = width
    buffers = {"const": torch.randn(shape, dtype=torch.float64)}
    gain = nn.Module()
    gain.w = nn.Parameter(torch.randn(shape, dtype=torch.float64) * 2)
    bodies: dict[str, Body] = {
        "x*x": lambda s, h, a: h * h, "x*sigmoid(x)": lambda s, h, a: h * torch.sigmoid(h),
        "x*c": lambda s, h, a: h * c, "c*x": lambda s, h, a: c * h,
        "x*gain": lambda s, h, a: h * s.layers["g"].w, "x*const": lambda s, h, a: torch.mul(h, s.const),
        "x*(1+gain)": lambda s, h, a: h * (1.0 + s.layers["g"].w.float()),  # Gemma's RMSNorm gain
    }
    return case(role, bodies[role], layout, width, layers={"g": gain}, buffers=buffers,
                atoms=("layers.g.w",) if role == "x*gain" else ())


@st.composite
def divisions(draw: st.DrawFn) -> Case:
    role, layout, width = draw(st.sampled_from(["x/c", "x/const", "c/x", "1/fc(x)"])), draw(feature_layouts), draw(widths)
    c = draw(st.sampled_from([0.5, -3.0]))
    fc = nn.Linear(width, width)
    bodies: dict[str, Body] = {
        "x/c": lambda s, h, a: h / c, "x/const": lambda s, h, a: torch.div(h, s.const),
        "c/x": lambda s, h, a: c / h, "1/fc(x)": lambda s, h, a: 1.0 / s.layers["fc"](h.movedim(a, -1)).movedim(-1, a),
    }
    return case(role, bodies[role], layout, width, layers={"fc": fc},
                buffers={"const": torch.rand(()).double() + 0.5})


@st.composite
def additions(draw: st.DrawFn) -> Case:
    role, layout, width = draw(st.sampled_from(["x+x", "x-c", "x+fc(x)", "add alpha", "rsub"])), draw(feature_layouts), \
        draw(widths)
    alpha = draw(st.sampled_from([1.0, -2.5]))
    fc = nn.Linear(width, width)
    bodies: dict[str, Body] = {
        "x+x": lambda s, h, a: h + torch.tanh(h), "x-c": lambda s, h, a: h - 3.0,
        "x+fc(x)": lambda s, h, a: h + s.layers["fc"](h.movedim(a, -1)).movedim(-1, a),
        "add alpha": lambda s, h, a: torch.add(h, torch.sin(h), alpha=alpha),
        "rsub": lambda s, h, a: torch.rsub(h, 1.0),
    }
    return case(role, bodies[role], layout, width, layers={"fc": fc}, atoms=("layers.fc.weight",))


@st.composite
def wheres(draw: st.DrawFn) -> Case:
    role, layout, width = draw(st.sampled_from(["fixed mask", "data mask"])), draw(layouts), draw(widths)
    x = example(layout, width)
    body: Body = (lambda s, h, a: torch.where(s.mask, h, 2.0)) if role == "fixed mask" else \
        (lambda s, h, a: torch.where(h > 0, h, -h * 0.5))
    mask = torch.rand(x.shape) > 0.5
    if layout in ("middle", "first"):
        mask = mask.transpose(1, 2) if layout == "middle" else mask.permute(2, 0, 1)
    return case(f"where ({role})", body, layout, width, buffers={"mask": mask})


@st.composite
def assertions(draw: st.DrawFn) -> Case:
    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        torch._assert(h.shape[a] > 0, "a feature axis")
        return h

    return case("torch._assert", body, draw(layouts), draw(widths))


# ------------------------------------------------------------------------------------------ softmax, reductions
@st.composite
def softmaxes(draw: st.DrawFn, log: bool = False) -> Case:
    layout, width, c = draw(layouts), draw(widths), draw(st.sampled_from([1.0, 5.0, 20.0]))
    spelling = draw(st.sampled_from(["module", "F", "method"]))
    fn = F.log_softmax if log else F.softmax
    module = (nn.LogSoftmax if log else nn.Softmax)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        if spelling == "module":
            return module(dim=a)(h * c)
        if spelling == "method":
            return (h * c).log_softmax(dim=a) if log else (h * c).softmax(dim=a)
        return fn(h * c, dim=a)

    return case(f"{'log_' if log else ''}softmax({c:g}x, dim=axis) {spelling}", body, layout, width,
                tokens=draw(st.sampled_from([3, 17])))


@st.composite
def reductions(draw: st.DrawFn, kind: str) -> Case:
    layout, width, keepdim = draw(layouts), draw(widths), draw(st.booleans())
    over = draw(st.sampled_from(["axis", "positions"]))
    fn = torch.mean if kind == "mean" else torch.sum

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        if over == "positions" and layout != "tokens":  # a position axis of this layout, kept
            other = (a + 1) % h.dim() if a != h.dim() - 1 else 0
            return fn(h, dim=other, keepdim=True)
        return fn(h, dim=a, keepdim=keepdim or layout in ("middle", "first"))

    return case(f"{kind}(dim={over}, keepdim={keepdim})", body, layout, width)


# ------------------------------------------------------------------------------------------------------ layouts
@st.composite
def reshapes(draw: st.DrawFn) -> Case:
    role, width = draw(st.sampled_from(["heads", "flatten", "unflatten", "squeeze", "merge tokens"])), draw(widths)
    bodies: dict[str, tuple[Body, str]] = {
        "heads": (lambda s, h, a: h.view(h.shape[0], h.shape[1], 2, -1).transpose(1, 2).reshape(h.shape), "last"),
        "flatten": (lambda s, h, a: torch.flatten(h, 1).unsqueeze(1), "nchw"),
        "unflatten": (lambda s, h, a: h.unflatten(-1, (2, -1)).flatten(-2), "last"),
        "squeeze": (lambda s, h, a: h.unsqueeze(1).squeeze(1), draw(layouts)),
        "merge tokens": (lambda s, h, a: h.reshape(h.shape[0], 1, -1), "last"),
    }
    body, layout = bodies[role]
    return case(f"reshape: {role}", body, layout, width)


@st.composite
def permutes(draw: st.DrawFn) -> Case:
    """Move the feature axis with every spelling, apply x*x (whose constant needs the width), move it back."""
    spelling, width = draw(st.sampled_from(["transpose", "permute", "movedim", "swapaxes", "t"])), draw(widths)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        if spelling == "t":
            m = h[0].t()  # (C, T)
            return (m * m).t().unsqueeze(0).expand(h.shape[0], -1, -1)
        moved = {"transpose": lambda t: t.transpose(1, 2), "permute": lambda t: t.permute(0, 2, 1),
                 "movedim": lambda t: t.movedim(2, 1), "swapaxes": lambda t: t.swapaxes(1, 2)}[spelling](h)
        return (moved * moved).transpose(1, 2)

    return case(f"{spelling} then x*x", body, "last", width)


@st.composite
def expands(draw: st.DrawFn) -> Case:
    role, width = draw(st.sampled_from(["positions", "repeat features", "broadcast a mean"])), draw(widths)
    bodies: dict[str, Body] = {
        "positions": lambda s, h, a: h[:, :1].expand(-1, h.shape[1], -1),
        "repeat features": lambda s, h, a: h.repeat(1, 1, 2),
        "broadcast a mean": lambda s, h, a: torch.broadcast_to(h.mean(-1, keepdim=True), h.shape),
    }
    return case(f"expand: {role}", bodies[role], "last", width)


@st.composite
def getitems(draw: st.DrawFn) -> Case:
    role, layout, width = draw(st.sampled_from(["a position", "a feature slice", "one feature", "a batch row"])), \
        draw(st.sampled_from(["last", "middle", "first"])), draw(widths)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        index: list[Any] = [slice(None)] * h.dim()
        if role == "a position":
            index[(a + 1) % h.dim()] = slice(0, 1)
        elif role == "a feature slice":
            index[a] = slice(0, 2)
        elif role == "one feature":  # the feature axis disappears: a (.., T) tensor whose last axis is tokens
            return h.movedim(a, -1)[..., 0].unsqueeze(a)
        else:
            index[0 if a != 0 else 1] = slice(0, 1)
        return h[tuple(index)]

    return case(f"getitem: {role}", body, layout, width)


@st.composite
def splits(draw: st.DrawFn) -> Case:
    spelling, layout, width = draw(st.sampled_from(["split", "chunk", "tensor_split", "unbind"])), draw(layouts), \
        draw(widths)
    over = draw(st.sampled_from(["axis", "positions"]))

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        d = a if over == "axis" else (a + 1) % h.dim()
        if spelling == "unbind":
            return h.unbind(d)[0].unsqueeze(d)
        if spelling == "split":
            return h.split(2, dim=d)[0]
        if spelling == "chunk":
            return torch.chunk(h, 2, dim=d)[1]
        return torch.tensor_split(h, 2, dim=d)[0]

    return case(f"{spelling}(dim={over})", body, layout, width)


@st.composite
def unbind_feature_axis(draw: st.DrawFn) -> Case:
    """The issue's row: `x.unbind(-1)[0]` leaves a (B, T) tensor whose last axis is the tokens."""
    return case("x.unbind(-1)[0]", lambda s, h, a: h.unbind(-1)[0], "last", draw(widths), tokens=8)


@st.composite
def cats(draw: st.DrawFn) -> Case:
    spelling, layout, width = draw(st.sampled_from(["cat", "stack then mean", "concat"])), draw(feature_layouts), \
        draw(widths)
    l1, l2, head = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
    on_axis = draw(st.booleans())

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        if spelling == "stack then mean":
            last = h.movedim(a, -1)
            y = torch.stack([s.layers["l1"](last), s.layers["l2"](last)], 0).mean(0)
            return s.layers["head"](y).movedim(-1, a)
        join = torch.cat if spelling == "cat" else torch.concat
        return join([h, torch.tanh(h)], dim=a if on_axis else (a + 1) % h.dim())

    return case(spelling, body, layout, width, layers={"l1": l1, "l2": l2, "head": head},
                atoms=("layers.l1.weight",) if spelling == "stack then mean" else ())


@st.composite
def stacks(draw: st.DrawFn) -> Case:
    """`stack` at any axis (before, at or after the feature axis), reduced by a mean over the new axis, then an atom:
    the atom is judged in the norm of the axis stack moved the features to."""
    layout, width = draw(feature_layouts), draw(widths)
    l1, l2, head = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
    where = draw(st.sampled_from(["first", "before features", "after features", "last"]))

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        last = h.movedim(a, -1)  # (..., F)
        dim = {"first": 0, "before features": last.dim() - 1, "after features": last.dim(), "last": -1}[where]
        y = torch.stack([s.layers["l1"](last), s.layers["l2"](last)], dim).mean(dim)
        return s.layers["head"](y).movedim(-1, a)

    return case(f"stack(dim {where}).mean", body, layout, width, layers={"l1": l1, "l2": l2, "head": head},
                atoms=("layers.l1.weight", "layers.head.weight"))


@st.composite
def pools(draw: st.DrawFn, kind: str) -> Case:
    dims, width = draw(st.sampled_from([1, 2])), draw(widths)
    k = draw(st.sampled_from([2, 3]))
    if kind == "avg":
        module = draw(st.sampled_from([nn.AvgPool2d(k, 1), nn.AdaptiveAvgPool2d(1)])) if dims == 2 else \
            draw(st.sampled_from([nn.AvgPool1d(k, 1), nn.AdaptiveAvgPool1d(1)]))
    else:
        module = draw(st.sampled_from([nn.MaxPool2d(k, 1), nn.AdaptiveMaxPool2d(1)])) if dims == 2 else \
            nn.MaxPool1d(k, 1)
    layout = "nchw" if dims == 2 else "middle"
    return case(f"{module!r}", lambda s, h, a: s.layers["pool"](h), layout, width, layers={"pool": module})


# ------------------------------------------------------------------------------------------------------- atoms
@st.composite
def linears(draw: st.DrawFn, route: str = "auto") -> Case:
    """Roles: over features (any layout, moved last), across tokens, scaled by a constant, functional form."""
    role, width = draw(st.sampled_from(["features", "tokens", "scaled", "F.linear"])), draw(widths)
    tokens, out = draw(st.sampled_from([3, 8])), draw(st.sampled_from([4, 16]))
    layout = draw(feature_layouts) if role == "features" else "last"  # "tokens" is the tokens role
    fc = nn.Linear(tokens if role == "tokens" else width, tokens if role == "tokens" else out,
                   bias=draw(st.booleans()))
    c = draw(st.sampled_from([0.5, 3.0]))

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        if role == "tokens":  # token mixing (MLP-Mixer)
            return s.layers["fc"](h.transpose(1, 2)).transpose(1, 2)
        last = h.movedim(a, -1)
        if role == "scaled":
            return s.layers["fc"](last) * c
        if role == "F.linear":
            return F.linear(last, s.layers["fc"].weight, s.layers["fc"].bias)
        y = s.layers["fc"](last)
        return y if layout in ("last", "tokens") else y.movedim(-1, a)

    return case(f"Linear ({role})", body, layout, width, layers={"fc": fc}, atoms=("layers.fc.weight",),
                tokens=tokens, route=route)


@st.composite
def addmms(draw: st.DrawFn) -> Case:
    width, out = draw(widths), draw(st.sampled_from([4, 16]))
    conv1d = nn.Module()  # GPT-2's Conv1D: the weight is stored (in, out)
    conv1d.weight = nn.Parameter(torch.randn(width, out, dtype=torch.float64) * 0.3)
    conv1d.bias = nn.Parameter(torch.randn(out, dtype=torch.float64) * 0.1)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        m = s.layers["c"]
        return torch.addmm(m.bias, h.reshape(-1, h.shape[-1]), m.weight).view(h.shape[0], h.shape[1], -1)

    return case("addmm (Conv1D)", body, "last", width, layers={"c": conv1d}, atoms=("layers.c.weight",))


@st.composite
def matmuls(draw: st.DrawFn) -> Case:
    role, width = draw(st.sampled_from(["x @ W", "x @ const", "x xT x", "xT @ x", "bmm", "mm", "W @ xT",
                                        "W @ x (tokens)"])), draw(widths)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.randn(width, width, dtype=torch.float64) * 0.3)
    holder.t = nn.Parameter(torch.randn(5, 5, dtype=torch.float64) * 0.5)  # mixes the 5 tokens
    bodies: dict[str, Body] = {
        "x @ W": lambda s, h, a: h @ s.layers["p"].w,
        "x @ const": lambda s, h, a: torch.matmul(h, s.const),
        "x xT x": lambda s, h, a: (h @ h.transpose(-2, -1)) @ h / h.shape[-1],
        "xT @ x": lambda s, h, a: (h.transpose(1, 2) @ h).transpose(1, 2)[:, :1],
        "bmm": lambda s, h, a: torch.bmm(h, h.transpose(1, 2)).mean(-1, keepdim=True),
        "mm": lambda s, h, a: torch.mm(h[0], s.layers["p"].w).unsqueeze(0),
        # Mamba's `dt_proj.weight @ dt.transpose(1, 2)`: the parameter on the left, features on axis -2
        "W @ xT": lambda s, h, a: (s.layers["p"].w @ h.transpose(1, 2)).transpose(1, 2),
        "W @ x (tokens)": lambda s, h, a: s.layers["p"].t @ h,  # axis -2 is the tokens: mixes positions
    }
    return case(f"matmul {role}", bodies[role], "last", width, layers={"p": holder},
                buffers={"const": torch.randn(width, 3, dtype=torch.float64)},
                atoms=("layers.p.t",) if role == "W @ x (tokens)" else ("layers.p.w",) if "W" in role or role == "mm"
                else ())


@st.composite
def convs(draw: st.DrawFn, functional: bool = False) -> Case:
    dims, width = draw(st.sampled_from([1, 2])), draw(st.sampled_from([4, 8]))
    groups = draw(st.sampled_from([1, 2, 4]))
    out = width * draw(st.sampled_from([1, 2]))
    k, stride, padding = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1]))
    conv = (nn.Conv2d if dims == 2 else nn.Conv1d)(width, out, k, stride=stride, padding=padding, groups=groups)
    fn = F.conv2d if dims == 2 else F.conv1d

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        m = s.layers["conv"]
        if functional:
            return fn(h, m.weight, m.bias, stride, padding, 1, groups)
        return m(h)

    layout = "nchw" if dims == 2 else "middle"
    return case(f"{conv!r}{' functional' if functional else ''}", body, layout, width, layers={"conv": conv},
                atoms=("layers.conv.weight",), tokens=6)


@st.composite
def embeddings(draw: st.DrawFn, functional: bool = False, route: str = "auto") -> Case:
    vocab, width = draw(st.sampled_from([5, 11])), draw(widths)
    emb = nn.Embedding(vocab, width)

    class Lookup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = emb

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return F.embedding(ids, self.emb.weight) if functional else self.emb(ids)

    model = Lookup().double().eval()
    ids = torch.randint(0, vocab, (2, 4))
    return Case(f"Embedding{' functional' if functional else ''} [{route}]", model, ids, ("emb.weight",), route)


@st.composite
def embedding_rows(draw: st.DrawFn) -> Case:
    """Whisper's positions: rows of an nn.Embedding's table read by index and added to the input."""
    width, span = draw(widths), draw(st.sampled_from(["slice", "index"]))
    table = nn.Embedding(9, width)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        rows = s.layers["pos"].weight[: h.shape[1]] if span == "slice" else \
            s.layers["pos"].weight[torch.arange(h.shape[1])]
        return h + rows

    return case(f"emb.weight[{span}] + x", body, "last", width, layers={"pos": table}, atoms=("layers.pos.weight",))


# ------------------------------------------------------------------------------------------------ normalizers
@st.composite
def layer_norms(draw: st.DrawFn, functional: bool = False, route: str = "auto") -> Case:
    width, eps = draw(widths), draw(st.sampled_from([1e-5, 1e-2, 1.0]))
    multi = draw(st.booleans()) and not functional
    affine, shift = draw(st.booleans()), draw(st.sampled_from([0.0, 3.0]))
    tokens = 4
    ln = nn.LayerNorm([tokens, width] if multi else width, eps=eps, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            ln.weight.uniform_(-2, 2)
            ln.bias.fill_(shift)
    layout = draw(st.sampled_from(["last", "middle"])) if not multi else "last"
    square = draw(st.booleans()) and shift > 0

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        last = h.movedim(a, -1)
        m = s.layers["ln"]
        y = F.layer_norm(last, m.normalized_shape, m.weight, m.bias, m.eps) if functional else m(last)
        return (y * y if square else y).movedim(-1, a)

    return case(f"LayerNorm({list(ln.normalized_shape)}, eps={eps:g}, affine={affine}, shift={shift:g})", body,
                layout, width, layers={"ln": ln}, tokens=tokens, route=route,
                atoms=("layers.ln.weight",) if affine else ())


@st.composite
def rms_norms(draw: st.DrawFn, functional: bool = False, route: str = "auto") -> Case:
    width, eps = draw(widths), draw(st.sampled_from([1e-6, 1e-2, 1.0]))
    norm = nn.RMSNorm(width, eps=eps, elementwise_affine=draw(st.booleans()))
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.uniform_(-2, 2)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        m = s.layers["n"]
        last = h.movedim(a, -1)
        y = F.rms_norm(last, m.normalized_shape, m.weight, m.eps) if functional else m(last)
        return y.movedim(-1, a)

    return case(f"RMSNorm(eps={eps:g})", body, draw(st.sampled_from(["last", "middle", "first"])), width,
                layers={"n": norm}, route=route, atoms=("layers.n.weight",) if norm.weight is not None else ())


@st.composite
def group_norms(draw: st.DrawFn) -> Case:
    width = draw(st.sampled_from([4, 8]))
    groups, eps = draw(st.sampled_from([1, 2, width])), draw(st.sampled_from([1e-5, 1e-2]))
    gn = nn.GroupNorm(groups, width, eps=eps)
    return case(f"GroupNorm({groups}, {width}, eps={eps:g})", lambda s, h, a: s.layers["gn"](h),
                draw(st.sampled_from(["nchw", "middle"])), width, layers={"gn": gn}, atoms=("layers.gn.weight",))


@st.composite
def batch_norms(draw: st.DrawFn, route: str = "auto", functional: bool = False) -> Case:
    width, shift = draw(widths), draw(st.sampled_from([0.0, 3.0, 10.0]))
    role = draw(st.sampled_from(["alone", "then h*h", "then Linear"]))
    dims = draw(st.sampled_from([1, 2]))
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(width)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.25, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.fill_(shift)
    fc = nn.Linear(width, width)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        m = s.layers["bn"]  # timm's BatchNormAct2d passes the module's own tensors to F.batch_norm
        y = F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, False, 0.1, m.eps) if functional \
            else m(h)
        if role == "then h*h":
            return y * y
        if role == "then Linear":
            return s.layers["fc"](y.movedim(1, -1)).movedim(-1, 1)
        return y

    return case(f"{'F.batch_norm of ' if functional else ''}{bn!r} shift {shift:g} {role}", body, "nchw" if dims == 2 else "middle", width,
                layers={"bn": bn, "fc": fc}, route=route, atoms=("layers.fc.weight",) if role == "then Linear" else ())


# ------------------------------------------------------------------------------------------------- attention
@st.composite
def attentions(draw: st.DrawFn) -> Case:
    width, heads = draw(st.sampled_from([4, 8])), draw(st.sampled_from([1, 2]))
    scale = draw(st.sampled_from([None, 0.1, 1.0]))
    mask = draw(st.sampled_from(["none", "causal", "constant bias", "bias from input"]))
    qkv = nn.Linear(width, 3 * width, bias=False)

    def body(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
        b, t, c = h.shape
        q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in s.layers["qkv"](h).split(c, -1))
        bias = None
        if mask == "constant bias":
            bias = s.bias
        elif mask == "bias from input":
            bias = h.mean(-1).unsqueeze(1).unsqueeze(1)  # (B, 1, 1, T): additive bias computed from x
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=mask == "causal", scale=scale)
        return y.transpose(1, 2).reshape(b, t, c)

    return case(f"sdpa(scale={scale}, heads={heads}, mask={mask})", body, "last", width, layers={"qkv": qkv},
                buffers={"bias": torch.randn(5, 5, dtype=torch.float64)}, atoms=("layers.qkv.weight",))


# ------------------------------------------------------------------------------------- the entry -> strategy map
STRATEGIES: dict[Any, st.SearchStrategy[Case]] = {
    **{spelling: elementwise(spelling.__name__ if not isinstance(spelling, str) else spelling.rsplit(".")[-1], make)
       for spelling, make in ELEMENTWISE.items()},
    torch.pow: powers(), "mul": products(), operator.getitem: getitems(), "div": divisions(), "add": additions(),
    torch.where: wheres(), torch._assert: assertions(), nn.Softmax: softmaxes(), nn.LogSoftmax: softmaxes(log=True),
    torch.mean: reductions("mean"), torch.sum: reductions("sum"), "view": reshapes(), "transpose": permutes(),
    "expand": expands(), "split": st.one_of(splits(), unbind_feature_axis()), torch.cat: cats(),
    torch.stack: stacks(),
    nn.AvgPool2d: pools("avg"), nn.MaxPool2d: pools("max"), nn.Linear: linears(), torch.addmm: addmms(),
    torch.matmul: matmuls(), nn.Conv2d: convs(), F.conv2d: convs(functional=True), nn.Embedding: embeddings(),
    F.embedding: embeddings(functional=True), nn.LayerNorm: layer_norms(),
    F.layer_norm: layer_norms(functional=True), nn.RMSNorm: rms_norms(), F.rms_norm: rms_norms(functional=True),
    nn.GroupNorm: group_norms(), nn.BatchNorm2d: batch_norms(), F.scaled_dot_product_attention: attentions(),
    "aten:linear": linears(route="export"), "aten:layer_norm": layer_norms(route="export"),
    "aten:rms_norm": rms_norms(route="export"), "aten:embedding": embeddings(route="export"),
    "aten:batch_norm": batch_norms(route="export"),
}


@st.composite
def _aten_slices(draw: st.DrawFn) -> Case:
    c = draw(getitems())
    c.route = "export"
    return c


STRATEGIES["aten:slice"] = _aten_slices()


# -------------------------------------------------------------- selection and padding (analyzer/ops_select.py)
@st.composite
def rolls(draw: st.DrawFn) -> Case:
    role, width = draw(st.sampled_from(["tokens", "features", "flattened"])), draw(widths)
    shift = draw(st.integers(1, 3))
    bodies: dict[str, Body] = {
        "tokens": lambda s, h, a: torch.roll(h, shift, dims=1),
        "features": lambda s, h, a: h.roll(shift, -1),
        "flattened": lambda s, h, a: torch.roll(h, shift),
    }
    return case(f"roll {role} by {shift}", bodies[role], "last", width)


@st.composite
def pads(draw: st.DrawFn) -> Case:
    role, width = draw(st.sampled_from(["features", "tokens", "features value 2", "tokens replicate"])), draw(widths)
    bodies: dict[str, Body] = {
        "features": lambda s, h, a: F.pad(h, (1, 3)),
        "tokens": lambda s, h, a: F.pad(h, (0, 0, 2, 1)),
        "features value 2": lambda s, h, a: F.pad(h, (0, 2), value=2.0),
        "tokens replicate": lambda s, h, a: F.pad(h.transpose(1, 2), (1, 2), mode="replicate").transpose(1, 2),
    }
    return case(f"pad {role}", bodies[role], "last", width)


@st.composite
def masked_fills(draw: st.DrawFn) -> Case:
    width, value = draw(widths), draw(st.sampled_from([0.0, -1.0, 3.0]))
    mask = torch.rand(1, 5, width) > 0.5
    return case(f"masked_fill({value})", lambda s, h, a: h.masked_fill(s.mask, value), "last", width,
                buffers={"mask": mask})


@st.composite
def gathers(draw: st.DrawFn) -> Case:
    role, width = draw(st.sampled_from(["features repeated", "tokens per feature", "index_select tokens"])), \
        draw(widths)
    features = torch.zeros(2, 5, width, dtype=torch.long)  # every output feature is feature 0: the sqrt(F) corner
    tokens = torch.randint(0, 5, (2, 5, width))
    rows = torch.tensor([0, 0, 4, 2])
    bodies: dict[str, Body] = {
        "features repeated": lambda s, h, a: torch.gather(h, -1, s.features),
        "tokens per feature": lambda s, h, a: h.gather(1, s.tokens),
        "index_select tokens": lambda s, h, a: torch.index_select(h, 1, s.rows),
    }
    return case(f"gather: {role}", bodies[role], "last", width,
                buffers={"features": features, "tokens": tokens, "rows": rows})


STRATEGIES.update({torch.roll: rolls(), F.pad: pads(), torch.masked_fill: masked_fills(), torch.gather: gathers()})


# ----------------------------------------------------------------- mixture-of-experts routing (analyzer/ops_routing.py)
# Forward-mode AD differentiates at each point with the routing that point selects: the fixed-routing condition
# under which the routing entries' bounds hold.
@st.composite
def order_statistics(draw: st.DrawFn) -> Case:
    op, layout, width = draw(st.sampled_from(["topk", "sort", "argsort"])), draw(st.sampled_from(["last", "tokens"])), \
        draw(widths)
    k = draw(st.integers(1, 3))
    bodies: dict[str, Body] = {
        "topk": lambda s, h, a: torch.topk(h, k, dim=a).values,
        "sort": lambda s, h, a: torch.sort(h, dim=a)[0],
        "argsort": lambda s, h, a: torch.gather(h, a, torch.argsort(h, dim=a)),  # = sort, through the indices
    }
    return case(f"{op} (k={k})", bodies[op], layout, width)


def _counts_mask(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
    """h kept where the count of tokens whose largest feature is that feature (halved) is nonzero."""
    width = h.shape[-1]
    ids = h.argmax(dim=-1)
    counts = torch.histc(ids.double(), bins=width, min=0, max=width - 1)
    return h * ((counts // 2) >= 0)


@st.composite
def countings(draw: st.DrawFn) -> Case:
    width, which = draw(widths), draw(st.sampled_from(["histc", "one_hot", "compare"]))
    bodies: dict[str, Body] = {
        "histc": _counts_mask,
        "one_hot": lambda s, h, a: h * F.one_hot(h.argmax(dim=-1), num_classes=h.shape[-1]),
        "compare": lambda s, h, a: h * (h > 0),
    }
    return case(f"{which} mask", bodies[which], "last", width)


@st.composite
def cumsums(draw: st.DrawFn) -> Case:
    layout, width = draw(st.sampled_from(["last", "tokens", "middle"])), draw(widths)
    return case("cumsum", lambda s, h, a: torch.cumsum(h, dim=a), layout, width)


def _inverse_permutation_write(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
    order = torch.argsort(h, dim=-1)
    inverse = torch.empty_like(order)
    inverse[...] = order  # integer bookkeeping written in place (transformers writes inv_perm[perm] = arange)
    return torch.gather(h, -1, inverse) + torch.zeros_like(h)


@st.composite
def index_adds(draw: st.DrawFn) -> Case:
    width, repeats = draw(widths), draw(st.integers(1, 3))
    index = torch.tensor([0] * repeats + list(range(1, 5 - repeats + 1)))[:5]
    return case(f"index_add ({repeats} rows on one token)",
                lambda s, h, a: torch.zeros_like(h).index_add(1, s.index, h), "last", width,
                buffers={"index": index})


def _grouped(s: nn.Module, h: torch.Tensor, a: int) -> torch.Tensor:
    rows = h.reshape(-1, h.shape[-1])
    if isinstance(rows, torch.fx.Proxy):  # traced: the op modnorm reads
        out = F.grouped_mm(rows, s.experts, offs=s.offs)
    else:  # measured: the same function (rows [offs[e-1], offs[e]) through expert e); grouped_mm has no forward AD
        bounds = [0, *s.offs.tolist()]
        out = torch.cat([rows[bounds[e]:bounds[e + 1]] @ s.experts[e] for e in range(len(bounds) - 1)])
    return out.reshape(*h.shape[:-1], -1)


@st.composite
def grouped_mms(draw: st.DrawFn) -> Case:
    width, experts = draw(st.sampled_from([4, 8])), draw(st.integers(2, 3))
    torch.manual_seed(0)
    weights = torch.randn(experts, width, 4, dtype=torch.float64)
    offs = torch.tensor(sorted(draw(st.lists(st.integers(0, 10), min_size=experts - 1, max_size=experts - 1)))
                        + [10], dtype=torch.int32)
    c = case(f"grouped_mm ({experts} experts)", _grouped, "last", width, buffers={"offs": offs})
    c.model.experts = nn.Parameter(weights)
    return c


STRATEGIES.update({
    torch.topk: order_statistics(), torch.sort: order_statistics(), torch.argsort: order_statistics(),
    torch.histc: countings(), operator.floordiv: countings(), F.one_hot: countings(), operator.gt: countings(),
    torch.cumsum: cumsums(), torch.empty_like: st.just(None).map(lambda _: case(
        "empty_like written", _inverse_permutation_write, "last", 8)),
    operator.setitem: st.just(None).map(lambda _: case("setitem of indices", _inverse_permutation_write, "last", 8)),
    torch.index_add: index_adds(), getattr: order_statistics(), torch._grouped_mm: grouped_mms(),
})


@st.composite
def repeat_interleaves(draw: st.DrawFn) -> Case:
    """GQA's `k.repeat_interleave(n_rep, dim=1)` on (B, heads, T, d), tokens and features repeated, per-entry counts
    and a flattened input; the feature-axis case is followed by x*x, whose constant needs the new width."""
    role, width = draw(st.sampled_from(["heads", "tokens", "features then x*x", "uneven counts", "flattened"])), \
        draw(widths)
    r = draw(st.integers(2, 3))
    bodies: dict[str, Body] = {
        "heads": lambda s, h, a: h.unsqueeze(1).repeat_interleave(r, dim=1).transpose(1, 2).flatten(2),
        "tokens": lambda s, h, a: torch.repeat_interleave(h, r, dim=1),
        "features then x*x": lambda s, h, a: (lambda y: y * y)(h.repeat_interleave(r, dim=-1)),
        "uneven counts": lambda s, h, a: h.repeat_interleave(
            torch.arange(1, h.shape[-1] + 1), dim=-1)[..., : h.shape[-1]],
        "flattened": lambda s, h, a: h.repeat_interleave(r).reshape(h.shape[0], -1, h.shape[-1]),
    }
    return case(f"repeat_interleave: {role} x{r}", bodies[role], "last", width)


STRATEGIES["repeat_interleave"] = repeat_interleaves()


@st.composite
def baddbmms(draw: st.DrawFn) -> Case:
    """BLOOM's ALiBi scores `bias.baddbmm(q, kᵀ, beta, alpha)`: activation batches, a constant or activation bias."""
    role, width = draw(st.sampled_from(["constant bias", "activation bias", "torch.baddbmm"])), draw(widths)
    alpha, beta = draw(st.sampled_from([0.25, -1.5])), draw(st.sampled_from([1.0, 0.5, -2.0]))
    bodies: dict[str, Body] = {
        "constant bias": lambda s, h, a: s.bias.baddbmm(h, h.transpose(1, 2), beta=beta, alpha=alpha),
        "activation bias": lambda s, h, a: (h @ h.transpose(1, 2)).baddbmm(h, h.transpose(1, 2), alpha=alpha),
        "torch.baddbmm": lambda s, h, a: torch.baddbmm(s.bias, h, h.transpose(1, 2), beta=beta, alpha=alpha),
    }
    return case(f"baddbmm {role} alpha={alpha} beta={beta}", bodies[role], "last", width, tokens=5,
                buffers={"bias": torch.linspace(-2, 2, 5, dtype=torch.float64).expand(1, 5, 5).clone()})


STRATEGIES[torch.baddbmm] = baddbmms()
STRATEGIES[F.batch_norm] = batch_norms(functional=True)


@st.composite
def exps(draw: st.DrawFn) -> Case:
    """e^x: bounded through the input's sup, or by 1 where the input is known to be <= 0 (Mamba's discretisation
    e^(A·dt) with A = -e^(A_log) and dt = softplus(.))."""
    role, width = draw(st.sampled_from(["exp(c x)", "exp(-softplus(x))", "mamba exp(A dt)", "exp(-relu(x)) * x"])), \
        draw(widths)
    c = draw(st.sampled_from([0.3, 1.0]))
    holder = nn.Module()
    holder.a_log = nn.Parameter(torch.log(torch.arange(1.0, width + 1, dtype=torch.float64)) - 1.0)
    bodies: dict[str, Body] = {
        "exp(c x)": lambda s, h, a: torch.exp(c * h),
        "exp(-softplus(x))": lambda s, h, a: torch.exp(-F.softplus(h)),
        "mamba exp(A dt)": lambda s, h, a: torch.exp(-torch.exp(s.layers["p"].a_log.float()) * F.softplus(h)),
        "exp(-relu(x)) * x": lambda s, h, a: torch.exp(-torch.relu(h)) * h,
    }
    return case(role, bodies[role], "last", width, layers={"p": holder})


@st.composite
def copies(draw: st.DrawFn) -> Case:
    """A cache keeping its state's address: `state.copy_(x)` holds x's values."""
    width, c = draw(widths), draw(st.sampled_from([1.0, -2.0]))
    return case(f"state.copy_({c:g} x)", lambda s, h, a: s.state.clone().copy_(c * h), "last", width,
                buffers={"state": torch.zeros(2, 5, width, dtype=torch.float64)})


STRATEGIES.update({torch.exp: exps(), "copy_": copies()})
STRATEGIES["embedding_rows"] = embedding_rows()

# ------------------------------------------------------------------------- explicit cases (run before the search)
def _bn_then_square(route: str) -> Case:
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.25, 2)
        bn.bias.fill_(3.0)
    return case("BatchNorm1d shift 3 then h*h", lambda s, h, a: s.layers["bn"](h) * s.layers["bn"](h), "middle", 4,
                layers={"bn": bn}, route=route)


def _permute_square() -> Case:
    return case("swapaxes then x*x", lambda s, h, a: (h.swapaxes(1, 2) * h.swapaxes(1, 2)).swapaxes(1, 2), "last", 8)


# The corners for an entry, measured first on every run so that a known violation is found whatever the
# search draws (keyed like STRATEGIES).
EXPLICIT: dict[Any, list[Callable[[], Case]]] = {
    nn.ELU: [lambda: case("ELU(alpha=3)", lambda s, h, a: s.layers["f"](h), "last", 8, layers={"f": nn.ELU(3.0)})],
    nn.Softmax: [lambda: case("softmax(20x, dim=1)", lambda s, h, a: torch.softmax(20 * h, dim=1), "last", 16,
                              tokens=17)],
    "transpose": [_permute_square],
    "split": [lambda: case("x.unbind(-1)[0]", lambda s, h, a: h.unbind(-1)[0], "last", 16, tokens=8)],
    nn.GroupNorm: [lambda: case("GroupNorm(1, 4)", lambda s, h, a: s.layers["gn"](h), "nchw", 4,
                                layers={"gn": nn.GroupNorm(1, 4)}, atoms=("layers.gn.weight",))],
    nn.BatchNorm2d: [lambda: _bn_then_square("auto")],
    "aten:batch_norm": [lambda: _bn_then_square("export")],
}
