"""The search space: which sub-networks exist, and how to name, sample and check them.

Two layers:

* ``SpaceSpec`` is what a user writes in YAML: LoRA rank choices and sharing
  groups, MLP-width and head-count choices (fractions or counts), skippable
  layers. It knows nothing about a particular model.
* ``SearchSpace`` is a spec resolved against a ``ModelShape``: a flat, ordered
  set of named dimensions, each with concrete integer choices. It is
  JSON-serialisable (it travels in checkpoints and results), and a sub-network
  configuration is a plain ``{dimension name: choice}`` dict.

Dimension names are ``rank.<layer>.<group>``, ``mlp.<layer>``,
``heads.<layer>`` and ``keep.<layer>``. Choices are stored largest first.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lonas_ray.config_io import ConfigError, YamlConfig, help_field, to_dict
from lonas_ray.families import FAMILIES
from lonas_ray.shape import ModelShape

SubnetConfig = dict[str, Any]

log = logging.getLogger(__name__)


class SubnetError(ValueError):
    """A sub-network configuration that is not in the search space."""


# --------------------------------------------------------------------------- spec (user YAML)


@dataclass
class LoraSpec:
    """Elastic LoRA: which linears carry adapters, the maximal rank and the active-rank choices."""

    target_modules: list[str] = help_field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "up_proj", "gate_proj", "down_proj"],
        help="linear names (or fnmatch patterns such as '*_proj') of each block that carry an adapter",
    )
    r_max: int = help_field(16, help="maximal LoRA rank; lora_A/lora_B are allocated at this rank")
    alpha: float = help_field(32.0, help="LoRA alpha; scaling is alpha / r_max whatever the active rank")
    dropout: float = help_field(0.0, help="dropout on the adapter input during training")
    rank_choices: list[int] = help_field(
        default_factory=lambda: [16, 12, 8], help="active ranks to choose from (each 1..r_max)"
    )
    groups: dict[str, list[str]] = help_field(
        default_factory=lambda: {"qkv": ["q_proj", "k_proj", "v_proj"], "gate_up": ["gate_proj", "up_proj"]},
        help="rank-sharing groups per layer: group name -> target linears; other targets get a group each",
    )

    def __post_init__(self):
        if self.r_max < 1:
            raise ConfigError(f"lora.r_max must be >= 1, got {self.r_max}")
        if not self.rank_choices:
            raise ConfigError("lora.rank_choices is empty")
        bad = [r for r in self.rank_choices if not isinstance(r, int) or not 1 <= r <= self.r_max]
        if bad:
            raise ConfigError(f"lora.rank_choices {bad} must be integers between 1 and r_max={self.r_max}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class WidthSpec:
    """Elastic width of one kind (MLP channels or attention heads) per layer."""

    choices: list[float | int] = help_field(
        default_factory=list,
        help="widths to choose from: a float in (0, 1] is a fraction of the layer's full size, an int a count",
    )
    layers: list[int] | None = help_field(None, help="layers that are elastic (default: all)")
    per_layer: dict[int, list[int]] = help_field(
        default_factory=dict, help="explicit counts per layer index; overrides 'choices' for those layers"
    )
    align: int = help_field(1, help="fractions round to a multiple of this many channels (MLP only)")

    def __post_init__(self):
        for c in self.choices:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0:
                raise ConfigError(f"width choice {c!r} must be a positive fraction (0, 1] or a positive count")
            if isinstance(c, float) and c > 1.0:
                raise ConfigError(f"width choice {c} is a float above 1: write counts as integers")
        if self.align < 1:
            raise ConfigError(f"align must be >= 1, got {self.align}")
        self.per_layer = {int(k): list(v) for k, v in self.per_layer.items()}

    @property
    def enabled(self) -> bool:
        return bool(self.choices or self.per_layer)


@dataclass
class DepthSpec:
    """Elastic depth: decoder blocks that a sub-network may skip."""

    skippable: list[int] = help_field(default_factory=list, help="indices of decoder blocks that may be skipped")
    auto: int = help_field(
        0, help="also make the N decoder blocks of least block influence (1 - cos(input, output) on the "
        "calibration batch) skippable, when the super-network is prepared (0: off)"
    )

    def __post_init__(self):
        if not isinstance(self.auto, int) or self.auto < 0:
            raise ConfigError(f"depth.auto must be an integer >= 0 (blocks to make skippable), got {self.auto!r}")


@dataclass
class SpaceSpec(YamlConfig):
    CONFIG_NAME = "space"

    """A search space as a user writes it; ``resolve`` sizes it against a model."""

    lora: LoraSpec = help_field(default_factory=LoraSpec, help="elastic LoRA adapters (LoNAS mode A / Shears NLS)")
    mlp: WidthSpec = help_field(default_factory=WidthSpec, help="elastic MLP intermediate width (LoNAS mode B)")
    heads: WidthSpec = help_field(default_factory=WidthSpec, help="elastic attention heads, whole GQA groups")
    depth: DepthSpec = help_field(default_factory=DepthSpec, help="skippable decoder blocks")

    def to_dict(self) -> dict:
        return to_dict(self)


# --------------------------------------------------------------------------- resolved space


@dataclass(frozen=True)
class Dimension:
    """One searchable choice: a rank group, an MLP width, a head count or a keep/skip flag."""

    name: str
    kind: str  # "rank" | "mlp" | "heads" | "keep"
    layer: int
    choices: tuple  # largest first
    modules: tuple[str, ...] = ()  # for rank groups: the linears that share the rank


def _resolve_targets(patterns: Iterable[str], known: tuple[str, ...]) -> list[str]:
    targets: list[str] = []
    for pattern in patterns:
        hits = [m for m in known if fnmatch.fnmatchcase(m, pattern)]
        if not hits:
            raise ConfigError(
                f"unknown module pattern '{pattern}': it matches none of the block's linears ({', '.join(known)})"
            )
        targets += [h for h in hits if h not in targets]
    return targets


def _width_choices(spec: WidthSpec, full: int, unit: int, layer: int, what: str) -> tuple[int, ...]:
    """Concrete counts for one layer, largest first; ``unit`` is the granularity (GQA group size for heads)."""
    raw = spec.per_layer.get(layer, spec.choices)
    counts: set[int] = set()
    for c in raw:
        if isinstance(c, float):
            step = max(unit, spec.align if what == "mlp" else unit)
            n = max(step, int(round(c * full / step)) * step)
        else:
            n = int(c)
        if n > full:
            raise ConfigError(f"{what} choice {c} for layer {layer} is larger than the layer ({full})")
        if n < 1:
            raise ConfigError(f"{what} choice {c} for layer {layer} must keep at least 1")
        if n % unit:
            raise ConfigError(
                f"heads choice {n} for layer {layer} breaks GQA: head counts must be multiples of "
                f"{unit} (query heads per key/value head)"
            )
        if n in counts:
            log.warning("%s choice %s for layer %d rounds to %d, which another choice already gives",
                        what, c, layer, n)
        counts.add(n)
    return tuple(sorted(counts, reverse=True))


@dataclass
class SearchSpace:
    """A ``SpaceSpec`` resolved against one model's shape: named dimensions with concrete choices."""

    shape: ModelShape
    r_max: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    dims: dict[str, Dimension] = field(default_factory=dict)

    # ---- construction

    @classmethod
    def resolve(cls, spec: SpaceSpec, shape: ModelShape) -> SearchSpace:
        family = FAMILIES[shape.family]
        targets = _resolve_targets(spec.lora.target_modules, family.linear_modules)
        grouped: dict[str, list[str]] = {}
        seen: set[str] = set()
        for gname, members in spec.lora.groups.items():
            members = _resolve_targets(members, family.linear_modules)
            present = [m for m in members if m in targets]
            dup = seen.intersection(present)
            if dup:
                raise ConfigError(f"lora.groups: {sorted(dup)} appear in more than one group")
            seen.update(present)
            if present:
                grouped[gname] = present
        for t in targets:
            if t not in seen:
                grouped[t] = [t]

        def check_layers(indices: Iterable[int], what: str) -> None:
            for i in indices:
                if not 0 <= int(i) < shape.num_layers:
                    raise ConfigError(f"{what}: layer {i} does not exist (the model has {shape.num_layers} layers)")

        check_layers(spec.mlp.per_layer, "mlp.per_layer")
        check_layers(spec.heads.per_layer, "heads.per_layer")
        check_layers(spec.mlp.layers or [], "mlp.layers")
        check_layers(spec.heads.layers or [], "heads.layers")
        check_layers(spec.depth.skippable, "depth.skippable")
        if len(set(spec.depth.skippable)) >= shape.num_layers:
            raise ConfigError("depth.skippable lists every layer: at least one decoder block must remain")
        if spec.depth.auto >= shape.num_layers:
            raise ConfigError(f"depth.auto: {spec.depth.auto} would make every one of the model's {shape.num_layers} "
                              "decoder blocks skippable; at least one must remain")

        rank_choices = tuple(sorted(set(spec.lora.rank_choices), reverse=True))
        dims: dict[str, Dimension] = {}
        for i in range(shape.num_layers):
            for gname, members in grouped.items():
                d = Dimension(f"rank.{i}.{gname}", "rank", i, rank_choices, tuple(members))
                dims[d.name] = d
            for what, wspec, full, unit in (
                ("heads", spec.heads, shape.num_heads, shape.heads_per_group),
                ("mlp", spec.mlp, shape.intermediate_size, 1),
            ):
                if not wspec.enabled:
                    continue
                if i not in wspec.per_layer and wspec.layers is not None and i not in wspec.layers:
                    continue
                if i not in wspec.per_layer and not wspec.choices:
                    continue
                choices = _width_choices(wspec, full, unit, i, what)
                if full not in choices:
                    choices = (full,) + choices  # the maximal sub-network is always in the space
                dims[f"{what}.{i}"] = Dimension(f"{what}.{i}", what, i, choices)
            if i in spec.depth.skippable:
                dims[f"keep.{i}"] = Dimension(f"keep.{i}", "keep", i, (True, False))
        return cls(shape, spec.lora.r_max, float(spec.lora.alpha), spec.lora.dropout, tuple(targets), dims)

    # ---- the canonical sub-networks

    def maximal(self) -> SubnetConfig:
        return {n: d.choices[0] for n, d in self.dims.items()}

    def minimal(self) -> SubnetConfig:
        return {n: d.choices[-1] for n, d in self.dims.items()}

    def heuristic(self) -> SubnetConfig:
        """The median choice of every dimension (Shears' heuristic); skippable blocks are kept."""
        return {n: (True if d.kind == "keep" else d.choices[len(d.choices) // 2]) for n, d in self.dims.items()}

    def sample(self, rng: random.Random | int | None = None) -> SubnetConfig:
        """A uniformly random sub-network; pass a seed or a ``random.Random`` for reproducibility."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return {n: rng.choice(d.choices) for n, d in self.dims.items()}

    def choices(self) -> dict[str, tuple]:
        """Each dimension's choices, by name."""
        return {name: tuple(d.choices) for name, d in self.dims.items()}

    def size(self) -> int:
        """How many distinct sub-networks the space holds."""
        return math.prod(len(d.choices) for d in self.dims.values())

    # ---- checks and names

    @functools.cached_property
    def _allowed(self) -> dict[str, frozenset]:
        return {n: frozenset(d.choices) for n, d in self.dims.items()}

    @functools.cached_property
    def _flag_dims(self) -> frozenset[str]:
        return frozenset(n for n, d in self.dims.items() if d.kind == "keep")

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        """Return ``config`` if it is in the space; else raise ``SubnetError`` naming the first problem."""
        if not isinstance(config, dict):
            raise SubnetError(f"a sub-network configuration is a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - set(self.dims))
        if unknown:
            raise SubnetError(f"unknown dimension(s) {unknown[:5]}; this space has e.g. {list(self.dims)[:5]}")
        if len(config) != len(self.dims):
            missing = [n for n in self.dims if n not in config]
            raise SubnetError(f"configuration lacks dimension(s) {missing[:5]}")
        allowed, flags = self._allowed, self._flag_dims
        for name, value in config.items():
            if type(value) is not (bool if name in flags else int) or value not in allowed[name]:
                d = self.dims[name]
                raise SubnetError(f"{name}={value!r} is not in the space; choices: {list(d.choices)}")
        return config

    def with_defaults(self, partial: SubnetConfig) -> SubnetConfig:
        """Fill dimensions a partial configuration leaves out with their maximal choice, then validate."""
        return self.validate({**self.maximal(), **partial})

    @staticmethod
    def subnet_id(config: SubnetConfig) -> str:
        """A stable, short id for a configuration (same config -> same id, in any process)."""
        blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    # ---- persistence

    def to_dict(self) -> dict:
        return {
            "shape": self.shape.to_dict(),
            "r_max": self.r_max,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": list(self.target_modules),
            "dims": [
                {"name": d.name, "kind": d.kind, "layer": d.layer, "choices": list(d.choices),
                 "modules": list(d.modules)}
                for d in self.dims.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        dims = {
            d["name"]: Dimension(d["name"], d["kind"], int(d["layer"]), tuple(d["choices"]),
                                 tuple(d.get("modules", ())))
            for d in data["dims"]
        }
        return cls(
            ModelShape(**data["shape"]), int(data["r_max"]), float(data["alpha"]), float(data["dropout"]),
            tuple(data["target_modules"]), dims,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace_dims(self, dims: dict[str, Dimension]) -> SearchSpace:
        return dataclasses.replace(self, dims=dims)
