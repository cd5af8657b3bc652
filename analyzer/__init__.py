"""modnorm: the modular-norm calculus (Large et al. 2024) for any PyTorch model, and a linter built on it.

    >>> import modnorm
    >>> analysis = modnorm.analyze(model, (torch.randn(4, 128),))
    >>> analysis.network.sensitivity, [layer.target_norm for layer in analysis.layers]

Heavy modules (torch) are imported lazily so that `modnorm --version` stays fast.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .calculus import Options
    from .result import Analysis

# Held while a model is traced: torch.fx patches nn.Module.__call__ and __getattr__ process-wide (Tracer.trace),
# so two analyses at once would see each other's patches and leave them behind.
TRACING_LOCK = threading.RLock()

__all__ = ["__version__", "analyze", "register", "Semantics", "Options", "Analysis"]


def analyze(model: Any, example_inputs: Any, options: "Options | None" = None, *, file: str | None = None,
            entry: str | None = None, leaf_types: tuple[type, ...] = (), init_laws: dict[str, Any] | None = None,
            **option_fields: Any) -> "Analysis":
    """Trace `model` with `example_inputs` (a tensor or tuple) and run the modular-norm calculus.

    Keyword arguments not listed are fields of `Options` (profile, mass, hidden_mass, mass_of, norm_input_rms,
    loss). For a model built on the meta device, pass `init_laws` recorded with `modnorm.initlaw.record_init()`
    so that its norms are predicted from the init it really uses.
    """
    import torch

    from .calculus import Options, analyze_traced
    from .routes import trace

    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    options = _checked(options or Options(**option_fields))
    # fx patches nn.Module.__call__/__getattr__ for the whole process while it traces; the norm estimates draw
    # random directions, which must not move the caller's RNG.
    with TRACING_LOCK, torch.random.fork_rng(devices=[]):
        attributes = set(vars(model))
        was_training = model.training
        model.eval()
        try:
            traced = trace(model, inputs, user_file=file, leaf_types=leaf_types)
            device = "meta" if any(p.is_meta for p in model.parameters()) else "cpu"
            return analyze_traced(traced, options, user_file=file, entry=entry, device=device,
                                  init_laws=init_laws, example_inputs=inputs)
        finally:
            model.train(was_training)
            for name in set(vars(model)) - attributes:  # fx's `_tensor_constantN`: the graph keeps its own copy
                if name.startswith("_tensor_constant"):
                    delattr(model, name)


def _checked(options: "Options") -> "Options":
    """`options` if every field is a known choice and every number finite and in range (the CLI's checks)."""
    from .config import KEYS, check_value

    for key, field_name in (("profile", "profile"), ("mass-scheme", "mass"), ("loss", "loss"),
                            ("hidden-mass", "hidden_mass")):
        check_value(key, getattr(options, field_name), f"{field_name}=")
    if options.norm_input_rms is not None:
        check_value("norm-input-rms", options.norm_input_rms, "norm_input_rms=")
    for glob, total in options.mass_of:
        check_value("hidden-mass", total, f"mass_of[{glob!r}]=")
    return options


def __getattr__(name: str) -> Any:
    if name == "Options":
        from .calculus import Options
        return Options
    if name == "Analysis":
        from .result import Analysis
        return Analysis
    if name in ("register", "Semantics", "AtomSpec", "linear", "bond"):
        from . import semantics
        return getattr(semantics, name)
    raise AttributeError(name)
