"""Pruning masks for the frozen base: Wanda (|W| * ||X||) and magnitude, unstructured or N:M.

Wanda (Sun et al. 2023) scores weight ``W[o, i]`` by ``|W[o, i]| * ||X_i||_2``,
the input channel's activation norm over a calibration batch, and compares
weights within one output row. Magnitude is the same with every norm 1.

Order with importance reordering (``build.py``): channels are reordered first
and the base is pruned after, on the reordered network. For unstructured masks
the order does not matter (a row's kept set is the same set of weights, only
permuted: the mask moves with the channels, a test checks it); for N:M masks
it does, because reordering the input columns of ``down_proj`` / ``o_proj``
would scatter every group of M. Pruning last keeps the groups intact.

One simplification against the paper: the norms come from one forward pass of
the dense model for all layers at once, not layer by layer through the
already-pruned earlier layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lonas_ray.compress.spec import SparsitySpec


def prune_scores(weight: torch.Tensor, in_norm: torch.Tensor | None) -> torch.Tensor:
    """Wanda's score ``|W| * ||X||`` per weight (magnitude when ``in_norm`` is None)."""
    s = weight.detach().abs().float()
    return s if in_norm is None else s * in_norm.float().to(s.device)[None, :]


def unstructured_mask(scores: torch.Tensor, level: float) -> torch.Tensor:
    """Keep-mask zeroing the ``round(level * in)`` lowest-scoring weights of every row."""
    out, n_in = scores.shape
    k = int(round(level * n_in))
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        order = torch.argsort(scores, dim=1, stable=True)  # ties: the earlier input goes first
        mask.scatter_(1, order[:, :k], False)
    return mask


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores of every ``m`` consecutive inputs of a row."""
    out, n_in = scores.shape
    if n_in % m:
        raise ValueError(f"a {n}:{m} pattern needs the input width to be a multiple of {m}, got {n_in}")
    groups = scores.reshape(out, n_in // m, m)
    order = torch.argsort(groups, dim=2, descending=True, stable=True)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order[..., :n], True)
    return mask.reshape(out, n_in)


def prune_mask(weight: torch.Tensor, in_norm: torch.Tensor | None, spec: SparsitySpec) -> torch.Tensor:
    """The keep-mask ``spec`` gives ``weight`` (True: kept)."""
    scores = prune_scores(weight, in_norm if spec.method == "wanda" else None)
    nm = spec.n_m
    return n_m_mask(scores, *nm) if nm else unstructured_mask(scores, spec.zero_fraction)


@dataclass
class InputNorms:
    """Wanda's ``||X_i||_2`` per input channel of every pruned linear, keyed ``layers.<i>.<linear>``."""

    norms: dict[str, torch.Tensor]

    def to_dict(self) -> dict:
        return {k: v.tolist() for k, v in self.norms.items()}

    @classmethod
    def from_dict(cls, data: dict) -> InputNorms:
        return cls({k: torch.tensor(v) for k, v in data.items()})


def input_norms(model: nn.Module, linears: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> InputNorms:
    """``||X||_2`` over the batch's real (unpadded) tokens at the input of each of ``linears``."""
    mask = batch["attention_mask"].bool()
    sums: dict[str, torch.Tensor] = {}

    def hook(key):
        def fn(_module, args):
            x = args[0].detach().float()
            sums[key] = sums.get(key, 0) + x[mask].pow(2).sum(0)
        return fn

    handles = [m.register_forward_pre_hook(hook(k)) for k, m in linears.items()]
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return InputNorms({k: sums[k].sqrt().cpu() for k in linears})


def prune_(weight: torch.Tensor, in_norm: torch.Tensor | None, spec: SparsitySpec) -> torch.Tensor:
    """Zero ``weight`` in place where ``spec`` prunes it; returns the keep-mask."""
    mask = prune_mask(weight, in_norm, spec)
    with torch.no_grad():
        weight.mul_(mask.to(weight.device, weight.dtype))
    return mask
