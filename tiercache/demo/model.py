"""The model the demo trains: a next-token predictor small enough not to hide the data path.

A GPU would make any model step cheap; on a CPU box a real transformer would take all the
time and say nothing about the cache. So the step is deliberately light: embed the tokens,
predict the next token at ``positions`` sampled positions per sequence, one optimizer step.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import VOCAB


class TinyLM(nn.Module):
    """Embedding -> linear next-token logits (a learned bigram model)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(tokens))
        return out


class Trainer:
    """One optimizer step per batch on ``positions`` random positions of each sequence."""

    def __init__(self, vocab: int = VOCAB, positions: int = 8, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = TinyLM(vocab)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.positions = positions
        self.vocab = vocab
        self._gen = torch.Generator().manual_seed(seed)

    def step(self, batch: torch.Tensor) -> float:
        """Train on a batch of token sequences (int64, shape [batch, seq]); returns the loss."""
        batch = batch.remainder(self.vocab)  # a real dataset may hold ids past our vocabulary
        b, n = batch.shape
        if n < 2:
            return 0.0
        where = torch.randint(0, n - 1, (b, self.positions), generator=self._gen)
        inputs = batch.gather(1, where)
        targets = batch.gather(1, where + 1)
        logits = self.model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
