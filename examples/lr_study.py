"""Does the optimal learning rate transfer across width and depth on real text? (issue 22)

Character-level language modelling on the Python standard library's own source files (every machine has them; no
download): the .py files under `sysconfig.get_paths()["stdlib"]` (site-packages excluded), split into train and
validation by file (a file is in validation when crc32 of its relative path is 0 mod 10: deterministic, no file in
both). Characters are ASCII bytes (vocabulary 128; the rare non-ASCII byte becomes token 0).

Three GPTs, each swept over 4 widths (at the base depth) and 4 depths (at the base width):
  * `modula`  — a Modula-style GPT in plain torch (fixtures/modula_gpt.py: orthogonal init, 1/d attention logits,
                q, k, v scaled by 1/3, (1 - 1/2L) x + (1/2L) f(x) residuals, Modula's atom multipliers);
  * `nanogpt` — the nanoGPT fixture as users write it (fixtures/nanogpt.py: unscaled residuals, 1/sqrt(d) logits,
                normal(0, 0.02) init, tied head);
  * `nanogpt-fixed` — the same code with the three changes modnorm prints for it (MN201/MN203 residual scaling
                (1 - 1/2L, 1/2L), MN301 attention logits 1/d, MN101 well-normed init: orthogonal Linear with gain
                sqrt(fan_out/fan_in), embedding rows of RMS 1).
Optimizers: plain AdamW (its learning rate tuned per size over the grid), and modnorm.optim.ModularNormalized around
AdamW and around SGD with momentum 0.9 (learning rate = the modular norm of each step). Every run: linear warm-up
over the first 10% of steps, then linear decay to 0; validation loss (nats per character) on fixed windows of the
validation files at the end.

    python examples/lr_study.py                  # the default (full) study: see --help for the grid
    python examples/lr_study.py --quick          # a smoke run in seconds (what the test suite runs)
    python examples/lr_study.py --models modula --steps 200   # a reduced grid

Results go to a JSON file (written after every run, so an interrupted study is still readable, and re-running with
the same --out resumes it), docs/lr_study_<model>.png (validation loss vs learning rate: one panel per optimizer x
sweep axis) and a markdown table of the optimum per size (printed and written to <out>.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import sysconfig
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))

import modula_gpt  # noqa: E402
import nanogpt  # noqa: E402

import modnorm  # noqa: E402
from modnorm.optim import ModularNormalized  # noqa: E402

VOCAB = 128
HEAD_DIM = 16  # heads = width / 16: the head dimension is fixed while the width grows


# ----------------------------------------------------------------------------------------------------------- data
def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files, sorted (site-packages and dist-packages excluded: they vary by machine)."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))


def is_validation(relative: str) -> bool:
    """A file's split depends on its path only: the same files are held out on every run and every machine."""
    return zlib.crc32(relative.encode()) % 10 == 0


def encode(text: bytes) -> torch.Tensor:
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).clone()
    data[data >= VOCAB] = 0
    return data


def load_corpus(max_bytes: int | None = None, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) token tensors (uint8). `max_bytes` caps the bytes read per split (quick runs)."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    sizes = {False: 0, True: 0}
    for path in stdlib_files(root):
        split = is_validation(path.relative_to(root).as_posix())
        if max_bytes is not None and sizes[split] >= max_bytes:
            continue
        try:
            text = path.read_bytes()
        except OSError:
            continue  # an unreadable file is no part of the corpus; the split of the others does not change
        parts[split].append(text + b"\n")
        sizes[split] += len(text) + 1
    if not parts[False] or not parts[True]:
        raise SystemExit(f"error: too few Python files under {root} to split into train and validation; "
                         "run with a Python whose standard library ships its sources")
    return encode(b"".join(parts[False])), encode(b"".join(parts[True]))


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.stack([data[s:s + context + 1] for s in starts.tolist()]).long()
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def train_batches(data: torch.Tensor, steps: int, batch: int, context: int, seed: int) -> Iterator:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield windows(data, torch.randint(0, len(data) - context - 1, (batch,), generator=g), context)


def validation_starts(data: torch.Tensor, count: int, context: int) -> torch.Tensor:
    """Evenly spaced windows over the whole validation text: the same for every run."""
    return torch.linspace(0, len(data) - context - 2, count).long()


