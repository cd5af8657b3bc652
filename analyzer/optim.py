"""Modular normalization for training any unmodified PyTorch model (Modula's optimizer, from modnorm's analysis).

Every atom i of the analysis has a natural norm ‖·‖_i (Linear: |c| √(in/out) σ_max; Conv: the same per kernel
position and group, times k; Embedding: |c| max row RMS; Gain: max |w|) and a target t_i
(docs/theory/modular-norm.md#targets).

A step of `ModularNormalized` lets the base optimizer (SGD, SGD with momentum, Adam, AdamW, ...) propose its update Δ,
then rescales each atom's Δ_i to ‖Δ_i‖_i = lr · t_i, so the whole update has modular norm max_i ‖Δ_i‖_i / t_i = lr
(the learning rate of the parameter group, so schedulers and parameter groups work as usual). With
`dualize=True` a Linear or Conv update is first orthogonalized (Newton–Schulz, as in modular duality and Muon):
its steepest-descent direction in the spectral norm.

The base optimizer's own step size only shapes the direction (it is normalized away); its weight decay is part of
the direction. An atom with a bias shares its step between weight and bias: its output changes by at most
‖ΔW‖_i ‖x‖ + |c| ‖Δb‖_RMS, so with inputs in the unit ball ‖ΔW‖_i = |c| ‖Δb‖_RMS = lr · t_i / 2 keeps the change
within lr · t_i, what the analysis allows (moving both by lr · t_i reached twice that, measured). Parameters that
belong to no atom (e.g. a normalization's bias) keep the base optimizer's update and are listed in `unmanaged`.

The rescaling divides by an upper bound of ‖Δ_i‖_i, so a step never exceeds lr · t_i (`norm="certified"`,
default; "power" is its former name): for a smaller side ≤ EXACT_SIDE the float64 Gram bracket of norms.py
(deterministic), above it block Lanczos with norms.py's proven bound (fails with probability ≤ 1e-9 per matrix and
step, at most CERTIFIED_RTOL = 2% above σ_max, so a step is at most 2% short). The former 2-step power estimate
was a lower bound: steps up to 10% over lr · t_i (4.5% with `dualize`; tests/test_optim_bounds.py's MLP, 4 seeds). `norm="exact"` uses a float64 SVD.

Costs per step: one copy of each managed parameter into a buffer allocated once, and per matrix the bound above
(n × 4n, one thread, busy 2-core machine: 2 ms at n = 128 and 59 ms at 512 (Gram), 90 ms at 768 and 150–200 ms
at 1024 (Lanczos), against 0.2–4 ms for the former power steps; `dualize`'s orthogonalization costs 2–7× more); parameters are updated in place, never reallocated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .atoms import Conv, Linear, Matrix, atom_class, make_atom
from .errors import ModnormError
from .norms import DELTA, _one_thread, lanczos_steps, spectral_norms_batched
from .result import Analysis

__all__ = ["ModularNormalized", "AtomUpdate", "atoms_of", "natural_norm", "orthogonalize", "normalize_"]

_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton–Schulz iteration
CERTIFIED_RTOL = 0.02  # block Lanczos's bound is at most 2% above σ_max: a step at most 2% short of lr · t_i
# Smaller side up to which the float64 Gram is used: n × 4n, one thread, 2 cores: 28 ms Gram vs 23 ms Lanczos at
# n = 384, 59 vs 34 ms at 512, 314 vs 155 ms at 1024; with two threads on the busy machine the Gram stayed ~45 ms
# at 512 while Lanczos's small QRs took 240 ms.
EXACT_SIDE = 512
_BLOCK = 8
_LOG = logging.getLogger("modnorm.optim")
NORMS = ("certified", "power", "exact")  # an upper bound (default; "power" is its former name) | float64 SVD
PROFILES = ("certified", "modula")  # the report's default (worst-case constants) | Modula's nominal constants


@dataclass
class AtomUpdate:
    """One atom of the analysis as the optimizer sees it."""

    name: str
    kind: str  # an atoms.AtomKind value
    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None
    target: float
    factor: float  # natural norm = factor × raw norm
    scale: float  # the forward multiplier (biases are measured with it)
    groups: int = 1
    weight_name: str = ""
    bias_name: str | None = None
    vector: torch.Tensor | None = field(default=None, repr=False)  # unused (the former power iteration's warm start)


def atoms_of(model: nn.Module, analysis: Analysis) -> list[AtomUpdate]:
    """The atoms of `analysis`, bound to the parameters of `model` (matched by qualified name)."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    atoms = []
    for layer in analysis.layers:
        if layer.weight not in parameters or not (layer.target_norm > 0 and math.isfinite(layer.target_norm)):
            continue
        bias_name = next((p for p in layer.params if p != layer.weight and p in parameters), None)
        atoms.append(AtomUpdate(layer.name, layer.kind, parameters[layer.weight],
                                parameters[bias_name] if bias_name else None, layer.target_norm, layer.norm_factor,
                                abs(layer.scale) or 1.0, layer.groups, layer.weight, bias_name))
    return atoms


