"""Where things are in the user's source: the line an fx node ran (its recorded stack trace), where a module is
called from its parent, and where it is defined (`self.attn = ...` in its owner's __init__, best effort)."""

from __future__ import annotations

import functools
import ast
import inspect
import re
import textwrap
import traceback
from pathlib import Path
from typing import Any

import torch.fx as fx
from torch import nn

from .errors import resolved, user_frame

__all__ = ["definition", "element_definition", "node_location", "call_site"]


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


def node_location(node: fx.Node, user_file: str | None = None) -> tuple[str | None, int | None]:
    """The user's file and line for a node, from its recorded stack trace."""
    cached = node.meta.get("modnorm_location")
    if cached is not None:
        return cached
    location = _location(node.stack_trace, user_file) if node.stack_trace else (None, None)
    node.meta["modnorm_location"] = location
    return location


@functools.lru_cache(maxsize=4096)
def _location(stack_trace: str, user_file: str | None) -> tuple[str | None, int | None]:
    """The user's frame of a stack trace. Cached: a repeated block's nodes share their stacks (the 80 layers of a
    70B Llama: 2807 stacks parsed, 0.2 s, for a few dozen distinct ones)."""
    found = user_frame(traceback.StackSummary.from_list(list(_parse_frames(stack_trace))), user_file)
    return (found[0], found[1]) if found else (None, None)


@functools.lru_cache(maxsize=None)
def _class_span(klass: type) -> tuple[str, int, int] | None:
    """(file, first line, last line) of a class's source; cached: inspect parses the whole file each time."""
    import inspect

    try:
        lines, start = inspect.getsourcelines(klass)
        file = inspect.getsourcefile(klass)
    except (OSError, TypeError):
        return None
    return (str(Path(file).resolve()), start, start + len(lines) - 1) if file else None


def call_site(node: fx.Node, module: Any, user_file: str | None = None) -> tuple[str | None, int | None]:
    """Where a user-defined module is called (`self.inp(x)` in its parent's forward), rather than the op inside
    its own forward: the innermost user frame outside the module's class body. Torch's own modules have no
    user frames inside, so this equals `node_location` for them."""

    if not node.stack_trace or module is None:
        return node_location(node, user_file)
    inside = _class_span(type(module))
    if inside is None:
        return node_location(node, user_file)
    frames = [f for f in _parse_frames(node.stack_trace)
              if not (resolved(f[0]) == inside[0] and inside[1] <= f[1] <= inside[2])]
    found = user_frame(traceback.StackSummary.from_list(frames), user_file)
    return (found[0], found[1]) if found else node_location(node, user_file)


@functools.lru_cache(maxsize=4096)
def _parse_frames(stack_trace: str) -> tuple[tuple[str, int, str, str], ...]:
    frames = []
    lines = stack_trace.splitlines()
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith('File "'):
            try:
                filename = line.split('"')[1]
                lineno = int(line.split(", line ")[1].split(",")[0])
            except (IndexError, ValueError):
                continue
            name = line.rsplit(" in ", 1)[-1]
            source = lines[i + 1].strip() if i + 1 < len(lines) else ""
            frames.append((filename, lineno, name, source))
    return tuple(frames)
