"""Recognise composite operations that real code writes inline, before the calculus sees them.

Each recogniser looks at one anchor node and, on a match, returns a `Fused` group: the nodes it absorbs, the
group's data inputs and the semantics to use. Op-by-op, these groups would get loose or no bounds (division by
an activation, a product of activations); as a whole they have tight, known constants:

- RMS normalization `x / sqrt(mean(x²) [+ eps])`, `x * rsqrt(mean(x²) + eps)`, `x / x.norm(dim)`;
- mean subtraction `x - x.mean(dim, keepdim=True)` (an orthogonal projection);
- layer normalization written by hand: `(x - mean) / sqrt(var + eps)`;
- attention written by hand: `softmax(q @ k.transpose(-2, -1) * c [+ mask]) @ v`;
- a parameterised op followed by constant multipliers (`self.fc(x) * c`, or a constant tensor of one value:
  Gemma's `emb(ids) * self.embed_scale.to(dtype)`): one atom whose effective map has `c`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from . import folding

__all__ = ["Fused", "find_patterns", "scaled_atom_scale"]


@dataclass
class Fused:
    kind: str  # "scaled_atom" | "rms_norm" | "mean_subtract" | "attention" | "rotary"
    output: fx.Node
    inputs: list[fx.Node]
    members: set[fx.Node]
    info: dict[str, Any] = field(default_factory=dict)


def _name(node: Any) -> str:
    if not isinstance(node, fx.Node):
        return ""
    if node.op == "call_method":
        return node.target
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        name = node.target.overloadpacket.__name__  # aten ops of the torch.export fallback
        return _ATEN_NAMES.get(name, name)
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return ""


_ATEN_NAMES = {"div": "truediv", "_softmax": "softmax", "alias": "clone"}
_ATEN_ATOMS = ("linear", "conv1d", "conv2d", "embedding", "addmm")


def _is(node: Any, *names: str) -> bool:
    return isinstance(node, fx.Node) and node.op in ("call_function", "call_method") and _name(node) in names


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _kw(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _dims(node: fx.Node, index: int = 1) -> tuple[int, ...] | None:
    dim = _kw(node, index, "dim")
    if dim is None:
        return None
    return tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)


_CASTS = ("to", "float", "double", "half", "bfloat16", "type_as", "type")


def _uncast(node: Any) -> Any:
    """`x.to(torch.float32)`, `x.float()`, `x.type_as(y)`: a precision cast is the identity for the calculus."""
    while _is(node, *_CASTS) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _absorb_casts(node: Any, members: set[fx.Node]) -> Any:
    """Step back over precision casts (`softmax(...).type_as(q)`), adding them to a fused group's members."""
    while _is(node, *_CASTS) and isinstance(node.args[0], fx.Node):
        members.add(node)
        node = node.args[0]
    return node


def _mean_square_of(node: Any) -> tuple[fx.Node, tuple | None, str] | None:
    """`mean(x²)` / `x.pow(2).mean()` / `x.square().mean()` / `(x*x).mean()` / `x.var()` → (x, dims, kind)."""
    if _is(node, "var"):
        return node.args[0], _dims(node), "var"
    if not _is(node, "mean"):
        return None
    inner = node.args[0]
    dims = _dims(node)
    if _is(inner, "pow", "__pow__") and _number(inner.args[1]) == 2:
        return _uncast(inner.args[0]), dims, "ms"
    if _is(inner, "square"):
        return _uncast(inner.args[0]), dims, "ms"
    if _is(inner, "mul") and len(inner.args) == 2 and inner.args[0] is inner.args[1]:
        return inner.args[0], dims, "ms"
    return None


def _square_sum_of(node: Any) -> tuple[fx.Node, tuple | None] | None:
    """`sum(x²)` / `x.pow(2).sum()` / `(x*x).sum()` → (x, dims): the squared l2 norm."""
    if not _is(node, "sum") or not isinstance(node.args[0], fx.Node):
        return None
    inner = node.args[0]
    if (_is(inner, "pow", "__pow__") and _number(_kw(inner, 1, "exponent")) == 2) or _is(inner, "square"):
        return _uncast(inner.args[0]), _dims(node)
    if _is(inner, "mul") and len(inner.args) == 2 and inner.args[0] is inner.args[1]:
        return inner.args[0], _dims(node)
    return None


