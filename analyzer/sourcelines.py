"""Where a module is defined in the user's source: `self.attn = ...` in its owner's __init__, best effort."""

from __future__ import annotations

import functools
import inspect
import re

from torch import nn

__all__ = ["definition"]


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
