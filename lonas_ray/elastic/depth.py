"""A decoder block that a sub-network may skip.

Llama-family blocks map hidden states to hidden states (residuals inside), so a
skipped block is the identity. Wrapping keeps the model's own layer loop and
cache indexing untouched: the block keeps its ``layer_idx``.
"""

from __future__ import annotations

from torch import nn


class SkipState:
    """Mutable flag outside ``nn.Module.__setattr__``, which is slow on the activation path."""

    __slots__ = ("skip",)

    def __init__(self):
        self.skip = False


class SkippableBlock(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.state = SkipState()

    @property
    def skip(self) -> bool:
        return self.state.skip

    def forward(self, hidden_states, *args, **kwargs):
        if self.state.skip:
            return hidden_states
        return self.block(hidden_states, *args, **kwargs)

    def __getattr__(self, name: str):
        # Attributes the model's loop may read from a block (attention_type, ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)