def _per_feature_eps(x: fx.Node, dims: tuple | None, eps: float) -> float:
    """sqrt(sum(x²) + eps) = sqrt(d) sqrt(mean(x²) + eps/d): the eps of the RMS form; 0 (the conservative value)
    when the width is not known."""
    value = x.meta.get("value")
    if not eps or not isinstance(value, torch.Tensor) or not dims or len(dims) != 1:
        return 0.0
    return eps / value.shape[dims[0]]


def _strip_eps(node: Any) -> tuple[Any, float]:
    if _is(node, "add", "iadd") and len(node.args) == 2:
        for a, b in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if _number(b) is not None:
                return a, _number(b)
    return node, 0.0


def _rms_denominator(node: Any) -> tuple[fx.Node, tuple | None, str, float] | None:
    """sqrt(mean(x²) + eps) or x.norm(dim) → (x, dims, kind, eps)."""
    if _is(node, "norm", "vector_norm"):
        return node.args[0], _dims(node), "l2", 0.0
    root_of = node.args[0] if _is(node, "sqrt") or (_is(node, "pow", "__pow__") and _number(
        _kw(node, 1, "exponent")) == 0.5) else None
    squares = _square_sum_of(_strip_eps(root_of)[0]) if root_of is not None else None
    if squares:  # sqrt(sum(x²) [+ eps]) = ||x||_2, CLIP's `torch.pow(torch.sum(x ** 2, -1, keepdim), 0.5)`
        return squares[0], squares[1], "l2", _per_feature_eps(squares[0], squares[1], _strip_eps(root_of)[1])
    if _is(node, "sqrt"):
        inner, eps = _strip_eps(node.args[0])
        found = _mean_square_of(inner)
        if found:
            return found[0], found[1], found[2], eps
    if _is(node, "add") and len(node.args) == 2:  # sqrt(ms) + eps
        core, eps = _strip_eps(node)
        found = _rms_denominator(core) if core is not node else None
        if found:
            return found[0], found[1], found[2], eps ** 2
    return None


def _match_rms(node: fx.Node) -> Fused | None:
    """x / sqrt(ms(x) + eps) or x * rsqrt(ms(x) + eps) (RMS normalization; LN when x = x - mean)."""
    if _is(node, "truediv", "div") and len(node.args) == 2:
        x, denominator = node.args
        found = _rms_denominator(denominator)
    elif _is(node, "mul") and len(node.args) == 2:
        found = None
        for x, other in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if _is(other, "rsqrt"):
                inner, eps = _strip_eps(other.args[0])
                ms = _mean_square_of(inner)
                if ms:
                    found, denominator = (ms[0], ms[1], ms[2], eps), other
                    break
    else:
        return None
    if not found or not isinstance(x, fx.Node):
        return None
    source, dims, kind, eps = found
    x = _uncast(x) if _uncast(x) is source else x
    centred_source = _mean_subtract_source(x)
    if source is not x and not (kind == "var" and centred_source is source):
        return None
    members = _upstream_until(denominator, {x, source}) | {node}
    info = {"eps": eps, "l2": kind == "l2", "dims": dims, "centred": kind == "var"}
    return Fused("rms_norm", node, [x], members, info)


def _mean_subtract_source(node: Any) -> fx.Node | None:
    if _is(node, "sub") and len(node.args) == 2 and _is(node.args[1], "mean") and node.args[1].args[0] is node.args[0]:
        return node.args[0]
    return None


def _match_mean_subtract(node: fx.Node) -> Fused | None:
    source = _mean_subtract_source(node)
    if source is None or len(node.args[1].users) != 1:
        return None
    return Fused("mean_subtract", node, [source], {node, node.args[1]}, {"dims": _dims(node.args[1])})


