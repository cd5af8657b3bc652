"""Weight access for the calculus: the norms of parameters, measured on real weights, read from a checkpoint, or
predicted from the init law on the meta device. The natural norm of each atom kind is modnorm.atoms'; this module
only provides the raw norms (sigma_max, kernel slices, row RMS, max |w|) that entry functions ask for."""

from __future__ import annotations

import atexit
import math
import os
import threading
import weakref
from typing import Any

import torch
from torch import nn

from . import atoms, buffers, initlaw, norms

__all__ = ["WeightStore", "start_norms_ahead"]

# float64 work on a large weight goes a block of rows at a time: whole-tensor float64 copies of a 32000 x 4096
# embedding (1 GB each, two of them) were 2 of the 3 GB peak of a Llama-2-7B checkpoint audit (profiled).
_BLOCK_BYTES = 1 << 24


# The cores this process's job may keep busy, set by worker.py in the child that runs one CLI job in one torch
# thread (--jobs, parallel.cores_each); None in a process of the Python API (torch's own threads). With two, real
# weights' norms are computed ahead on a helper thread (NormsAhead) and a checkpoint's next matrix beside the current
# one (weights.Prefetch); with one, everything runs in the job's thread.
JOB_CORES: int | None = None


def _conv_kernel(w: torch.Tensor, groups: int) -> Any:
    """The kernel norm (norms.NormEstimate) WeightStore.conv reads for a real conv weight."""
    slices = atoms.Conv(tuple(w.shape), groups=groups).matrices(w.detach())
    return norms.conv_kernel_norm(slices.permute(1, 2, 0))