# --------------------------------------------------------------------------------------------------------- models
class FixedAttention(nanogpt.CausalSelfAttention):
    """nanoGPT's attention with logits scaled by 1/d (MN301) instead of 1/sqrt(d)."""

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / k.size(-1))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class FixedBlock(nanogpt.Block):
    """nanoGPT's block with each of its two residual merges scaled (1 - 1/2L) x + (1/2L) f(x) (MN201, MN203)."""

    def __init__(self, config):
        super().__init__(config)
        self.attn = FixedAttention(config)
        self.b = 1 / (2 * config.n_layer)

    def forward(self, x):
        x = (1 - self.b) * x + self.b * self.attn(self.ln_1(x))
        return (1 - self.b) * x + self.b * self.mlp(self.ln_2(x))


class ScaledHead(nn.Module):
    """The tied head with the output multiplier MN101 prints for a tied tensor (the tie kept)."""

    def __init__(self, head: nn.Linear, multiplier: float):
        super().__init__()
        self.head, self.multiplier = head, multiplier

    def forward(self, x):
        return self.head(x) * self.multiplier


class FixedGPT(nanogpt.GPT):
    """nanoGPT with modnorm's fixes; everything else (LayerNorm, GELU, biases, the tie) as written. The tied
    embedding/head gets MN101's tied fix: the embedding well-normed (rows of RMS 1), the head's output multiplied
    by 1 / (its natural norm then), sqrt(out/in) / sigma_max, which brings it to norm 1 with the tie kept."""

    def __init__(self, config):
        super().__init__(config)
        self.transformer.h = nn.ModuleList([FixedBlock(config) for _ in range(config.n_layer)])
        self.apply(self._init_weights)
        self._init_weights(self.transformer.wte)  # the tied tensor: the embedding's init, not the head's
        head = self.lm_head
        sigma = float(torch.linalg.matrix_norm(head.weight.detach().double(), ord=2))
        self.lm_head = ScaledHead(head, math.sqrt(head.out_features / head.in_features) / sigma)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):  # well-normed (MN101): sqrt(in/out) sigma_max = 1
            nn.init.orthogonal_(module.weight, gain=math.sqrt(module.out_features / module.in_features))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # rows of RMS 1
            with torch.no_grad():
                module.weight.normal_()
                module.weight /= module.weight.pow(2).mean(1, keepdim=True).sqrt()


