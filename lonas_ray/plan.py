"""From a sub-network configuration to the concrete slice of every linear.

This is the single piece of slicing maths: activation, counting and extraction
all read the same ``SubnetPlan``, so they cannot disagree about which channels a
sub-network keeps. Slices are always "the first k" (importance reordering puts
the best channels first), so a plan is a set of integers, not index lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from lonas_ray.families import FAMILIES
from lonas_ray.space import SearchSpace, SubnetConfig


@dataclass(frozen=True)
class LinearSlice:
    """Keep rows ``[:out_features]`` and columns ``[:in_features]``; active LoRA rank ``rank`` (0: no adapter)."""

    out_features: int
    in_features: int
    rank: int


@dataclass(frozen=True)
class LayerPlan:
    keep: bool
    num_heads: int
    num_kv_heads: int
    intermediate: int
    linears: dict[str, LinearSlice]


@dataclass(frozen=True)
class SubnetPlan:
    layers: tuple[LayerPlan, ...]

    @property
    def kept_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.keep]


def make_plan(space: SearchSpace, config: SubnetConfig) -> SubnetPlan:
    """Resolve ``config`` (validated against ``space``) into per-layer slices."""
    space.validate(config)
    shape = space.shape
    fam = FAMILIES[shape.family]
    ranks: dict[tuple[int, str], int] = {}
    for name, dim in space.dims.items():
        if dim.kind == "rank":
            for module in dim.modules:
                ranks[(dim.layer, module)] = int(config[name])
    layers = []
    hd = shape.head_dim
    for i in range(shape.num_layers):
        heads = int(config.get(f"heads.{i}", shape.num_heads))
        kv = heads // shape.heads_per_group
        width = int(config.get(f"mlp.{i}", shape.intermediate_size))
        keep = bool(config.get(f"keep.{i}", True))
        h = shape.hidden_size
        io = {
            fam.q: (heads * hd, h),
            fam.k: (kv * hd, h),
            fam.v: (kv * hd, h),
            fam.o: (h, heads * hd),
            fam.gate: (width, h),
            fam.up: (width, h),
            fam.down: (h, width),
        }
        linears = {m: LinearSlice(o, n, ranks.get((i, m), 0)) for m, (o, n) in io.items()}
        layers.append(LayerPlan(keep, heads, kv, width, linears))
    return SubnetPlan(tuple(layers))
