"""How a model initialises its parameters, recorded while it is built on the meta device.

On meta nothing is computed, so the norm of a weight at init must be predicted from its law. PyTorch layers reset
themselves with kaiming_uniform, but users re-initialise (`self.apply(self._init_weights)` with normal(0, 0.02),
`nn.init.orthogonal_`, `trunc_normal_`, ...). `record_init()` patches the primitive in-place initialisers and the
random factories for the duration of the build and remembers the last law applied to every tensor; `nn.Parameter`
inherits the law of the tensor it wraps. Anything else that writes into a recorded tensor (`w /= w.norm(...)`,
`copy_` from elsewhere) marks its law "modified": the prediction then falls back to the layer's default law and
says so, rather than pretend.

Prediction: for iid entries of mean μ and standard deviation s, an m×n matrix has
σ_max ≈ s(√m + √n) + |μ|√(mn) (Bai–Yin, plus the rank-one mean); an orthogonal init with gain g has σ_max = g.
See docs/theory/constants.md#default-init.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["Law", "record_init", "laws_of", "spectral", "row_rms", "abs_max", "rms"]


@dataclass(frozen=True)
class Law:
    kind: str  # "normal" | "uniform" | "orthogonal" | "constant" | "eye" | "unit_rows" | "empty" | "modified"
    mean: float = 0.0
    std: float = 0.0
    bound: float = 0.0  # max |entry| when known (uniform, constant); 0 when unbounded
    gain: float = 1.0  # orthogonal
    source: str = ""  # the call that set it, for the report

    @property
    def known(self) -> bool:
        return self.kind not in ("empty", "modified")


class _Recorder:
    def __init__(self) -> None:
        self.laws: dict[int, Law] = {}
        self.row_norms: dict[int, int] = {}  # id(result of w.norm(dim=1, keepdim=True)) -> id(w)
        self.keep: list[Any] = []  # ids stay unique while the build runs: keep every recorded tensor alive
        self.depth = 0  # inside a recorded composite (orthogonal_, trunc_normal_): ignore its inner primitives

    def set(self, tensor: Any, law: Law) -> None:
        if self.depth == 0 and isinstance(tensor, torch.Tensor):
            self.laws[id(tensor)] = law
            self.keep.append(tensor)


_ACTIVE: list[_Recorder] = []
_INHERITED = object()  # the attribute came from a base class: restore by deleting the patch


def _recorder() -> _Recorder | None:
    return _ACTIVE[-1] if _ACTIVE else None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _uniform(low: float, high: float, source: str) -> Law:
    return Law("uniform", (low + high) / 2, (high - low) / math.sqrt(12), max(abs(low), abs(high)), source=source)


def _meta_normal_(original: Any, self: torch.Tensor, mean: Any = 0.0, std: Any = 1.0, **kwargs: Any) -> Any:
    """Tensor.normal_ on a meta tensor: the checks its meta kernel makes, without the call. That kernel is the
    torch._refs decomposition, whose wrapper imports torch._dynamo and torch._inductor on first use (the BERT
    encoder fixture's check: 3.2 s with it, 1.4 s without, measured), and a meta tensor's values are never read.
    Other meta ops a constructor runs (nanoGPT's `torch.tril`) still import them."""
    if not isinstance(std, (int, float)) or set(kwargs) - {"generator"}:
        return original(self, mean, std, **kwargs)
    if not (self.dtype.is_floating_point or self.dtype.is_complex):
        raise RuntimeError(f"expected a floating-point or complex dtype, but got dtype={self.dtype}")
    if std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {std}")
    return self


_ON_META = {"normal_": _meta_normal_}  # methods whose meta kernel is replaced while a build is recorded


def _wrap_method(name: str, law_of: Any) -> Any:
    original = getattr(torch.Tensor, name)
    on_meta = _ON_META.get(name)
    call = (lambda self, *a, **k: on_meta(original, self, *a, **k) if self.is_meta  # noqa: E731
            else original(self, *a, **k)) if on_meta else original

    def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        rec = _recorder()
        if rec is None or rec.depth:
            return call(self, *args, **kwargs)
        rec.depth += 1  # `x *= c` calls mul_ inside: record the outer call once
        try:
            result = call(self, *args, **kwargs)
        finally:
            rec.depth -= 1
        law = law_of(self, *args, **kwargs)
        if law is not None:
            rec.set(self, law)
        return result

    return original, method


def _scaled(self: torch.Tensor, factor: Any) -> Law | None:
    rec = _recorder()
    old = rec.laws.get(id(self)) if rec else None
    if old is None:
        return None
    if _number(factor) and old.known:
        c = float(factor)
        return Law(old.kind, old.mean * c, old.std * abs(c), old.bound * abs(c), old.gain * abs(c), old.source + f" ×{c:g}")
    return Law("modified", source=f"{old.source}, then modified in place")


def _divided(self: torch.Tensor, divisor: Any) -> Law | None:
    rec = _recorder()
    if rec is not None and isinstance(divisor, torch.Tensor) and rec.row_norms.get(id(divisor)) == id(self):
        return Law("unit_rows", source="rows normalised to unit l2 norm")  # Modula's Embedding init
    return _scaled(self, 1 / divisor if _number(divisor) and divisor != 0 else divisor)


def _norm(original: Any) -> Any:
    def norm(self: torch.Tensor, p: Any = "fro", dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
        result = original(self, p, dim, keepdim, dtype=dtype)
        rec = _recorder()
        if rec is not None and dim in (1, -1, (1,), (-1,)) and self.dim() == 2 and p in ("fro", 2, 2.0):
            rec.row_norms[id(result)] = id(self)
            rec.keep.append(result)
        return result
    return norm


def _modified(self: torch.Tensor, *args: Any, **kwargs: Any) -> Law | None:
    rec = _recorder()
    old = rec.laws.get(id(self)) if rec else None
    return None if old is None else Law("modified", source=f"{old.source}, then modified in place")


def _copied(self: torch.Tensor, source: Any = None, *args: Any, **kwargs: Any) -> Law | None:
    rec = _recorder()
    if rec is not None and isinstance(source, torch.Tensor) and id(source) in rec.laws:
        return rec.laws[id(source)]
    return _modified(self)


_METHODS = {
    "uniform_": lambda self, a=0.0, b=1.0, **kw: _uniform(kw.get("from", a), kw.get("to", b), "uniform_"),
    "normal_": lambda self, mean=0.0, std=1.0, **kw: Law("normal", mean, std, source=f"normal_({mean:g}, {std:g})"),
    "zero_": lambda self: Law("constant", 0.0, 0.0, 0.0, source="zero_"),
    "fill_": lambda self, value: Law("constant", float(value), 0.0, abs(float(value)), source=f"fill_({float(value):g})")
    if _number(value) else None,
    "mul_": _scaled,
    "__imul__": _scaled,
    "div_": _divided,
    "__itruediv__": _divided,
    "add_": _modified,
    "__iadd__": _modified,
    "sub_": _modified,
    "__isub__": _modified,
    "copy_": _copied,
}


def _orthogonal(original: Any) -> Any:
    def orthogonal_(tensor: torch.Tensor, gain: float = 1.0, generator: Any = None) -> torch.Tensor:
        rec = _recorder()
        if rec is not None:
            rec.depth += 1
        try:
            result = original(tensor, gain=gain, generator=generator) if generator is not None else \
                original(tensor, gain=gain)
        finally:
            if rec is not None:
                rec.depth -= 1
        if rec is not None:
            rec.set(tensor, Law("orthogonal", gain=abs(gain), source=f"orthogonal_(gain={gain:g})"))
        return result
    return orthogonal_


def _trunc_normal(original: Any) -> Any:
    def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                      generator: Any = None) -> torch.Tensor:
        rec = _recorder()
        if rec is not None:
            rec.depth += 1
        try:
            result = original(tensor, mean, std, a, b) if generator is None else \
                original(tensor, mean, std, a, b, generator=generator)
        finally:
            if rec is not None:
                rec.depth -= 1
        if rec is not None:  # truncation only shrinks the spread: std is an upper bound
            rec.set(tensor, Law("normal", mean, std, max(abs(a), abs(b)), source=f"trunc_normal_({mean:g}, {std:g})"))
        return result
    return trunc_normal_


def _eye(original: Any) -> Any:
    def eye_(tensor: torch.Tensor) -> torch.Tensor:
        result = original(tensor)
        rec = _recorder()
        if rec is not None:
            rec.set(tensor, Law("eye", bound=1.0, gain=1.0, source="eye_"))
        return result
    return eye_


def _factory(original: Any, law: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        rec = _recorder()
        if rec is not None:
            rec.set(result, law(*args, **kwargs))
        return result
    return factory


def _literal(original: Any) -> Any:
    """`torch.tensor(2.6592)` (CLIP's logit scale): a number written in the constructor is known exactly."""
    def tensor(data: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(data, *args, **kwargs)
        rec = _recorder()
        if rec is not None and _number(data):
            rec.set(result, Law("constant", float(data), 0.0, abs(float(data)), source="torch.tensor"))
        return result
    return tensor


def _parameter_new(original: Any) -> Any:
    def __new__(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
        result = original(cls, data, requires_grad)
        rec = _recorder()
        if rec is not None and data is not None and id(data) in rec.laws:
            rec.laws[id(result)] = rec.laws[id(data)]
            rec.keep.append(result)
        return result
    return __new__


@contextlib.contextmanager
def record_init() -> Iterator[_Recorder]:
    """Record init laws while the block runs (meant around a build under `torch.device("meta")`)."""
    recorder = _Recorder()
    patches: list[tuple[Any, str, Any]] = []
    # torch.device("meta") keeps a cached set of the factory functions it redirects; build it from the real
    # functions before they are wrapped, or the wrappers would be cached and the redirection lost.
    from torch.utils import _device

    _device._device_constructors()

    def patch(owner: Any, name: str, replacement: Any) -> None:
        patches.append((owner, name, owner.__dict__.get(name, _INHERITED)))
        setattr(owner, name, replacement)

    for name, law_of in _METHODS.items():
        _, method = _wrap_method(name, law_of)
        patch(torch.Tensor, name, method)
    patch(torch.Tensor, "norm", _norm(torch.Tensor.norm))
    patch(nn.init, "orthogonal_", _orthogonal(nn.init.orthogonal_))
    patch(nn.init, "trunc_normal_", _trunc_normal(nn.init.trunc_normal_))
    patch(nn.init, "eye_", _eye(nn.init.eye_))
    patch(torch, "randn", _factory(torch.randn, lambda *a, **k: Law("normal", 0.0, 1.0, source="torch.randn")))
    patch(torch, "rand", _factory(torch.rand, lambda *a, **k: _uniform(0.0, 1.0, "torch.rand")))
    patch(torch, "zeros", _factory(torch.zeros, lambda *a, **k: Law("constant", 0.0, source="torch.zeros")))
    patch(torch, "ones", _factory(torch.ones, lambda *a, **k: Law("constant", 1.0, 0.0, 1.0, source="torch.ones")))
    patch(torch, "empty", _factory(torch.empty, lambda *a, **k: Law("empty", source="torch.empty")))
    patch(torch, "tensor", _literal(torch.tensor))
    patch(nn.Parameter, "__new__", _parameter_new(nn.Parameter.__new__))
    _ACTIVE.append(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.remove(recorder)
        for owner, name, original in reversed(patches):
            if original is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def laws_of(model: nn.Module, recorder: _Recorder) -> dict[str, Law]:
    """The recorded law of every parameter and buffer of `model`, by qualified name."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return {name: recorder.laws[id(t)] for name, t in named if id(t) in recorder.laws}


# ------------------------------------------------------------------------------------------------- prediction
def spectral(law: Law, rows: int, cols: int) -> float:
    """Predicted largest singular value of a rows×cols matrix drawn from `law` (module docstring)."""
    if law.kind == "orthogonal":
        return law.gain
    if law.kind == "eye":
        return 1.0
    if law.kind == "constant":
        return abs(law.mean) * math.sqrt(rows * cols)
    if law.kind == "unit_rows":  # n random unit rows in d dimensions: entries of std 1/sqrt(d)
        return (math.sqrt(rows) + math.sqrt(cols)) / math.sqrt(cols)
    return law.std * (math.sqrt(rows) + math.sqrt(cols)) + abs(law.mean) * math.sqrt(rows * cols)


def row_rms(law: Law, rows: int, cols: int) -> float:
    """Predicted largest row RMS (embeddings)."""
    if law.kind == "unit_rows":
        return 1 / math.sqrt(cols)
    if law.kind == "orthogonal":
        return law.gain / math.sqrt(cols) if rows >= cols else law.gain * math.sqrt(1 / cols)
    if law.kind == "constant":
        return abs(law.mean)
    spread = law.std * (1 + math.sqrt(math.log(max(rows, 2)) / cols))  # max of n chi variables, concentrated
    return math.sqrt(law.mean ** 2 + spread ** 2)


def abs_max(law: Law, count: int) -> float:
    if law.kind in ("constant", "uniform") or (law.bound and law.kind == "normal"):
        return law.bound if law.kind != "constant" else abs(law.mean)
    if law.kind == "normal":
        return abs(law.mean) + law.std * math.sqrt(2 * math.log(max(count, 2)))
    return math.nan


def rms(law: Law) -> float:
    if law.kind in ("normal", "uniform", "constant"):
        return math.sqrt(law.mean ** 2 + law.std ** 2)
    return math.nan
