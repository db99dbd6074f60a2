"""Build a super-network from a config: load the model, wrap it, reorder by importance, size the space.

This is the one entry point later stages use (training, search, merge), so the
steps always run in the same order: importance is scored and channels permuted
*before* any adapter is trained, and a generated space is derived from the same
scores.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lonas_ray.atomic import atomic_dir
from lonas_ray.calibration import calibration_batch
from lonas_ray.config_io import ConfigError, from_dict, help_field, to_dict
from lonas_ray.elastic.generate import generate_spec
from lonas_ray.elastic.importance import METHODS, Importance, reorder, score
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.model_source import ModelSource, load_model
from lonas_ray.space import SearchSpace, SpaceSpec

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


def restore_supernet(spec: SupernetSpec, space: SearchSpace, importance: Importance | None,
                     seed: int = 0) -> Built:
    """Rebuild a prepared super-network anywhere (Ray workers, search, merge) without rescoring.

    The space and importance scores come from the driver's ``build_supernet``; the
    permutation follows from the scores deterministically, and the adapters are
    initialised from ``seed`` so every rank starts from the same weights.
    """
    model, tokenizer = load_model(spec.model)
    torch.manual_seed(seed)
    supernet = SuperNetwork(model, space)
    if importance is not None:
        reorder(supernet, importance)
    return Built(supernet, tokenizer, importance)


PREPARED_FILES = ("supernet_spec.json", "space.json", "importance.json")


def save_prepared(built: Built, spec: SupernetSpec, out_dir: str | Path) -> Path:
    """Write what ``load_prepared`` needs: the spec, the resolved space and the importance scores."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "supernet_spec.json").write_text(json.dumps(to_dict(spec), indent=1))
    built.supernet.space.save(out_dir / "space.json")
    imp = built.importance.to_dict() if built.importance is not None else None
    (out_dir / "importance.json").write_text(json.dumps(imp))
    return out_dir


def load_prepared(directory: str | Path) -> tuple[SupernetSpec, SearchSpace, Importance | None]:
    """Read a directory written by ``save_prepared`` (a checkpoint holds the same files)."""
    directory = Path(directory)
    missing = [f for f in PREPARED_FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a lonas-ray super-network directory: missing {missing}")
    spec = from_dict(SupernetSpec, json.loads((directory / "supernet_spec.json").read_text()), where=str(directory))
    space = SearchSpace.load(directory / "space.json")
    imp = json.loads((directory / "importance.json").read_text())
    return spec, space, (Importance.from_dict(imp) if imp is not None else None)


def prepare_once(spec: SupernetSpec, prepared: str | Path) -> Path:
    """Score importance, reorder and size the space once, into ``prepared``; an existing one is reused.

    Every process that later rebuilds the super-network (Ray Train workers, search
    evaluators) restores from this directory, so they all slice the same channels
    even where scoring is not bit-reproducible (GPU kernels).
    """
    prepared = Path(prepared)
    if all((prepared / f).is_file() for f in PREPARED_FILES):
        log.info("reusing the prepared super-network in %s", prepared)
        return prepared
    with atomic_dir(prepared) as partial:
        save_prepared(build_supernet(spec), spec, partial)
    return prepared
