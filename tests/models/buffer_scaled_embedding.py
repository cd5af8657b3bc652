"""An embedding multiplied by sqrt(d), spelled as a number and as constant tensors (Gemma writes
`inputs_embeds * self.embed_scale.to(dtype)` with `embed_scale = torch.tensor(hidden_size ** 0.5)`), then two residual
blocks and a head. Every spelling computes the same function with the same parameters (same seed, same names):
a constant tensor holding one value is the same multiplier as the number. `per_channel` multiplies by a buffer
of different entries (a gain per feature): a different function, and not a scalar multiplier.
"""

import torch
import torch.nn.functional as F
from torch import nn

SCALAR_SPELLINGS = ("number", "buffer", "buffer_cast", "literal", "full", "recovered")


class Net(nn.Module):
    def __init__(self, spelling: str = "buffer_cast", vocab: int = 32, d: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.spelling, self.d = spelling, d
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        self.head = nn.Linear(d, vocab)
        if spelling in ("buffer", "buffer_cast", "recovered"):  # a 0-d buffer, as Gemma's
            self.register_buffer("scale", torch.tensor(d ** 0.5), persistent=False)
        elif spelling == "full":  # one value in every entry
            self.register_buffer("scale", torch.full((d,), d ** 0.5))
        elif spelling == "per_channel":  # a gain per feature, max d ** 0.5
            self.register_buffer("scale", torch.linspace(1.0, d ** 0.5, d))

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' way of writing a non-persistent buffer on a meta build (buffers.py replays it)."""
        if module is self and self.spelling == "recovered":
            nn.init.constant_(self.scale, self.d ** 0.5)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        if self.spelling == "number":
            return x * self.d ** 0.5
        if self.spelling == "literal":  # Gemma2's `hidden_states * torch.tensor(d ** 0.5, dtype=...)`
            return x * torch.tensor(self.d ** 0.5, dtype=x.dtype)
        if self.spelling in ("buffer_cast", "recovered"):
            return x * self.scale.to(x.dtype)
        return x * self.scale

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = x + block(F.relu(x)) / len(self.blocks)
        return self.head(x)


def build_model(spelling: str = "buffer_cast") -> Net:
    torch.manual_seed(0)
    return Net(spelling)


def example_inputs(model: Net) -> tuple:
    return (torch.zeros(2, 5, dtype=torch.long),)
