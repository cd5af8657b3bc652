"""A small recurrent classifier: embedding, an LSTM (or a GRU: `build_gru`), a linear head on the last step."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, cell=nn.LSTM):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.rnn = cell(32, 64, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


def build_model():
    return Net(nn.LSTM)


def build_gru():
    return Net(nn.GRU)


def example_inputs(model):
    return torch.randint(0, 100, (2, 7))
