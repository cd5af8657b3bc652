"""Where a module is defined in the user's source: `self.attn = ...` in its owner's __init__, best effort."""

from __future__ import annotations

import functools
import ast
import inspect
import re
import textwrap

from torch import nn

__all__ = ["definition", "element_definition"]


def definition(root: nn.Module, path: str) -> tuple[str, int] | None:
    """Where the module at `path` is created in its owner's __init__, best effort: `self.attn = ...`, or the
    key `wte=` / `"wte":` of a ModuleDict. An index inside a ModuleList/Sequential points at the container's line.
    """
    containers = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
    parts = path.split(".") if path else []
    while parts:
        attr, parent_path = parts[-1], ".".join(parts[:-1])
        parts = parts[:-1]
        try:
            parent = root.get_submodule(parent_path)
        except AttributeError:
            return None
        if attr.isdigit() or (isinstance(parent, containers) and type(parent) in containers):
            if isinstance(parent, nn.ModuleDict) and parts:
                found = _assignment(type(root.get_submodule(".".join(parts[:-1]))),
                                    rf"(\b{re.escape(attr)}\s*=(?!=)|['\"]{re.escape(attr)}['\"]\s*:)")
                if found:
                    return found
            continue
        return _assignment(type(parent), rf"\bself\.{re.escape(attr)}\b[^=\n]*=(?!=)")
    return None


@functools.lru_cache(maxsize=None)
def _assignment(owner: type, pattern: str) -> tuple[str, int] | None:
    """The first line of `owner.__init__` matching `pattern` (cached: one parse per class, not per layer)."""
    try:
        lines, start = inspect.getsourcelines(owner.__init__)
        file = inspect.getsourcefile(owner.__init__)
    except (OSError, TypeError):
        return None
    if file is None or "/torch/" in file:
        return None
    regex = re.compile(pattern)
    return next(((file, start + i) for i, text in enumerate(lines) if regex.search(text)), None)


_CONTAINERS = ("Sequential", "ModuleList")


def element_definition(root: nn.Module, path: str) -> tuple[str, int] | None:
    """The line of the element `features.3` inside `self.features = nn.Sequential(conv, relu, pool, conv, ...)`:
    torch's container calls it, so its call site is the container's (`self.features(x)`, the same for every
    element); the element's own constructor line tells them apart. Follows positional arguments and list literals
    by index, and a generator or comprehension (`nn.Sequential(Block() for _ in range(n))`) to its element."""
    parts = path.split(".") if path else []
    first = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if not first:
        return None
    owner_path, attr = ".".join(parts[: first - 1]), parts[first - 1]
    try:
        owner = root.get_submodule(owner_path)
    except AttributeError:
        return None
    found = _assigned_expression(type(owner), attr)
    if found is None:
        return None
    file, expression = found
    for index in parts[first:]:
        if not index.isdigit():
            break
        expression = _element(expression, int(index))
        if expression is None:
            return None
    return file, expression.lineno


def _element(expression: ast.expr, index: int) -> ast.expr | None:
    if isinstance(expression, ast.Call) and (getattr(expression.func, "attr", None) or getattr(
            expression.func, "id", None)) in _CONTAINERS:
        args = expression.args
        if len(args) == 1 and isinstance(args[0], (ast.GeneratorExp, ast.ListComp)):
            return args[0].elt
        if len(args) == 1 and isinstance(args[0], ast.List):
            args = args[0].elts
        if any(isinstance(a, ast.Starred) for a in args[: index + 1]) or index >= len(args):
            return None
        return args[index]
    return None


@functools.lru_cache(maxsize=None)
def _assigned_expression(owner: type, attr: str) -> tuple[str, ast.expr] | None:
    """The expression assigned to `self.<attr>` in `owner.__init__`, with absolute line numbers."""
    try:
        lines, start = inspect.getsourcelines(owner.__init__)
        file = inspect.getsourcefile(owner.__init__)
    except (OSError, TypeError):
        return None
    if file is None or "/torch/" in file:
        return None
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if (isinstance(target, ast.Attribute) and target.attr == attr and isinstance(target.value, ast.Name)
                    and target.value.id == "self"):
                ast.increment_lineno(node.value, start - 1)
                return file, node.value
    return None