class NormsAhead:
    """The norms of a CPU model's real Conv1d/Conv2d kernels and Linear matrices, computed on a helper thread from
    the moment the trace starts (routes.trace), in the order of the model's modules; the analysis asks for them
    in graph order (`take`): one already computed is handed over, one being computed is waited for, one not
    started is left to the asker (it computes it as before). Every norm runs in one torch thread as in the CLI
    (and block Lanczos from its seeded generator), so the figures are the ones the analysis computes itself
    (tests/test_perf_tracing.py). Issue 21: the exact float64 Gram eigensolves were ~40% of a ResNet-50's and a
    ConvNeXt's check, while the trace, the floors' forward pass and the rest of the analysis left the second core
    idle."""

    def __init__(self, root: nn.Module) -> None:
        self._items: dict[tuple, torch.Tensor] = {}
        for name, module in root.named_modules():
            w = getattr(module, "weight", None)
            if not (isinstance(w, torch.Tensor) and w.is_floating_point() and w.device.type == "cpu"
                    and w.layout == torch.strided and w.numel()):
                continue
            weight = f"{name}.weight" if name else "weight"
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                self._items.setdefault(("conv", weight, module.groups), w)
            elif isinstance(module, nn.Linear):
                self._items.setdefault(("spectral", weight), w)
        self._state: dict[tuple, Any] = {}  # "claimed", "running", or ("done", result, error)
        self._lock = threading.Condition()
        self._stop = False
        self.handed = 0  # norms the analysis took from the helper
        self._thread = threading.Thread(target=self._run, name="modnorm-norms-ahead", daemon=True)

    @staticmethod
    def compute(key: tuple, w: torch.Tensor) -> Any:
        """The norm (norms.NormEstimate) WeightStore reads for this real weight."""
        if key[0] == "conv":
            return _conv_kernel(w, key[2])
        return norms.spectral_norm(w.detach())

    def __len__(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        torch.set_num_threads(1)  # this thread's own setting (module docstring of norms.py: Threads)
        for key, w in self._items.items():
            with self._lock:
                if self._stop:
                    return
                if key in self._state:
                    continue
                self._state[key] = "running"
            result, error = None, None
            try:
                result = self.compute(key, w)
            except Exception as exc:  # noqa: BLE001 - the asker recomputes it and meets the error itself
                error = exc
            with self._lock:
                self._state[key] = ("done", result, error)
                self._lock.notify_all()

    def take(self, *key: Any) -> Any:
        """The norm computed ahead for `key` (("conv", name, groups) or ("spectral", name)), or None: the caller
        computes it."""
        if key not in self._items:
            return None
        with self._lock:
            while True:
                state = self._state.get(key)
                if state is None:
                    self._state[key] = "claimed"
                    return None
                if state != "running":
                    break
                # While the helper computes it, this thread computes one the helper has not reached (from the end
                # of the order): both cores stay busy until every norm is done.
                spare = next((k for k in reversed(self._items) if k not in self._state), None)
                if spare is None:
                    self._lock.wait()
                    continue
                self._state[spare] = "running"
                self._lock.release()
                try:
                    result, error = self.compute(spare, self._items[spare]), None
                except Exception as exc:  # noqa: BLE001 - whoever asks for it recomputes it and meets the error
                    result, error = None, exc
                finally:
                    self._lock.acquire()
                self._state[spare] = ("done", result, error)
                self._lock.notify_all()
        if state == "claimed" or state[2] is not None:
            return None
        self.handed += 1
        return state[1]

    def stop(self) -> None:
        """No further norms (the one being computed finishes)."""
        with self._lock:
            self._stop = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


_AHEAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def start_norms_ahead(root: nn.Module) -> None:
    """Start `NormsAhead` for this model when a helper thread may use another core: in the CLI's job (one torch
    thread) with two cores to itself (JOB_CORES) on a machine that has them, and the model has real conv or linear
    weights."""
    if (JOB_CORES or 1) < 2 or (os.cpu_count() or 1) < 2 or torch.get_num_threads() != 1 or root in _AHEAD:
        return
    ahead = NormsAhead(root)
    if len(ahead):
        _AHEAD[root] = ahead
        ahead.start()


def _stop_all() -> None:
    for ahead in list(_AHEAD.values()):
        ahead.stop()


atexit.register(_stop_all)


class WeightStore:
    """Norms of parameters: measured on real weights, predicted from the init law on the meta device."""

    def __init__(self, root: nn.Module, laws: dict[str, Any] | None = None, checkpoint: Any = None) -> None:
        self.root = root
        self.laws = laws or {}  # recorded init laws of meta parameters (initlaw.py)
        self.checkpoint = checkpoint  # (weights.Checkpoint, model name -> stored name) for --weights PATH
        self.graph_module: nn.Module | None = None  # where torch.export keeps lifted constants
        self.predicted: dict[str, float] = {}  # the init-law prediction of a measured tensor's norm
        self.measured: dict[str, float] = {}
        self._cache: dict[tuple, tuple] = {}
        self._prefetch = self._start_prefetch() if checkpoint is not None else None

    def _start_prefetch(self) -> Any:
        """Spectral norms of the checkpoint's large matrices computed ahead in the order of the model's parameters
        (weights.Prefetch). Only matrices above norms.EXACT_MAX_SIDE, where spectral_norm is block Lanczos with its
        defaults (the same figures as lanczos_spectral_norm's), and not embeddings (measured by row RMS)."""
        from .weights import Prefetch

        stored, names = self.checkpoint
        order = [name for model_name, name in names.items()
                 if len(stored.shape(name)) == 2 and min(stored.shape(name)) > norms.EXACT_MAX_SIDE
                 and stored.dtype(name).is_floating_point and not isinstance(self._owner(model_name), nn.Embedding)]
        if not order:
            return None
        if stored.prefetch is not None:
            stored.prefetch.close()
        stored.prefetch = Prefetch(stored, order, norms.lanczos_spectral_norm, ahead=0 if JOB_CORES == 1 else 1)
        return stored.prefetch

    def _prefetched_spectral(self, name: str) -> float | None:
        """The measured spectral norm of `name` from the prefetch, when it computes this matrix's."""
        if self._prefetch is None or name not in self.checkpoint[1]:
            return None
        current = getattr(self._owner(name), name.rsplit(".", 1)[-1], None)
        if not isinstance(current, torch.Tensor) or not current.is_meta:
            return None  # the model holds this tensor itself: tensor() measures that one, not the checkpoint's
        stored = self.checkpoint[1][name]
        return self._prefetch.result(stored).upper if stored in self._prefetch else None

    def _law(self, name: str) -> tuple[Any, str]:
        """The recorded init law of a meta tensor, or None with the reason the default law is used."""
        law = self.laws.get(name)
        if law is not None and law.known:
            return law, f"predicted from {law.source}"
        if law is not None:
            return None, f"predicted from the default init ({law.source}: not understood)"
        return None, "predicted from the default init"

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer `name`; from the checkpoint when the model is on meta (read now, not kept).
        Constants that torch.export lifted live on the graph module, not on the model."""
        obj: Any = self.root
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            if self.graph_module is None:
                raise
            obj = self.graph_module
            for part in name.split("."):
                obj = getattr(obj, part)
        if self.checkpoint is not None and isinstance(obj, torch.Tensor) and obj.is_meta:
            stored, names = self.checkpoint
            if name in names:
                return stored.load(names[name], widen=True)  # 16-bit floats as float32: exact
        if isinstance(obj, torch.Tensor) and obj.is_meta and not isinstance(obj, nn.Parameter):
            recovered = buffers.recover(self.root, name)  # a constant the constructor computes (buffers.py)
            if recovered is not None:
                return recovered
        return obj

    def shape(self, name: str) -> tuple[int, ...]:
        # A checkpoint tensor's shape is its meta parameter's (weights.check_shapes made sure): reading and
        # widening the data just for its shape cost 18 s of a 7B-layer audit (profiled).
        if self.checkpoint is not None and name in self.checkpoint[1]:
            return tuple(self.checkpoint[0].shape(self.checkpoint[1][name]))
        return tuple(self.tensor(name).shape)

    def _owner(self, name: str) -> nn.Module | None:
        path = name.rsplit(".", 1)[0] if "." in name else ""
        try:
            return self.root.get_submodule(path)
        except AttributeError:
            return None

    def _cached(self, key: tuple, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _law_std(self, name: str) -> float:
        """Entry std of PyTorch's default init for the owner's type (kaiming_uniform(a=sqrt5) for Linear/Conv)."""
        owner, shape = self._owner(name), self.shape(name)
        if isinstance(owner, nn.Embedding):
            return 1.0
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        if isinstance(owner, (nn.Conv1d, nn.Conv2d)):
            fan_in = math.prod(shape[1:])
        return 1.0 / math.sqrt(3 * fan_in)

    def spectral(self, name: str, transpose: bool = False) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            measured = self._prefetched_spectral(name)
            w = self.tensor(name) if measured is None else None
            shape = self.shape(name) if w is None else tuple(w.shape)
            rows, cols = shape[0], math.prod(shape[1:])
            law, source = self._law(name)
            if w is None or not w.is_meta:
                if measured is None:
                    ahead = _AHEAD.get(self.root)
                    done = ahead.take("spectral", name) if ahead is not None else None
                    measured = (done if done is not None else norms.spectral_norm(w.detach())).upper
                if law is not None:  # both exist: keep the prediction for "predicted vs measured"
                    self.predicted[name] = initlaw.spectral(law, *((cols, rows) if transpose else (rows, cols)))
                    self.measured[name] = measured
                return measured, "measured"
            if transpose:
                rows, cols = cols, rows
            if law is not None:
                return initlaw.spectral(law, rows, cols), source
            std = self._law_std(name)
            return std * (math.sqrt(rows) + math.sqrt(cols)), source
        return self._cached(("spectral", name), compute)

    def conv(self, name: str, groups: int) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            c_out, c_in_g = w.shape[0], w.shape[1]
            if not w.is_meta:
                ahead = _AHEAD.get(self.root)
                done = ahead.take("conv", name, groups) if ahead is not None else None
                return (done if done is not None else _conv_kernel(w, groups)).upper, "measured"
            law, source = self._law(name)
            # A prediction, not a bound: std·(√m + √n) is the expected norm of a Gaussian matrix (Gordon); a finite
            # draw exceeds it by Tracy–Widom fluctuations of relative size ~n^(-2/3), a few percent at conv sizes,
            # hence the 5% margin.
            if law is not None and law.kind != "orthogonal":  # an orthogonal conv init is orthogonal as a whole
                return initlaw.spectral(law, c_out // groups, c_in_g) * 1.05, source
            std = self._law_std(name)
            return std * (math.sqrt(c_out // groups) + math.sqrt(c_in_g)) * 1.05, source
        return self._cached(("conv", name, groups), compute)

    def batched(self, name: str) -> tuple[float, str, int | None]:
        """max over experts of sigma_max of an (E, a, b) expert stack, where it came from, and the worst expert
        (None when predicted on meta: the init law gives every expert the same prediction)."""
        def compute() -> tuple[float, str, int | None]:
            w = self.tensor(name)
            experts, rows, cols = w.shape[0], w.shape[-2], w.shape[-1]
            if not w.is_meta:
                sigmas = [norms.spectral_norm(w[e].detach()).upper for e in range(experts)]
                worst = max(range(experts), key=sigmas.__getitem__) if sigmas else None
                return (max(sigmas) if sigmas else 0.0), "measured", worst
            law, source = self._law(name)
            if law is not None:  # the largest of E draws: 5% on top, as for conv slices
                return initlaw.spectral(law, rows, cols) * 1.05, source, None
            std = 1.0 / math.sqrt(3 * min(rows, cols))
            return std * (math.sqrt(rows) + math.sqrt(cols)) * 1.05, source, None
        return self._cached(("batched", name), compute)

    def row_rms(self, name: str) -> tuple[float, float, str]:
        def compute() -> tuple[float, float, str]:
            w = self.tensor(name)
            n, d = w.shape
            law, source = self._law(name)
            if not w.is_meta:
                rms = torch.cat([b.double().pow(2).mean(1).sqrt() for b in _row_blocks(w.detach())])
                if law is not None:
                    self.predicted[name], self.measured[name] = initlaw.row_rms(law, n, d), float(rms.max())
                return float(rms.max()), float(rms.min()), "measured"
            if law is not None:
                return initlaw.row_rms(law, n, d), 0.0, source
            std = self._law_std(name)
            return std * (1 + math.sqrt(math.log(max(n, 2)) / d)), 0.0, source
        return self._cached(("row_rms", name), compute)

    def abs_max(self, name: str) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            if not w.is_meta:
                return (max(map(abs, map(float, torch.aminmax(w.detach())))) if w.numel() else 0.0), "measured"
            law, source = self._law(name)
            if law is not None and not math.isnan(initlaw.abs_max(law, w.numel())):
                return initlaw.abs_max(law, w.numel()), source
            if w.dim() == 1:  # normalization gains initialise to ones
                return 1.0, source
            return math.sqrt(3) * self._law_std(name), source
        return self._cached(("abs_max", name), compute)

    def abs_min(self, name: str) -> tuple[float, str]:
        w = self.tensor(name)
        if not w.is_meta:
            return float(w.detach().abs().min()) if w.numel() else 0.0, "measured"
        law, source = self._law(name)
        if law is not None and law.kind == "constant":
            return abs(law.mean), source
        return (1.0 if w.dim() == 1 and law is None else 0.0), source

    def rms(self, name: str) -> tuple[float, str]:
        def compute() -> tuple[float, str]:
            w = self.tensor(name)
            if not w.is_meta:
                return _rms(w.detach()) if w.numel() else 0.0, "measured"
            law, source = self._law(name)
            if law is not None and not math.isnan(initlaw.rms(law)):
                return initlaw.rms(law), source
            owner = self._owner(name)
            if isinstance(owner, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
                return 0.0, source
            weight = getattr(owner, "weight", None)
            fan_in = math.prod(weight.shape[1:]) if weight is not None and weight.dim() > 1 else w.shape[0]
            return 1.0 / math.sqrt(3 * fan_in), source
        return self._cached(("rms", name), compute)

    def max_row_l1(self, name: str) -> tuple[float, str]:
        w = self.tensor(name)
        if not w.is_meta:
            sums = [b.abs().sum(1, dtype=torch.float64).max() for b in _row_blocks(w.detach())]
            return float(max(sums)), "measured"  # float64 sums of float32 or narrower entries: exact, a bound
        fan_in = w.shape[1]
        return fan_in * math.sqrt(3) * self._law_std(name), "predicted (worst case of the init law)"

    def batch_norm(self, prefix: str, eps: float) -> tuple[float, str]:
        module = self.root.get_submodule(prefix)
        var = self.tensor(f"{prefix}.running_var") if module.running_var is not None else None
        if var is None or var.is_meta:
            return 1.0 / math.sqrt(1.0 + eps), "predicted"
        var = var.detach().double()
        gamma = self.tensor(f"{prefix}.weight").detach().double().abs() if module.weight is not None else 1.0
        return float((gamma / (var + eps).sqrt()).max()), "measured"

    def batch_norm_shift(self, prefix: str, eps: float) -> float:
        """RMS over channels of eval BatchNorm's constant term beta - gamma mu / sqrt(var + eps): the output is
        s ⊙ x + shift, so its RMS is at most max|s| ||x|| + ||shift|| (a nonzero shift is what lets a BN output
        exceed its input's scale). On the meta device the init values (beta = 0, mu = 0) give 0."""
        module = self.root.get_submodule(prefix)
        if module.running_mean is None:
            return 0.0
        mean = self.tensor(f"{prefix}.running_mean")
        if mean.is_meta:
            return 0.0
        var = self.tensor(f"{prefix}.running_var").detach().double()
        gamma = self.tensor(f"{prefix}.weight").detach().double() if module.weight is not None else 1.0
        beta = self.tensor(f"{prefix}.bias").detach().double() if module.bias is not None else 0.0
        shift = beta - gamma * mean.detach().double() / (var + eps).sqrt()
        return float(shift.pow(2).mean().sqrt())



def _row_blocks(w: torch.Tensor) -> list[torch.Tensor]:
    """`w` as 2-D blocks of rows with at most _BLOCK_BYTES in float64 each (one block when it is small). A row is
    never split, so per-row reductions give the same numbers as on the whole tensor."""
    w = w.reshape(w.shape[0], -1) if w.dim() != 2 else w
    per_row = max(1, w.shape[1] * 8)
    if w.shape[0] * per_row <= _BLOCK_BYTES:
        return [w]
    return list(torch.split(w, max(1, _BLOCK_BYTES // per_row)))


def _rms(w: torch.Tensor) -> float:
    """Root mean square in float64; a large tensor summed a block at a time (the float64 sums of squares of
    float32 entries differ from one whole-tensor sum by rounding only, ~1e-16 relative)."""
    if w.numel() * 8 <= _BLOCK_BYTES:
        return float(w.double().pow(2).mean().sqrt())
    flat = w.reshape(-1)
    step = _BLOCK_BYTES // 8
    total = sum(float(flat[i:i + step].double().pow(2).sum()) for i in range(0, flat.numel(), step))
    return math.sqrt(total / flat.numel())