def _upstream_until(node: fx.Node, stop: set[fx.Node]) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current in seen or current in stop or not isinstance(current, fx.Node):
            continue
        if current.op in ("placeholder", "get_attr"):
            continue
        seen.add(current)
        todo.extend(a for a in current.all_input_nodes)
    return seen


_SCALE_OPS = ("mul", "truediv", "div", "neg")
_MASK_OPS = ("masked_fill", "add", "where")


def _constant_factor(node: fx.Node, data: fx.Node) -> float | None:
    """The constant c of data · c, c · data, data / c or -data; None otherwise. c / data is not a scaling
    (it is the reciprocal of the activation, unbounded slope), so a division counts only with data as dividend."""
    if _is(node, "neg"):
        return -1.0
    if _is(node, "truediv", "div") and (not node.args or node.args[0] is not data):
        return None
    others = [a for a in node.args if a is not data]
    if len(others) != 1 or _number(others[0]) is None:
        return None
    value = _number(others[0])
    return value if _is(node, "mul") else (1.0 / value if value else None)


def _match_attention(node: fx.Node, root: torch.nn.Module | None = None) -> Fused | None:
    """softmax(q @ kᵀ · c [+ mask]) [dropout] @ v → attention(q, k, v) with logit scale c."""
    if not (_is(node, "matmul") and len(node.args) == 2):
        return None
    probs, v = node.args
    members = {node}
    probs = _absorb_casts(probs, members)
    while _is(probs, "dropout") or (isinstance(probs, fx.Node) and probs.op == "call_module"
                                    and "Dropout" in type(probs.graph.owning_module.get_submodule(probs.target)).__name__):
        members.add(probs)
        probs = probs.args[0]
    if not (_is(probs, "softmax") or (isinstance(probs, fx.Node) and probs.op == "call_module" and
                                      type(probs.graph.owning_module.get_submodule(probs.target)).__name__ == "Softmax")):
        return None
    members.add(probs)
    logits, scale, mask_scale = probs.args[0], 1.0, 0.0
    while isinstance(logits, fx.Node):
        if _is(logits, *_CASTS) and isinstance(logits.args[0], fx.Node):
            members.add(logits)  # softmax(scores.float()): Meta's Llama casts the logits up for the softmax
            logits = logits.args[0]
            continue
        if _is(logits, *_MASK_OPS) and logits.args and isinstance(logits.args[0], fx.Node):
            if _is(logits, "add") and all(isinstance(a, fx.Node) for a in logits.args) is False:
                break
            members.add(logits)
            mask_scale = max(mask_scale, abs(scale))  # factors met so far multiply the mask too
            logits = logits.args[0]
            continue
        if _is(logits, *_SCALE_OPS):
            data = next((a for a in logits.args if isinstance(a, fx.Node)), None)
            factor = _constant_factor(logits, data) if data is not None else None
            if factor is None:
                return None
            scale *= factor
            members.add(logits)
            logits = data
            continue
        break
    if not (_is(logits, "matmul") and len(logits.args) == 2):
        return None
    members.add(logits)
    q, kt = logits.args
    if _swaps_last_two(kt):
        members.add(kt)
        k = kt.args[0]
    else:
        return None
    # A scale on q or k before the product (torchvision's Swin: `q = q * head_dim ** -0.5`; Modula's `q / 3`) stays
    # a scalar op of its own (same certified bound; Modula counts it as a bond), but it is part of the logit
    # multiplier MN301 judges: recorded as the operand scale.
    operand = _operand_scale(q, root) * _operand_scale(k, root)
    return Fused("attention", node, [q, k, v], members, {"scale": abs(scale), "operand_scale": abs(operand),
                                                         "mask_scale": mask_scale})


