"""Build a super-network from a config: load the model, wrap it, reorder by importance, size the space.

This is the one entry point later stages use (training, search, merge), so the
steps always run in the same order: importance is scored and channels permuted
*before* any adapter is trained, and a generated space is derived from the same
scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lonas_ray.calibration import calibration_batch
from lonas_ray.config_io import ConfigError, help_field
from lonas_ray.elastic.generate import generate_spec
from lonas_ray.elastic.importance import METHODS, Importance, reorder, score
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.model_source import ModelSource, load_model
from lonas_ray.space import SpaceSpec

log = logging.getLogger(__name__)


@dataclass
class ImportanceSpec:
    """Importance reordering on a calibration batch."""

    enabled: bool = help_field(True, help="score channels/heads and put the important ones first")
    method: str = help_field("grad", help=f"score: {' or '.join(METHODS)}")
    examples: int = help_field(16, help="calibration examples")
    max_length: int = help_field(128, help="calibration tokens per example")
    seed: int = help_field(0, help="which calibration examples")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"importance.method '{self.method}' is unknown; use one of {', '.join(METHODS)}")
        if self.examples < 1 or self.max_length < 2:
            raise ConfigError("importance.examples must be >= 1 and importance.max_length >= 2")


@dataclass
class GenerateSpec:
    """EFTNAS-style width choices from importance (replaces the fixed mlp/heads choices)."""

    enabled: bool = help_field(False, help="derive per-layer width choices from importance")
    n_targets: int = help_field(4, help="compute targets between min_ratio and the full model")
    min_ratio: float = help_field(0.5, help="smallest compute target, as a fraction of the full width")
    align: int = help_field(8, help="MLP widths are multiples of this")
    skip_below: float = help_field(0.02, help="a layer keeping less than this fraction becomes skippable")
    heads: bool = help_field(True, help="also generate head-count choices")


@dataclass
class SupernetSpec:
    """Everything needed to rebuild the same super-network anywhere (driver, Ray workers)."""

    model: ModelSource = help_field(help="the base model")
    space: SpaceSpec = help_field(default_factory=SpaceSpec, help="the search space")
    importance: ImportanceSpec = help_field(default_factory=ImportanceSpec, help="importance reordering")
    generate: GenerateSpec = help_field(default_factory=GenerateSpec, help="EFTNAS-style space generation")

    def __post_init__(self):
        if self.generate.enabled and not self.importance.enabled:
            raise ConfigError("generate.enabled needs importance.enabled: choices are derived from the scores")


@dataclass
class Built:
    supernet: SuperNetwork
    tokenizer: Any
    importance: Importance | None


def build_supernet(spec: SupernetSpec) -> Built:
    """Load, wrap, reorder and (optionally) generate the space, in that order."""
    model, tokenizer = load_model(spec.model)
    supernet = SuperNetwork(model, spec.space)
    importance = None
    if spec.importance.enabled:
        imp = spec.importance
        batch = calibration_batch(tokenizer, model.config.vocab_size, imp.examples, imp.max_length, imp.seed)
        importance = score(supernet, batch, imp.method)
        reorder(supernet, importance)
        log.info("reordered channels and heads by %s importance on %d examples", imp.method, imp.examples)
    if spec.generate.enabled:
        g = spec.generate
        generated = generate_spec(spec.space, importance, supernet.shape, n_targets=g.n_targets,
                                  min_ratio=g.min_ratio, align=g.align, skip_below=g.skip_below, heads=g.heads)
        supernet.set_space(generated)
        log.info("generated space: %d dimensions, %.3g sub-networks", len(supernet.space.dims), supernet.space.size())
    return Built(supernet, tokenizer, importance)


def save_space(built: Built, out_dir: str | Path) -> None:
    """Write the resolved space (and importance scores) so later stages need not recompute them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built.supernet.space.save(out_dir / "space.json")