def _exact_upper(matrices: torch.Tensor) -> float:
    """max σ over the batch, rounded up: norms.py's float64 Gram bracket (deterministic)."""
    try:
        return max(e.upper for e in spectral_norms_batched(matrices, "exact"))
    except ModnormError:  # a non-finite update: NaN, which the rescaling propagates as it always has
        return math.nan


def _lanczos_upper(matrices: torch.Tensor, rtol: float = CERTIFIED_RTOL, delta: float = DELTA) -> float:
    """max σ over the batch, from above with probability ≥ 1 − delta per matrix and at most (1 + rtol)(1 + η/2)
    above σ_max: block Lanczos from a seeded Gaussian block, k = norms.lanczos_steps steps, upper =
    √(θ (1 + η) / (1 − ε)) — the bound proven in norms.py, batched and on the update's device. Capped by ‖W‖_F
    (deterministic: the bound for a low-rank update)."""
    batch, rows, cols = matrices.shape
    w = matrices if rows <= cols else matrices.transpose(1, 2)  # G = W Wᵀ on the smaller side n
    n, epsilon = w.shape[1], 1 - 1 / (1 + rtol) ** 2
    block = max(1, min(_BLOCK, n // 8))
    steps = lanczos_steps(n, epsilon, delta, block)
    if 2 * steps * block > n:  # the Krylov space would be (nearly) the whole space: the Gram is cheaper (norms.py)
        return _exact_upper(matrices)
    frobenius = torch.linalg.matrix_norm(w.to(torch.float64)) * (1 + 1e-6)  # float64 rounding of the sum, covered
    if not bool(torch.isfinite(frobenius).all()):
        return math.nan  # a non-finite update: the rescaling propagates NaN, as it always has
    eta = 1e-10 if w.dtype == torch.float64 else 1e-4  # finite precision of the products (norms.py)
    randomized = (_ritz_value(w, block, steps) * (1 + eta) / (1 - epsilon)).sqrt()
    return float(torch.minimum(randomized, frobenius).max())


def _ritz_value(w: torch.Tensor, block: int, steps: int) -> torch.Tensor:
    """θ = λ_max(Qᵀ G Q) per matrix, Q an orthonormal basis (float64, reorthogonalised twice per step as in norms.py)
    of the block Krylov space of G = W Wᵀ from a seeded Gaussian n × block start: same start every call, so the
    same update gives the same step."""
    batch, n, _ = w.shape
    generator = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(batch, n, block, generator=generator, dtype=torch.float64)).Q.to(w.device)
    basis, images = [q], []
    for step in range(steps):
        # (qᵀ W)ᵀ rather than Wᵀ q: 8.7 vs 16.4 ms on 1024 x 4096, b = 8 (one thread; norms.py saw the same)
        image = w @ (basis[-1].transpose(1, 2).to(w.dtype) @ w).transpose(1, 2)
        images.append(image.to(torch.float64))
        if step + 1 < steps:
            done, q = torch.cat(basis, 2), images[-1]
            for _ in range(2):
                q = torch.linalg.qr(q - done @ (done.transpose(1, 2) @ q)).Q
            basis.append(q)
    projected = torch.cat(basis, 2).transpose(1, 2) @ torch.cat(images, 2)
    return torch.linalg.eigvalsh((projected + projected.transpose(1, 2)) / 2)[:, -1].clamp_min(0)


def _sigma_upper(matrices: torch.Tensor) -> float:
    """An upper bound on max σ over a batch of matrices: exact where the float64 Gram is cheaper than block
    Lanczos (smaller side ≤ EXACT_SIDE, measured), else block Lanczos (at most CERTIFIED_RTOL above)."""
    if matrices.numel() == 0:
        return 0.0
    if min(matrices.shape[1:]) <= EXACT_SIDE:
        return _exact_upper(matrices)
    with _one_thread():  # its small QRs collapse with two threads under load (4x slower measured, as norms.py says)
        return _lanczos_upper(matrices)


def natural_norm(atom: AtomUpdate, delta: torch.Tensor, method: str = "certified", steps: int = 2) -> float:
    """‖delta‖ in the atom's natural norm (module docstring), forward scale included: "exact" (float64 SVD) or
    "certified" (alias "power"): an upper bound (exact bracket or block Lanczos; see _sigma_upper). `steps` is
    ignored (it set the former power iteration's steps)."""
    d = delta.detach()
    d = d if d.dtype in (torch.float32, torch.float64) else d.float()
    geometry = make_atom(atom.kind, tuple(d.shape), atom.scale, atom.groups)
    if isinstance(geometry, Matrix) and method != "exact":
        return atom.factor * _sigma_upper(geometry.matrices(d))
    return atom.factor * geometry.raw_norm(d)


def orthogonalize(delta: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton–Schulz orthogonalization of a matrix (or of each kernel slice): U Vᵀ of its SVD, approximately.
    Muon's quintic steps leave σ in about [0.7, 1.2]; a final cubic step 1.5σ − 0.5σ³ (≤ 1 for all σ ≤ 2, flat at
    1) brings them to about [0.88, 1], so the update stays close to U Vᵀ after the rescaling by σ_max."""
    shape = delta.shape
    x = delta.float().reshape(shape[0], -1) if delta.dim() > 2 else delta.float()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm().clamp_min(1e-30)
    a, b, c = _NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = 1.5 * x - 0.5 * (x @ x.T) @ x
    x = x.T if tall else x
    return x.reshape(shape).to(delta.dtype)


def normalize_(updates: dict[str, torch.Tensor], atoms: Iterable[AtomUpdate], lr: float, *, dualize: bool = False,
               norm: str = "certified", power_steps: int = 2) -> None:
    """The functional form: rescale, in place, each atom's update in `updates` (keyed by qualified parameter
    name) so that ‖Δ_i‖_i = lr · t_i, or, for an atom with a bias, ‖Δ_i‖_i = |c| ‖Δb‖_RMS = lr · t_i / 2."""
    for atom in atoms:
        delta = updates.get(atom.weight_name)
        if delta is not None:
            _normalize_atom(atom, delta, updates.get(atom.bias_name) if atom.bias_name else None, lr, dualize, norm,
                            power_steps)


def _normalize_atom(atom: AtomUpdate, delta: torch.Tensor, bias: torch.Tensor | None, lr: float, dualize: bool,
                    norm: str, power_steps: int) -> None:
    if dualize and issubclass(atom_class(atom.kind), (Linear, Conv)):  # orthogonalize() reads (out, in, *kernel)
        delta.copy_(orthogonalize(delta))
    share = _weight_share(bias is not None)
    size = natural_norm(atom, delta, norm, power_steps)
    delta.mul_(share * lr * atom.target / size if size > 0 else 0.0)
    _normalize_bias(atom, bias, (1 - share) * lr)


def _weight_share(has_bias: bool) -> float:
    """The weight's share of an atom's step lr · t_i: all of it, or half when a bias takes the other half."""
    return 0.5 if has_bias else 1.0


def _normalize_bias(atom: AtomUpdate, bias: torch.Tensor | None, lr: float) -> None:
    if bias is not None:
        rms = float(bias.detach().double().pow(2).mean().sqrt()) * atom.scale
        bias.mul_(lr * atom.target / rms if rms > 0 else 0.0)


def _normalize_tied(atom: AtomUpdate, tied: list[AtomUpdate], delta: torch.Tensor, bias: torch.Tensor | None,
                    lr: float, dualize: bool, norm: str, power_steps: int) -> None:
    """One weight shared by several atoms (a tied embedding and head) moves once, on its first atom's turn, by the
    largest step that keeps ‖Δ‖_i ≤ lr · t_i for every atom i sharing it (so the modular norm of the step stays lr);
    each atom's own bias is normalized as usual."""
    if atom is tied[0]:
        if dualize and any(a.kind in ("Linear", "Conv1d", "Conv2d") for a in tied):
            delta.copy_(orthogonalize(delta))
        share = _weight_share(any(a.bias is not None for a in tied))
        sizes = [(a.target, natural_norm(a, delta, norm, power_steps)) for a in tied]
        delta.mul_(min((share * lr * t / size for t, size in sizes if size > 0), default=0.0))
    _normalize_bias(atom, bias, (1 - _weight_share(any(a.bias is not None for a in tied))) * lr)