def _operand_scale(x: Any, root: torch.nn.Module | None) -> float:
    """The product of the constant factors applied to an attention operand just before the product; a factor
    written right after an atom (`self.q(x) * c`) is the atom's own (the scaled-atom pattern), not counted."""
    factor = 1.0
    while _is(x, *_SCALE_OPS, *_CASTS) and len(x.users) == 1:
        data = next((a for a in x.args if isinstance(a, fx.Node)), None)
        c = 1.0 if _is(x, *_CASTS) else _constant_factor(x, data) if data is not None else None
        if c is None or (root is not None and isinstance(data, fx.Node) and _is_atom_node(data, root)):
            break
        factor *= c
        x = data
    return factor


def _rotate_half_of(node: Any) -> tuple[fx.Node, set[fx.Node]] | None:
    """cat((-x[..., h:], x[..., :h]), dim=-1) with 2h the last axis of x -> (x, the nodes that spell it): the
    `rotate_half` of rotary position embeddings (Llama, GPT-NeoX, Mistral...)."""
    if not (_is(node, "cat") and node.args and isinstance(node.args[0], (list, tuple)) and len(node.args[0]) == 2):
        return None
    rank = _rank(node)
    if rank is None or _kw(node, 1, "dim", 0) not in (-1, rank - 1):
        return None
    negated, lower = node.args[0]
    upper = negated.args[0] if _is(negated, "neg") else None
    x = upper.args[0] if isinstance(upper, fx.Node) and upper.args else None
    width = x.meta["value"].shape[-1] if isinstance(x, fx.Node) and isinstance(x.meta.get("value"), torch.Tensor) \
        else None
    if width is None or width % 2:
        return None
    half = width // 2
    if _last_axis_slice(upper, x) != (half, width) or _last_axis_slice(lower, x) != (0, half):
        return None
    return x, {node, negated, upper, lower}


def _last_axis_slice(node: Any, x: fx.Node) -> tuple[int, int] | None:
    """(start, stop) of x[..., start:stop] (fx: getitem with a slice; torch.export: aten.slice on the last dim)."""
    if not (isinstance(node, fx.Node) and node.args and node.args[0] is x):
        return None
    width = x.meta["value"].shape[-1]
    if _is(node, "getitem") and len(node.args) == 2 and isinstance(node.args[1], tuple) and len(node.args[1]) == 2 \
            and node.args[1][0] is Ellipsis and isinstance(node.args[1][1], slice) and node.args[1][1].step in (None, 1):
        part = node.args[1][1]
    elif _is(node, "slice") and len(node.args) >= 4 and node.args[1] in (-1, x.meta["value"].dim() - 1) \
            and (len(node.args) < 5 or node.args[4] == 1):
        part = slice(node.args[2], node.args[3])
    else:
        return None
    start, stop, _ = part.indices(width)
    return start, stop


def _match_rotary(node: fx.Node) -> Fused | None:
    """x ⊙ cos + rotate_half(x) ⊙ sin -> one rotary op on x (cos and sin are tables of positions, not data): the
    path sum would count the two terms apart (|cos| + |sin|, up to 2), while each pair of coordinates is turned by
    a 2×2 block (docs/theory/constants.md#rotary)."""
    if not (_is(node, "add") and len(node.args) == 2 and all(_is(a, "mul") for a in node.args)):
        return None
    for direct, rotated in (node.args, node.args[::-1]):
        for i, arg in enumerate(rotated.args[:2]):
            found = _rotate_half_of(arg)
            if found is None:
                continue
            x, spelled = found
            sin = rotated.args[1 - i] if len(rotated.args) == 2 else None
            if x not in direct.args[:2] or sin is None:
                continue
            cos = direct.args[1] if direct.args[0] is x else direct.args[0]
            if any(isinstance(t, fx.Node) and (t is x or _is_ancestor(x, t)) for t in (cos, sin)):
                continue  # a "table" computed from x is data: not a rotation
            return Fused("rotary", node, [x], {node, direct, rotated} | spelled, {"cos": cos, "sin": sin})
    return None


def _rank(node: Any) -> int | None:
    value = node.meta.get("value") if isinstance(node, fx.Node) else None
    return value.dim() if isinstance(value, torch.Tensor) else None


