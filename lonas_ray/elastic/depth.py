"""A decoder block that a sub-network may skip.

Llama-family blocks map hidden states to hidden states (residuals inside), so a
skipped block is the identity. Wrapping keeps the model's own layer loop and the
block keeps its ``layer_idx``. A skipped block still records its tokens in a KV
cache (as zeros, one head wide): caches read the sequence length from layer 0,
so a skipped first block would otherwise restart positions at 0 on every step.
The model's loop names that cache ``cache`` from transformers 5.24 on and
``past_key_values`` before: ``hf_compat.layer_cache`` reads either.
"""

from __future__ import annotations

from torch import nn

from lonas_ray.hf_compat import layer_cache


class SkipState:
    """Mutable flag outside ``nn.Module.__setattr__``, which is slow on the activation path."""

    __slots__ = ("skip",)

    def __init__(self):
        self.skip = False


class SkippableBlock(nn.Module):
    def __init__(self, block: nn.Module, attn: nn.Module):
        super().__init__()
        self.block = block
        self.state = SkipState()
        self._cache_slot = (attn.layer_idx, attn.head_dim)  # plain tuple: not a submodule

    @property
    def skip(self) -> bool:
        return self.state.skip

    def forward(self, hidden_states, *args, **kwargs):
        if self.state.skip:
            cache = layer_cache(kwargs)
            if cache is not None:
                layer_idx, head_dim = self._cache_slot
                b, t = hidden_states.shape[:2]
                empty = hidden_states.new_zeros(b, 1, t, head_dim)
                cache.update(empty, empty, layer_idx)
            return hidden_states
        return self.block(hidden_states, *args, **kwargs)

    def __getattr__(self, name: str):
        # Attributes the model's loop may read from a block (attention_type, ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)
