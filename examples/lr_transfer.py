"""Does the learning rate transfer across width? Plain Adam against modnorm-normalized Adam (modnorm.optim).

Two unmodified PyTorch models, each trained at several widths over a grid of learning rates:
  * a pre-LayerNorm residual MLP (default nn.Linear init) on a synthetic teacher task: a fixed random tanh
    network labels Gaussian inputs, the student minimises the square loss;
  * the nanoGPT-style GPT of fixtures/nanogpt.py on synthetic text: sequences drawn from a fixed random sparse
    order-2 Markov chain over 64 tokens (cross-entropy; the chain's entropy is the floor).
For each (model, optimizer, width) the final training loss (mean of the last 20 steps) is recorded per learning
rate; the optimal learning rate per width is the argmin. Everything is seeded and generated here: no download.

    python examples/lr_transfer.py              # full study (about 15 minutes on 2 CPU cores)
    python examples/lr_transfer.py --quick      # a smoke run in seconds (what the test suite runs)

Writes docs/lr_transfer.png (final loss vs learning rate, one line per width, one panel per model × optimizer)
and docs/lr_transfer.md (the table of optimal learning rates per width), and prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))

from nanogpt import GPT, GPTConfig  # noqa: E402

import modnorm  # noqa: E402
from modnorm.optim import ModularNormalized  # noqa: E402


# ----------------------------------------------------------------------------------------------- models and data
class ResMLP(nn.Module):
    def __init__(self, d_in: int = 32, width: int = 128, depth: int = 4, d_out: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h) / len(self.blocks)
        return self.out(h)


def teacher_task(samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 32, generator=g)
    w1, w2 = torch.randn(32, 64, generator=g) / math.sqrt(32), torch.randn(64, 8, generator=g) / math.sqrt(64)
    return x, torch.tanh(x @ w1) @ w2 * 2


def markov_text(tokens: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    """A sparse random order-2 Markov chain: each pair of previous tokens allows 4 successors."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, vocab, 4), generator=g)
    probabilities = torch.softmax(torch.randn(vocab, vocab, 4, generator=g), -1)
    out = [0, 1]
    choices = torch.multinomial(probabilities.view(-1, 4), tokens, replacement=True, generator=g)
    for i in range(tokens):
        a, b = out[-2], out[-1]
        out.append(int(successors[a, b, choices[a * vocab + b, i]]))
    return torch.tensor(out[2:])


# ----------------------------------------------------------------------------------------------- training
def make_model(kind: str, width: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    if kind == "resmlp":
        model = ResMLP(width=width)
        return model, torch.randn(4, 32)
    model = GPT(GPTConfig(n_layer=2, n_embd=width, n_head=max(1, width // 32)))
    return model, torch.zeros(2, model.config.block_size, dtype=torch.long)


def batches(kind: str, steps: int, batch: int):
    g = torch.Generator().manual_seed(2)
    if kind == "resmlp":
        x, y = teacher_task(4096)
        for _ in range(steps):
            index = torch.randint(0, len(x), (batch,), generator=g)
            yield x[index], y[index]
    else:
        text = markov_text(60_000)
        block = GPTConfig.block_size
        for _ in range(steps):
            start = torch.randint(0, len(text) - block - 1, (batch,), generator=g)
            chunk = torch.stack([text[s:s + block + 1] for s in start.tolist()])
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def loss_of(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "resmlp":
        return F.mse_loss(model(x), y)
    return model(x, y)[1]


_ANALYSES: dict[tuple[str, int], object] = {}  # one analysis per architecture: targets do not change with lr


def train(kind: str, width: int, optimizer: str, lr: float, steps: int, batch: int) -> float:
    model, example = make_model(kind, width)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        if (kind, width) not in _ANALYSES:
            _ANALYSES[kind, width] = modnorm.analyze(model, example)
        opt = ModularNormalized(torch.optim.Adam(model.parameters(), lr=1e-3), model, _ANALYSES[kind, width],
                                lr=lr)
    losses = []
    for x, y in batches(kind, steps, batch):
        loss = loss_of(kind, model, x, y)
        if not torch.isfinite(loss):
            return math.inf
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return sum(losses[-20:]) / len(losses[-20:])


GRIDS = {  # learning rates: Adam's own, and the modular-norm step of the normalized optimizer
    "adam": [10 ** e for e in (-4.5, -4, -3.5, -3, -2.5, -2, -1.5, -1)],
    "modnorm": [10 ** e for e in (-3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5)],
}


def study(widths: dict[str, list[int]], steps: int, batch: int) -> dict:
    results = {}
    for kind, sizes in widths.items():
        for optimizer, grid in GRIDS.items():
            for width in sizes:
                start = time.time()
                losses = [train(kind, width, optimizer, lr, steps, batch) for lr in grid]
                results[kind, optimizer, width] = losses
                best = grid[min(range(len(grid)), key=lambda i: losses[i])]
                print(f"{kind:7s} {optimizer:8s} width {width:5d}: best lr {best:.3g}  "
                      f"(loss {min(losses):.4f}, {time.time() - start:.0f} s)", flush=True)
    return results


def table(results: dict, widths: dict[str, list[int]]) -> str:
    columns = max(len(sizes) for sizes in widths.values())
    lines = ["| model | optimizer | " + " | ".join(f"size {i + 1}" for i in range(columns)) + " |",
             "| --- | --- |" + " ---: |" * columns]
    for kind, sizes in widths.items():
        for optimizer, grid in GRIDS.items():
            cells = []
            for width in sizes:
                losses = results[kind, optimizer, width]
                i = min(range(len(grid)), key=lambda j: losses[j])
                cells.append(f"w{width}: {grid[i]:.3g} ({losses[i]:.3f})")
            lines.append(f"| {kind} | {optimizer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, widths: dict[str, list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(widths)
    figure, axes = plt.subplots(len(kinds), 2, figsize=(10, 4 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        for col, optimizer in enumerate(GRIDS):
            ax = axes[row][col]
            for width in widths[kind]:
                losses = [l if math.isfinite(l) else float("nan") for l in results[kind, optimizer, width]]
                ax.plot(GRIDS[optimizer], losses, marker="o", label=f"width {width}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("learning rate" + (" (modular-norm step)" if optimizer == "modnorm" else ""))
            ax.set_ylabel("final training loss")
            ax.set_title(f"{kind}: {'Adam' if optimizer == 'adam' else 'modnorm-normalized Adam'}")
            ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the plot and table go")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.quick:
        widths, steps, batch = {"resmlp": [32, 64], "gpt": [32, 64]}, 12, 8
    else:
        widths, steps, batch = {"resmlp": [64, 128, 256, 512], "gpt": [32, 64, 128, 256]}, 300, 32
    results = study(widths, steps, batch)
    text = table(results, widths)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"lr_transfer{suffix}.md").write_text(
        f"Optimal learning rate per width (final loss in brackets); {steps} steps, batch {batch}.\n\n{text}\n")
    plot(results, widths, args.out / f"lr_transfer{suffix}.png")


if __name__ == "__main__":
    main()
