"""EFTNAS-style search-space generation: width choices derived from importance.

Instead of hand-picking "[1.0, 0.875, 0.75, ...] everywhere", rank all MLP
channels (and, separately, all GQA groups) of the model by importance, and for
``n_targets`` compute targets between ``min_ratio`` and 1.0 keep the globally
most important fraction. Each layer's width at a target is how many of its own
channels made the cut (rounded up to ``align``); the union over targets is that
layer's choice list. Layers that keep less than ``skip_below`` of their MLP at
the smallest target are nearly useless there: they become skippable blocks.
Because every MLP channel (and every group) costs the same MACs in every layer,
a fraction of channels is the same fraction of that part's compute.
"""

from __future__ import annotations

import copy
import math

import torch

from lonas_ray.elastic.importance import Importance
from lonas_ray.shape import ModelShape
from lonas_ray.space import SpaceSpec


def _targets(n_targets: int, min_ratio: float) -> list[float]:
    if n_targets < 1:
        raise ValueError(f"n_targets must be >= 1, got {n_targets}")
    if not 0.0 < min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
    if n_targets == 1:
        return [min_ratio]
    return [min_ratio + (1.0 - min_ratio) * k / (n_targets - 1) for k in range(n_targets)]


def kept_counts(scores: list[torch.Tensor], targets: list[float]) -> list[list[int]]:
    """Per-target, per-layer number of channels in the global top fraction of all scores (may be 0)."""
    everything = torch.cat([s.float().flatten() for s in scores])
    ordered = torch.sort(everything, descending=True).values
    out = []
    for t in targets:
        threshold = ordered[max(1, math.ceil(t * everything.numel())) - 1]
        out.append([int((s.float() >= threshold).sum()) for s in scores])
    return out


def round_up(n: int, unit: int, full: int) -> int:
    """``n`` rounded up to a multiple of ``unit``, at least one unit, at most ``full``."""
    return min(full, max(unit, math.ceil(n / unit) * unit))


def generate_spec(base: SpaceSpec, importance: Importance, shape: ModelShape, *, n_targets: int = 4,
                  min_ratio: float = 0.5, align: int = 8, skip_below: float = 0.02,
                  heads: bool = True) -> SpaceSpec:
    """``base`` with per-layer MLP (and head) choices and skippable blocks derived from ``importance``.

    ``base`` supplies the LoRA settings and any skippable layers already chosen.
    """
    spec = copy.deepcopy(base)
    targets = _targets(n_targets, min_ratio)
    mlp_kept = kept_counts(importance.mlp, targets)
    skippable = set(spec.depth.skippable)
    per_layer: dict[int, list[int]] = {}
    full = shape.intermediate_size
    for i in range(shape.num_layers):
        kept = [row[i] for row in mlp_kept]
        if min(kept) < skip_below * full and len(skippable | {i}) < shape.num_layers:
            skippable.add(i)
        choices = {round_up(n, align, full) for n in kept if n >= skip_below * full} | {full}
        per_layer[i] = sorted(choices, reverse=True)
    spec.mlp.choices, spec.mlp.layers, spec.mlp.per_layer, spec.mlp.align = [], None, per_layer, align
    if heads:
        group = shape.heads_per_group
        kv_kept = kept_counts(importance.heads, targets)
        spec.heads.choices, spec.heads.layers = [], None
        spec.heads.per_layer = {
            i: sorted({round_up(row[i], 1, shape.num_kv_heads) * group for row in kv_kept} | {shape.num_heads},
                      reverse=True)
            for i in range(shape.num_layers)
        }
    spec.depth.skippable = sorted(skippable)
    return spec