def _swaps_last_two(node: Any) -> bool:
    """k.mT, k.transpose(-2, -1) or, on a tensor of known rank n, k.transpose(n-2, n-1): kᵀ of q @ kᵀ. Any
    other transpose (a 3-D k.transpose(1, 2) swaps heads and tokens) is not the key matrix transposed."""
    if _is(node, "mT"):
        return True
    if not _is(node, "transpose") or len(node.args) < 3 or not all(isinstance(d, int) for d in node.args[1:3]):
        return False
    dims = set(node.args[1:3])
    if dims == {-2, -1}:
        return True
    rank = _rank(node.args[0])
    return rank is not None and {d % rank for d in dims} == {rank - 2, rank - 1}


def _is_atom_node(node: fx.Node, root: torch.nn.Module) -> bool:
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        return isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding))
    if node.op == "call_function" and node.target in (F.linear, F.conv1d, F.conv2d, F.embedding, torch.addmm):
        return True
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        if node.target.overloadpacket.__name__ in _ATEN_ATOMS:
            return True
    if node.op == "call_function" and (node.target in (operator.matmul, torch.matmul)
                                       or _name(node) == "matmul"):
        return len(node.args) == 2 and isinstance(node.args[1], fx.Node) and node.args[1].op == "get_attr"
    return False


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _atom_owner(node: fx.Node) -> str:
    if node.op == "call_module":  # a leaf: no op after it runs inside it
        return node.target
    return _scope(node)


def _strip_constant_factors(node: Any) -> Any:
    while isinstance(node, fx.Node) and _is(node, *_SCALE_OPS) and node.args:
        data = next((a for a in node.args if isinstance(a, fx.Node)), None)
        if data is None or _constant_factor(node, data) is None:
            break
        node = data
    return node


def _is_ancestor(candidate: fx.Node, node: fx.Node) -> bool:
    seen, todo = set(), list(node.all_input_nodes)
    while todo:
        current = todo.pop()
        if current is candidate:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(current.all_input_nodes)
    return False


def _is_residual_merge(merge: fx.Node, branch: fx.Node, atom: fx.Node) -> bool:
    """`skip + c * atom(...)` where the skip (less its own constants) feeds the atom: a residual merge whose
    branch coefficient is c. A sum of independent terms (`(tok + pos) / 2`) is not one."""
    others = [a for a in merge.args if a is not branch and isinstance(a, fx.Node)]
    return any(_is_ancestor(_strip_constant_factors(other), atom) for other in others)


def _match_scaled_atom(node: fx.Node, root: torch.nn.Module) -> Fused | None:
    """An atom followed by constant multipliers: fused while inside the atom's module, and outside it unless
    the chain feeds a residual merge (there the constant is the merge's branch coefficient)."""
    if not _is_atom_node(node, root):
        return None
    owner = _atom_owner(node)
    chain, factor, current = [], 1.0, node
    while len(current.users) == 1:
        user = next(iter(current.users))
        if not _is(user, *_SCALE_OPS):
            break
        c = _constant_factor(user, current)
        c = c if c is not None else _scalar_tensor_factor(user, current, root)  # a number, or a tensor node
        if c is None:
            break
        chain.append((user, c))
        current = user
    if not chain:
        return None
    inside = [(n, c) for n, c in chain if owner and (_scope(n) == owner or _scope(n).startswith(owner + "."))]
    merge = next(iter(current.users)) if len(current.users) == 1 else None
    feeds_merge = _is(merge, "add", "sub", "iadd") and (len(chain) >= 2 or _is_residual_merge(merge, current, node))
    # Feeding a merge, the last multiplication is the merge's coefficient (`x + (1/L) * block(x)`); every
    # earlier one belongs to the atom however it is spelled (`fc2(h) * 0.5` then `b * mlp(x)`,
    # `emb(idx) * sqrt(d)` then `0.5 * tok + 0.5 * pos`): the merge keeps what is left. A lone multiplier
    # before a sum of independent terms (`sqrt(d) * emb(idx)` then `(tok + pos) / 2`) is the atom's, as is
    # one written inside the atom's own module.
    kept = chain if not feeds_merge else chain[:max(len(inside), len(chain) - 1)]
    if not kept:
        return None
    for _, c in kept:
        factor *= c if not isinstance(c, fx.Node) else 1.0
    tensors = tuple(c for _, c in kept if isinstance(c, fx.Node))
    last = kept[-1][0]
    return Fused("scaled_atom", last, [], {node} | {n for n, _ in kept},
                 {"atom": node, "scale": factor, "tensor_factors": tensors})