def build(model: str, width: int, depth: int, context: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(1 + 1000 * seed)
    heads = max(1, width // HEAD_DIM)
    if model == "modula":
        return modula_gpt.GPT(VOCAB, context, heads, width, width // heads, width // heads, depth)
    config = nanogpt.GPTConfig(block_size=context, vocab_size=VOCAB, n_layer=depth, n_head=heads, n_embd=width)
    return nanogpt.GPT(config) if model == "nanogpt" else FixedGPT(config)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


# ------------------------------------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class Run:
    model: str
    width: int
    depth: int
    optimizer: str  # "adamw" | "norm-adamw" | "norm-sgd"
    lr: float
    steps: int
    batch: int
    context: int
    profile: str = "certified"
    norm: str = "power"  # how the normalized optimizers measure σ_max (modnorm.optim's default; "exact" in tests)
    hidden_mass: float = 1.0  # the normalized optimizers' mass of all hidden blocks together (input and output: 1)
    seed: int = 0  # init seed 1 + 1000 seed, data order seed 2 + 7919 seed

    @property
    def key(self) -> str:
        mass = "" if self.hidden_mass == 1.0 else f"|m{self.hidden_mass:g}"
        seed = f"|s{self.seed}" if self.seed else ""
        return (f"{self.model}|w{self.width}|d{self.depth}|{self.optimizer}|{self.lr:.6g}|{self.steps}|{self.batch}|"
                f"{self.context}|{self.profile}{mass}{seed}")


GRIDS = {  # half-decades: AdamW's own learning rate; the normalized optimizers' modular-norm step
    "adamw": [10 ** e for e in (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5)],
    "norm-adamw": [10 ** e for e in (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0)],
    "norm-sgd": [10 ** e for e in (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0)],
}

_CORPUS: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}
_ANALYSES: dict[tuple, Any] = {}  # per process: the targets depend on the architecture and init, not on lr


def corpus(max_bytes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if max_bytes not in _CORPUS:
        _CORPUS[max_bytes] = load_corpus(max_bytes)
    return _CORPUS[max_bytes]


def make_optimizer(run: Run, model: nn.Module, example: torch.Tensor) -> Any:
    if run.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=run.lr, betas=(0.9, 0.95), weight_decay=0.01)
    key = (run.model, run.width, run.depth, run.context, run.profile, run.hidden_mass)
    if key not in _ANALYSES:
        _ANALYSES[key] = modnorm.analyze(model, example, profile=run.profile, hidden_mass=run.hidden_mass)
    if run.optimizer == "norm-adamw":  # the base's lr only shapes the direction: it is normalized away
        base = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    else:
        base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return ModularNormalized(base, model, _ANALYSES[key], lr=run.lr, norm=run.norm)


def schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 10% of steps, then linear decay to 0."""
    warm = max(1, steps // 10)
    return (step + 1) / warm if step < warm else max(0.0, (steps - step) / (steps - warm))


@torch.no_grad()
def validation_loss(model: nn.Module, data: torch.Tensor, context: int, windows_count: int = 256) -> float:
    model.eval()
    starts = validation_starts(data, windows_count, context)
    total = 0.0
    for chunk in starts.split(64):
        x, y = windows(data, chunk, context)
        total += float(loss_of(model, x, y)) * len(chunk)
    model.train()
    return total / len(starts)


def train(run: Run, max_bytes: int | None = None, measure_step: bool = False) -> dict[str, Any]:
    """Train one configuration; returns validation loss, the training-loss curve and (normalized optimizers, if
    `measure_step`) the exact modular norm of the first step divided by its learning rate."""
    torch.set_num_threads(1)
    start, cpu = time.time(), time.process_time()
    train_data, val_data = corpus(max_bytes)
    model = build(run.model, run.width, run.depth, run.context, run.seed)
    example = train_data[: run.context].long().unsqueeze(0)
    opt = make_optimizer(run, model, example)
    curve, first_step = [], None
    for step, (x, y) in enumerate(train_batches(train_data, run.steps, run.batch, run.context,
                                                         seed=2 + 7919 * run.seed)):
        for group in opt.param_groups:
            group["lr"] = run.lr * schedule(step, run.steps)
        loss = loss_of(model, x, y)
        if not torch.isfinite(loss):
            return {"val": math.inf, "curve": curve, "diverged": True, "seconds": time.time() - start,
                    "cpu_seconds": time.process_time() - cpu}
        opt.zero_grad()
        loss.backward()
        before = ({n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
                  if measure_step and step == 0 else None)
        opt.step()
        if before is not None and isinstance(opt, ModularNormalized):
            ratios = opt.update_norms(before, model)
            first_step = max(ratios.values()) / (run.lr * schedule(0, run.steps))
        curve.append(loss.item())
    val = validation_loss(model, val_data, run.context, 64 if max_bytes else 256)
    stride = max(1, len(curve) // 20)
    return {"val": val if math.isfinite(val) else math.inf, "curve": curve[::stride], "diverged": not math.isfinite(val),
            "first_step_over_lr": first_step, "seconds": time.time() - start,
            "cpu_seconds": time.process_time() - cpu}


# --------------------------------------------------------------------------------------------------------- sweeps
@dataclasses.dataclass(frozen=True)
class Grid:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    base_width: int
    base_depth: int
    steps: int
    batch: int
    context: int
    only: tuple[tuple[int, int], ...] = ()  # train just these (width, depth) sizes (a refinement, other seeds)

    def sizes(self) -> list[tuple[int, int]]:
        """The width sweep at the base depth, then the depth sweep at the base width (the base point once)."""
        if self.only:
            return list(self.only)
        points = [(w, self.base_depth) for w in self.widths] + [(self.base_width, d) for d in self.depths]
        return list(dict.fromkeys(points))


FULL = Grid(widths=(16, 32, 64, 128), depths=(1, 2, 4, 8), base_width=32, base_depth=2, steps=300, batch=16,
            context=32)
QUICK = Grid(widths=(16, 32), depths=(1, 2), base_width=16, base_depth=1, steps=12, batch=4, context=16)


def runs_of(grid: Grid, models: list[str], optimizers: list[str], profile: str,
            lrs: dict[str, list[float]] | list[float] | None = None, hidden_mass: float = 1.0,
            seed: int = 0) -> list[Run]:
    """Every run of the grid; `lrs` replaces the learning rates, for every optimizer (a list) or per optimizer."""
    def rates(o: str) -> list[float]:
        chosen = lrs.get(o) if isinstance(lrs, dict) else lrs
        return chosen or GRIDS[o]

    runs = [Run(m, w, d, o, lr, grid.steps, grid.batch, grid.context, "-" if o == "adamw" else profile,
                hidden_mass=1.0 if o == "adamw" else hidden_mass, seed=seed)
            for m in models for (w, d) in grid.sizes() for o in optimizers for lr in rates(o)]
    # model by model (a partial study has whole models), biggest first within one so the workers finish together
    return sorted(runs, key=lambda r: (models.index(r.model), optimizers.index(r.optimizer), -(r.width ** 2) * r.depth))


def _worker(args: tuple[Run, int | None]) -> tuple[Run, dict[str, Any]]:
    run, max_bytes = args
    return run, train(run, max_bytes)


def study(runs: list[Run], out: Path, workers: int, max_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """Run every configuration not already in `out` (JSON), saving after each one."""
    results: dict[str, dict[str, Any]] = json.loads(out.read_text()) if out.exists() else {}
    todo = [r for r in runs if r.key not in results]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {out}, {len(todo)} to do, {workers} workers",
          flush=True)
    started = time.time()
    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            done = pool.imap_unordered(_worker, [(r, max_bytes) for r in todo])
            _collect(done, results, out, len(todo), started)
    else:
        _collect((_worker((r, max_bytes)) for r in todo), results, out, len(todo), started)
    return results


def _collect(done: Iterator, results: dict, out: Path, total: int, started: float) -> None:
    for i, (run, result) in enumerate(done, 1):
        results[run.key] = {**dataclasses.asdict(run), **result}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=0, default=lambda v: None))
        print(f"[{i}/{total} {time.time() - started:5.0f} s] {run.model:13s} w{run.width:<4d} d{run.depth:<2d} "
              f"{run.optimizer:10s} lr {run.lr:<8.3g} val {result['val']:.4f} ({result['seconds']:.1f} s)",
              flush=True)


# ------------------------------------------------------------------------------------------------------- analysis
def curve_of(results: dict, run_filter: dict[str, Any], grid: list[float]) -> list[float]:
    """Validation loss per learning rate of `grid` for the runs matching `run_filter` (nan where missing)."""
    by_lr = {round(math.log10(r["lr"]), 3): r["val"] for r in results.values() if _matches(r, run_filter)}
    return [by_lr.get(round(math.log10(lr), 3), math.nan) for lr in grid]


def optimum(grid: list[float], losses: list[float]) -> tuple[float, float, float] | None:
    """(grid argmin, loss there, interpolated optimum): a parabola in log10(lr) through the argmin and its two
    neighbours gives the optimum between grid points (the argmin itself at the edge of the grid)."""
    finite = [(l, i) for i, l in enumerate(losses) if math.isfinite(l)]
    if not finite:
        return None
    best, i = min(finite)
    if 0 < i < len(grid) - 1 and all(math.isfinite(losses[j]) for j in (i - 1, i + 1)):
        x0, x1, x2 = (math.log10(grid[j]) for j in (i - 1, i, i + 1))
        y0, y1, y2 = losses[i - 1], best, losses[i + 1]
        curvature = (y0 - 2 * y1 + y2)
        shift = 0.5 * (x1 - x0) * (y0 - y2) / curvature if curvature > 0 else 0.0
        return grid[i], best, 10 ** (x1 + max(-0.5, min(0.5, shift / (x1 - x0))) * (x1 - x0))
    return grid[i], best, grid[i]


def selector(model: str, width: int, depth: int, optimizer: str, profile: str,
             hidden_mass: float = 1.0, seed: int = 0) -> dict[str, Any]:
    return {"model": model, "width": width, "depth": depth, "optimizer": optimizer,
            "profile": "-" if optimizer == "adamw" else profile,
            "hidden_mass": 1.0 if optimizer == "adamw" else hidden_mass, "seed": seed}


_DEFAULTS = {"hidden_mass": 1.0, "seed": 0}  # what runs stored before these fields existed had


def _matches(result: dict[str, Any], run_filter: dict[str, Any]) -> bool:
    """Whether a stored run is the one the filter describes."""
    return all(result.get(k, _DEFAULTS.get(k)) == v for k, v in run_filter.items())


def summary(results: dict, grid: Grid, models: list[str], optimizers: list[str], profile: str,
            hidden_mass: float = 1.0) -> tuple[str, dict]:
    """The markdown table (optimum per size) and the transfer numbers (spread of the optimum per sweep)."""
    lines = ["| model | optimizer | sweep | " + " | ".join(f"size {i + 1}" for i in range(4)) +
             " | optimum spread |", "| --- | --- | --- |" + " ---: |" * 4 + " ---: |"]
    spreads: dict[str, float] = {}
    for model in models:
        for opt in optimizers:
            for axis, points in (("width", [(w, grid.base_depth) for w in grid.widths]),
                                 ("depth", [(grid.base_width, d) for d in grid.depths])):
                cells, optima = [], []
                for w, d in points:
                    losses = curve_of(results, selector(model, w, d, opt, profile, hidden_mass), GRIDS[opt])
                    found = optimum(GRIDS[opt], losses)
                    label = f"w{w}" if axis == "width" else f"d{d}"
                    missing = sum(math.isnan(l) for l in losses)  # not run yet (a diverged run is inf)
                    if found is None or missing:
                        cells.append(f"{label}: {len(losses) - missing}/{len(losses)} runs")
                        continue
                    lr, loss, interpolated = found
                    optima.append(interpolated)
                    cells.append(f"{label}: {lr:.3g} ~{interpolated:.2g} ({loss:.3f})")
                cells += [""] * (4 - len(cells))
                spread = max(optima) / min(optima) if len(optima) > 1 else math.nan
                spreads[f"{model}|{opt}|{axis}"] = spread
                shown = f"×{spread:.2g}" if math.isfinite(spread) else "–"
                lines.append(f"| {model} | {opt} | {axis} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines), spreads


def refinement(results: dict, grid: Grid, models: list[str], optimizers: list[str], profile: str,
               hidden_mass: float = 1.0, seed: int = 0) -> str:
    """Every run of the chosen sizes, learning rates in order (half-decade grid and refined points), best marked."""
    lines = ["| model | optimizer | size | validation loss by learning rate (best in bold) |", "| --- | --- | --- | --- |"]
    for model in models:
        for opt in optimizers:
            for w, d in grid.sizes():
                chosen = selector(model, w, d, opt, profile, hidden_mass, seed)
                runs = sorted((r["lr"], r["val"]) for r in results.values()
                              if _matches(r, chosen) and r.get("steps") == grid.steps)
                if not runs:
                    continue
                best = min(v for _, v in runs)
                cells = ", ".join(f"**{lr:.3g}: {v:.3f}**" if v == best else f"{lr:.3g}: {v:.3f}" for lr, v in runs)
                lines.append(f"| {model} | {opt}{'' if opt == 'adamw' else f' ({profile})'} | w{w} d{d} | {cells} |")
    return "\n".join(lines)


def plot(results: dict, grid: Grid, model: str, optimizers: list[str], profile: str, path: Path,
         hidden_mass: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(optimizers), figsize=(4.2 * len(optimizers), 7.4), squeeze=False)
    for col, opt in enumerate(optimizers):
        for row, (axis, points) in enumerate((("width", [(w, grid.base_depth) for w in grid.widths]),
                                              ("depth", [(grid.base_width, d) for d in grid.depths]))):
            ax = axes[row][col]
            for w, d in points:
                losses = curve_of(results, selector(model, w, d, opt, profile, hidden_mass), GRIDS[opt])
                ax.plot(GRIDS[opt], [l if math.isfinite(l) else math.nan for l in losses], marker="o",
                        label=f"width {w}" if axis == "width" else f"depth {d}")
            ax.set_xscale("log")
            ax.set_ylim(top=min(4.9, ax.get_ylim()[1]))
            ax.set_xlabel("AdamW learning rate" if opt == "adamw" else "modular-norm step (lr)")
            ax.set_ylabel("validation loss (nats/char)")
            fixed = f"depth {grid.base_depth}" if axis == "width" else f"width {grid.base_width}"
            targets = "" if opt == "adamw" else f", {profile} targets" + (
                f", hidden mass {hidden_mass:g}" if hidden_mass != 1.0 else "")
            ax.set_title(f"{model}: {opt}{targets}\n{axis} sweep ({fixed})", fontsize=9)
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------- main
MODELS = ["modula", "nanogpt", "nanogpt-fixed"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps, 1 MB of text (seconds)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--optimizers", default=",".join(GRIDS), help=f"comma-separated subset of {list(GRIDS)}")
    parser.add_argument("--steps", type=int, help="training steps per run (default: 300; quick: 12)")
    parser.add_argument("--widths", help="comma-separated widths (default 16,32,64,128)")
    parser.add_argument("--depths", help="comma-separated depths (default 1,2,4,8)")
    parser.add_argument("--profile", default="certified", choices=["certified", "modula"],
                        help="which targets the normalized optimizers use")
    parser.add_argument("--hidden-mass", type=float, default=1.0,
                        help="the normalized optimizers' mass of all hidden blocks together, input and output layers "
                        "1 each (Modula's GPT default is 5: 1:5:1)")
    parser.add_argument("--workers", type=int, default=2, help="processes (each uses one thread)")
    parser.add_argument("--out", type=Path, help="results JSON (default docs/lr_study.json; quick: a temp name)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the plots go")
    parser.add_argument("--lrs", action="append",
                        help="comma-separated learning rates to train instead of each optimizer's grid, to refine "
                        "an optimum between grid points, for every optimizer or, as OPTIMIZER=LR,LR (repeatable), "
                        "for one; every run of the chosen sizes is listed by learning rate in <out>_refined.md")
    parser.add_argument("--sizes", help="train only these sizes, e.g. 128x2,32x8 (width x depth)")
    parser.add_argument("--seed", type=int, default=0,
                        help="another init and data order (0: the study's; stored with the run when not 0)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: table and plots from the runs already in --out (a partial study)")
    args = parser.parse_args(argv)
    grid = QUICK if args.quick else FULL
    if args.steps:
        grid = dataclasses.replace(grid, steps=args.steps)
    if args.widths:
        grid = dataclasses.replace(grid, widths=tuple(int(w) for w in args.widths.split(",")))
    if args.depths:
        grid = dataclasses.replace(grid, depths=tuple(int(d) for d in args.depths.split(",")))
    models, optimizers = args.models.split(","), args.optimizers.split(",")
    for name, chosen, known in (("model", models, MODELS), ("optimizer", optimizers, list(GRIDS))):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"unknown {name} {unknown}: choose from {known}")
    out = args.out or (ROOT / "docs" / ("lr_study_quick.json" if args.quick else "lr_study.json"))
    if args.sizes:
        grid = dataclasses.replace(grid, only=tuple(tuple(int(v) for v in size.split("x"))
                                                    for size in args.sizes.split(",")))
    lrs = _learning_rates(args.lrs)
    mass, seed = args.hidden_mass, args.seed
    runs = runs_of(grid, models, optimizers, args.profile, lrs, mass, seed)
    tag = args.profile + ("" if mass == 1.0 else f"_m{mass:g}")
    if args.report_only:
        results = json.loads(out.read_text()) if out.exists() else {}
    else:
        results = study(runs, out, args.workers, max_bytes=1_000_000 if args.quick else None)
    if lrs:  # a refinement: every run of these sizes by learning rate, grid and refined points together
        refined = refinement(results, grid, models, optimizers, args.profile, mass, seed)
        print(refined)
        out.with_name(f"{out.stem}_refined{'' if mass == 1.0 else f'_m{mass:g}'}{f'_s{seed}' if seed else ''}.md").write_text(refined + "\n")
        return {"results": results, "spreads": {}}
    text, spreads = summary(results, grid, models, optimizers, args.profile, mass)
    print(text)
    out.with_name(f"{out.stem}_{tag}.md").write_text(
        f"Optimal learning rate per size: grid argmin ~ interpolated optimum (validation loss at the argmin); "
        f"{grid.steps} steps, batch {grid.batch} x {grid.context} characters, profile {args.profile}, hidden mass "
        f"{mass:g}.\n\n{text}\n")
    if not args.quick:
        args.docs.mkdir(parents=True, exist_ok=True)
        for model in models:
            suffix = "" if tag == "certified" else f"_{tag}"
            plot(results, grid, model, optimizers, args.profile, args.docs / f"lr_study_{model}{suffix}.png", mass)
    return {"results": results, "spreads": spreads}


def _learning_rates(specs: list[str] | None) -> dict[str, list[float]] | list[float] | None:
    """--lrs values: `0.1,1` for every optimizer, or `adamw=0.01,0.0178` for one."""
    if not specs:
        return None
    if all("=" not in spec for spec in specs):
        return [float(v) for spec in specs for v in spec.split(",")]
    chosen: dict[str, list[float]] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        chosen[name] = [float(v) for v in values.split(",")]
    return chosen


if __name__ == "__main__":
    main()