class ModularNormalized:
    """Wrap a torch optimizer so that every step has modular norm equal to the learning rate.

        base = torch.optim.AdamW(model.parameters(), lr=1e-3)
        opt = ModularNormalized(base, model, example_inputs=x)      # or analysis=modnorm.analyze(model, x)
        loss.backward(); opt.step(); opt.zero_grad()

    `lr` (optional) sets every group's learning rate; afterwards the groups' "lr" is the modular-norm step, so
    learning-rate schedulers on `opt` (or on `base`) work unchanged. `profile` chooses the targets: "certified"
    (the report's default) or "modula" (Modula's nominal constants); the choice is logged once ("modnorm.optim",
    see `describe()`). Targets are computed once; `retarget()` recomputes them when you ask (after loading a
    checkpoint, say), never silently per step.
    """

    def __init__(self, base: torch.optim.Optimizer, model: nn.Module, analysis: Analysis | None = None, *,
                 example_inputs: Any = None, lr: float | None = None, dualize: bool = False, norm: str = "certified",
                 power_steps: int = 2, profile: str | None = None, hidden_mass: float | None = None) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
        if analysis is not None and profile is not None and analysis.profile != profile:
            raise ValueError(f"the analysis was run with profile {analysis.profile!r}, not {profile!r}: "
                             "drop one of the two, or re-run modnorm.analyze with the profile you want")
        if analysis is not None and hidden_mass is not None and analysis.hidden_mass != hidden_mass:
            raise ValueError(f"the analysis was run with hidden_mass {analysis.hidden_mass:g}, not {hidden_mass:g}: "
                             "drop one of the two, or re-run modnorm.analyze with the mass you want")
        self.base, self.model, self.example_inputs = base, model, example_inputs
        self.hidden_mass = analysis.hidden_mass if analysis is not None else (hidden_mass or 1.0)
        self.dualize, self.norm, self.power_steps = dualize, norm, power_steps
        self.profile = analysis.profile if analysis is not None else (profile or PROFILES[0])
        if analysis is None:
            analysis = self._analyze(example_inputs)
        if lr is not None:
            for group in base.param_groups:
                group["lr"] = lr
        self._group_of = {id(p): g for g in base.param_groups for p in g["params"]}
        self._before: dict[int, torch.Tensor] = {}
        self._bind(analysis)
        _LOG.info("%s", self.describe())

    def _analyze(self, example_inputs: Any) -> Analysis:
        if example_inputs is None:
            raise ValueError("pass an Analysis or example_inputs to analyse the model with")
        from . import analyze

        return analyze(self.model, example_inputs, profile=self.profile, hidden_mass=self.hidden_mass)

    def _bind(self, analysis: Analysis) -> None:
        """Take the targets of `analysis` (the only place they are set: never silently per step)."""
        self.analysis = analysis
        self.atoms = atoms_of(self.model, analysis)
        managed = {id(a.weight) for a in self.atoms} | {id(a.bias) for a in self.atoms if a.bias is not None}
        names = {id(p): n for n, p in self.model.named_parameters()}
        in_groups = [p for g in self.base.param_groups for p in g["params"]]
        self.unmanaged = [names.get(id(p), "?") for p in in_groups if id(p) not in managed]
        self._atoms = [a for a in self.atoms if id(a.weight) in self._group_of]
        sharing: dict[int, list[AtomUpdate]] = {}
        for atom in self._atoms:
            sharing.setdefault(id(atom.weight), []).append(atom)
        self._tied = {key: atoms for key, atoms in sharing.items() if len(atoms) > 1}

    def retarget(self, example_inputs: Any = None) -> "ModularNormalized":
        """Re-analyse the model as it is now (e.g. after loading a checkpoint) and take the new targets.

        Uses the same profile; `example_inputs` defaults to the ones given at construction. The base optimizer's
        state is kept."""
        inputs = example_inputs if example_inputs is not None else self.example_inputs
        if inputs is None:
            raise ValueError("retarget needs example_inputs (none were given at construction)")
        self.example_inputs = inputs
        self._bind(self._analyze(inputs))
        _LOG.info("retargeted: %s", self.describe())
        return self

    def describe(self) -> str:
        """One line: the profile the targets come from, how many atoms are managed and the range of targets."""
        targets = [a.target for a in self.atoms]
        span = f"targets {min(targets):.3g} .. {max(targets):.3g}" if targets else "no targets"
        kind = "Modula's nominal constants" if self.profile == "modula" else "certified worst-case constants"
        return (f"ModularNormalized: profile {self.profile} ({kind}), hidden mass {self.hidden_mass:g}; "
                f"{len(self.atoms)} atoms, {span}; "
                f"{len(self.unmanaged)} parameters keep the base optimizer's update")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @property
    def state(self) -> Any:
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def _snapshot(self) -> None:
        for atom in self._atoms:
            for p in (atom.weight, atom.bias):
                if p is None:
                    continue
                buffer = self._before.get(id(p))
                if buffer is None:
                    buffer = self._before[id(p)] = torch.empty_like(p)
                buffer.copy_(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        self._snapshot()
        loss = self.base.step(closure)
        for atom in self._atoms:
            lr = self._group_of[id(atom.weight)]["lr"]
            has_bias = atom.bias is not None and id(atom.bias) in self._group_of
            # Δ takes the parameter's place for a moment: no allocation, the parameter object is kept.
            delta = atom.weight.sub_(self._before[id(atom.weight)])
            bias = atom.bias.sub_(self._before[id(atom.bias)]) if has_bias else None
            tied = self._tied.get(id(atom.weight))
            if tied is None:
                _normalize_atom(atom, delta, bias, lr, self.dualize, self.norm, self.power_steps)
            else:
                _normalize_tied(atom, tied, delta, bias, lr, self.dualize, self.norm, self.power_steps)
            delta.add_(self._before[id(atom.weight)])
            if has_bias:
                bias.add_(self._before[id(atom.bias)])
        return loss

    def update_norms(self, before: dict[str, torch.Tensor], model: nn.Module) -> dict[str, float]:
        """Exact size / target of each atom's last update, from a copy of the weights before it (tests): its weight's
        natural norm plus |c| times its bias's RMS, the bound on its output change for inputs in the unit ball."""
        current = dict(model.named_parameters(remove_duplicate=False))
        names = {id(p): n for n, p in current.items()}
        out = {}
        for atom in self.atoms:
            size = natural_norm(atom, atom.weight.detach() - before[names[id(atom.weight)]], "exact")
            if atom.bias is not None and names.get(id(atom.bias)) in before:
                delta_b = (atom.bias.detach() - before[names[id(atom.bias)]]).double()
                size += float(delta_b.pow(2).mean().sqrt()) * atom.scale
            out[atom.name] = size / atom.target
        return out