def _scalar_tensor_factor(node: fx.Node, data: fx.Node, root: torch.nn.Module) -> fx.Node | None:
    """m of `data * m` when m is a constant tensor holding one value (Gemma's `emb(ids) * self.embed_scale.to(dt)`):
    a scalar multiplier like a number, its value read when the atom is evaluated (scaled_atom_scale), where the
    init laws are known. m has one entry, or its values, known now (CPU, or recovered on meta), are all equal; and
    it does not broadcast the data to a larger shape. A per-channel constant or a parameter (a gain) is not one."""
    if not _is(node, "mul") or len(node.args) != 2 or node.kwargs:
        return None
    others = [a for a in node.args if a is not data]
    m = others[0] if len(others) == 1 else None
    if not isinstance(m, fx.Node) or not _is_constant_tensor(m, root):
        return None
    value, out, x = (n.meta.get("value") for n in (m, node, data))
    if not all(isinstance(v, torch.Tensor) for v in (value, out, x)) or out.shape != x.shape:
        return None
    return m if value.numel() == 1 or folding.scalar_value(m, root) is not None else None


def _is_constant_tensor(node: fx.Node, root: torch.nn.Module) -> bool:
    """Made from buffers and constants only: no input, no parameter, no module call. A cast reads only its first
    argument's values (`scale.type_as(x)` takes x's dtype, not its data)."""
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "get_attr":
            owner, _, attr = str(current.target).rpartition(".")
            if attr in getattr(_submodule(root, owner), "_parameters", {}):
                return False
            continue
        if current.op not in ("call_function", "call_method") or len(seen) > 64:
            return False
        todo.extend([current.args[0]] if _is(current, *_CASTS) and isinstance(current.args[0], fx.Node)
                    else current.all_input_nodes)
    return True


def _submodule(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def scaled_atom_scale(fused: Fused, weights: Any) -> float:
    """The multiplier of a scaled atom: its numbers times each scalar tensor's value (folding.scalar_value, exact
    as the tensor's dtype holds it), else an upper bound on its |c| (folding.abs_bound), else unbounded."""
    scale = fused.info["scale"]
    for m in fused.info.get("tensor_factors", ()):
        c = folding.scalar_value(m, weights)
        c = c if c is not None else folding.abs_bound(m, weights)
        scale = scale * c if c is not None else math.inf
    return scale


def _self_contained(match: Fused) -> bool:
    """A group may absorb a node only if every user of it is inside the group: a member read from outside (an
    rsqrt reused, a k.transpose also returned) would leave that reader with no record of its own, so its bound
    would be judged through the fused op's constant. The one place this rule is enforced, for every pattern."""
    inner = match.members - {match.output}
    return all(user in match.members for member in inner for user in member.users)


def find_patterns(graph: fx.Graph, root: torch.nn.Module) -> dict[fx.Node, Fused]:
    """Every recognised group, keyed by its output node. Nodes are visited once (linear time)."""
    found: dict[fx.Node, Fused] = {}
    absorbed: set[fx.Node] = set()
    for node in reversed(list(graph.nodes)):  # outermost match first (attention before its softmax)
        if node in absorbed or node.op not in ("call_function", "call_method", "call_module"):
            continue
        match = (_match_attention(node, root) or _match_rms(node) or _match_rotary(node)
                 or _match_scaled_atom(node, root) or _match_mean_subtract(node))
        if match is None or any(m in absorbed for m in match.members) or not _self_contained(match):
            continue
        found[match.output] = match
        absorbed |= match.members - {match.output}
    return found
