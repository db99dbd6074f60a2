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
from typing import Any, NamedTuple

import torch

from lonas_ray.atomic import atomic_dir
from lonas_ray.calibration import calibration_batch, describe, task_batch
from lonas_ray.compress.apply import calibrate, check_compressible, compress
from lonas_ray.compress.sparsity import InputNorms
from lonas_ray.compress.spec import QuantizationSpec, SparsitySpec
from lonas_ray.config_io import ConfigError, from_dict, help_field, to_dict
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.data.spec import DataSpec
from lonas_ray.elastic.generate import generate_spec
from lonas_ray.elastic.importance import METHODS, Importance, reorder, score
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.model_source import ModelSource, load_model
from lonas_ray.space import SearchSpace, SpaceSpec

log = logging.getLogger(__name__)


CALIBRATION_DATA = ("task", "shipped")


@dataclass
class ImportanceSpec:
    """Importance reordering on a calibration batch."""

    enabled: bool = help_field(True, help="score channels/heads and put the important ones first")
    method: str = help_field("grad", help=f"score: {' or '.join(METHODS)}")
    examples: int = help_field(16, help="calibration examples")
    max_length: int = help_field(128, help="calibration tokens per example")
    seed: int = help_field(0, help="which calibration examples")
    data: str = help_field(
        "task", help="calibration text of importance and Wanda: 'task' (the run's training examples; shipped "
        "social_iqa text where there is no run, as in lonas-ray export) or 'shipped' (always social_iqa)")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"importance.method '{self.method}' is unknown; use one of {', '.join(METHODS)}")
        if self.examples < 1 or self.max_length < 2:
            raise ConfigError("importance.examples must be >= 1 and importance.max_length >= 2")
        if self.data not in CALIBRATION_DATA:
            raise ConfigError(f"importance.data '{self.data}' is unknown; use one of {', '.join(CALIBRATION_DATA)}")


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
    sparsity: SparsitySpec = help_field(default_factory=SparsitySpec, help="prune the frozen base (Shears, SQFT)")
    quantization: QuantizationSpec = help_field(
        default_factory=QuantizationSpec, help="INT4 group-wise weight-only base (SQFT)")

    def __post_init__(self):
        if self.generate.enabled and not self.importance.enabled:
            raise ConfigError("generate.enabled needs importance.enabled: choices are derived from the scores")
        merged_path = (self.sparsity.enabled and self.sparsity.mask_adapter) or self.quantization.qa
        if merged_path and self.space.lora.dropout > 0:
            raise ConfigError(
                "space.lora.dropout must be 0 with SparsePEFT or QA (sparsity.mask_adapter / quantization.qa): "
                "they train on the merged weight, which has no separate adapter input to drop out")
        units = [u for u in (self.sparsity.n_m[1] if self.sparsity.enabled and self.sparsity.n_m else None,
                             self.quantization.group_size if self.quantization.enabled else None) if u]
        bad = [u for u in units if self.generate.enabled and self.generate.align % u]
        if bad:
            raise ConfigError(
                f"generate.align {self.generate.align} must be a multiple of {bad[0]} (the N:M group or the "
                "quantization group size), or generated MLP widths cannot be cut into groups")

    @property
    def calibration(self) -> tuple[int, int, int]:
        """(examples, max_length, seed) of the calibration batch Wanda uses: the importance step's by default."""
        c, imp = self.sparsity.calibration, self.importance
        return (c.examples or imp.examples, c.max_length or imp.max_length, imp.seed)


@dataclass
class Built:
    supernet: SuperNetwork
    tokenizer: Any
    importance: Importance | None
    norms: InputNorms | None = None
    calibration: dict | None = None  # where each calibration batch came from (prepared/calibration.json)


def _check_base(model, spec: SupernetSpec) -> None:
    if spec.quantization.enabled and getattr(model.config, "quantization_config", None) is not None:
        raise ConfigError(
            "quantization.enabled is set but the base model is already quantized (its config has a "
            "quantization_config); start from the unquantized model, or set quantization.enabled: false")


def _calibration_batch(spec: SupernetSpec, tokenizer, vocab_size: int, n: int, max_length: int, seed: int,
                       data: DataSpec | None) -> tuple[dict[str, torch.Tensor], str]:
    """The task's training examples (``importance.data: task`` and a run's data given), else shipped text.

    The task's examples are tokenized as training tokenizes them: with the byte
    tokenizer where the model has none (tiny models).
    """
    if data is not None and spec.importance.data == "task":
        return task_batch(data, tokenizer or byte_tokenizer(), n, max_length, seed), describe(data, tokenizer, n)
    return calibration_batch(tokenizer, vocab_size, n, max_length, seed), describe(None, tokenizer, n)


def _skippable_by_influence(supernet: SuperNetwork, space: SpaceSpec, n: int, batch: dict[str, torch.Tensor]) -> None:
    """Add the ``n`` blocks of least influence (``elastic.block_influence``) to ``space``'s skippable blocks."""
    from dataclasses import replace

    from lonas_ray.elastic.block_influence import block_influence, least_influential

    with supernet.activated(supernet.space.maximal()):
        scores = block_influence(supernet.model, batch)
    chosen = least_influential(scores, n)
    supernet.set_space(replace(space, depth=replace(space.depth, skippable=sorted(
        set(space.depth.skippable) | set(chosen)))))
    log.info("block influence %s: blocks %s made skippable (depth.auto %d)",
             [round(s, 4) for s in scores], chosen, n)


def build_supernet(spec: SupernetSpec, data: DataSpec | None = None) -> Built:
    """Load, wrap, reorder, (optionally) generate the space, then compress the base, in that order.

    ``data``: the run's data; its training examples are the calibration batch of
    importance and Wanda unless ``importance.data`` is ``shipped``.
    """
    model, tokenizer = load_model(spec.model)
    _check_base(model, spec)
    supernet = SuperNetwork(model, spec.space)
    check_compressible(supernet.space, spec.sparsity, spec.quantization)
    importance, sources = None, {}
    batches: dict[tuple[int, int, int], tuple[dict, str]] = {}

    def batch_of(n: int, max_length: int, seed: int) -> tuple[dict, str]:
        """Importance and Wanda share one batch by default: load and tokenize the task's examples once."""
        key = (n, max_length, seed)
        if key not in batches:
            batches[key] = _calibration_batch(spec, tokenizer, model.config.vocab_size, n, max_length, seed, data)
        return batches[key]

    if spec.importance.enabled:
        imp = spec.importance
        batch, sources["importance"] = batch_of(imp.examples, imp.max_length, imp.seed)
        importance = score(supernet, batch, imp.method)
        reorder(supernet, importance)
        log.info("reordered channels and heads by %s importance on %s", imp.method, sources["importance"])
    space_spec = spec.space
    if spec.generate.enabled:
        g = spec.generate
        generated = space_spec = generate_spec(spec.space, importance, supernet.shape, n_targets=g.n_targets,
                                  min_ratio=g.min_ratio, align=g.align, skip_below=g.skip_below, heads=g.heads)
        supernet.set_space(generated)
        log.info("generated space: %d dimensions, %.3g sub-networks", len(supernet.space.dims), supernet.space.size())
        check_compressible(supernet.space, spec.sparsity, spec.quantization)
    if spec.space.depth.auto:
        imp = spec.importance
        batch, sources["depth"] = batch_of(imp.examples, imp.max_length, imp.seed)
        _skippable_by_influence(supernet, space_spec, spec.space.depth.auto, batch)
        check_compressible(supernet.space, spec.sparsity, spec.quantization)
    norms = None
    if spec.sparsity.method == "wanda":
        examples, max_length, seed = spec.calibration
        batch, sources["wanda"] = batch_of(examples, max_length, seed)
        norms = calibrate(supernet, batch)
        log.info("Wanda input norms from %s", sources["wanda"])
    compress(supernet, spec.sparsity, spec.quantization, norms)
    return Built(supernet, tokenizer, importance, norms, sources or None)


def restore_supernet(spec: SupernetSpec, space: SearchSpace, importance: Importance | None,
                     norms: InputNorms | None = None, *, seed: int = 0) -> Built:
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
    compress(supernet, spec.sparsity, spec.quantization, norms)
    return Built(supernet, tokenizer, importance, norms)


PREPARED_FILES = ("supernet_spec.json", "space.json", "importance.json")
SPARSITY_FILE = "sparsity.json"  # Wanda's input norms (null: none); absent in directories from before sparsity
CALIBRATION_FILE = "calibration.json"  # where the calibration batches came from (provenance; not read back)


def prepared_file_names(directory: str | Path) -> list[str]:
    """The prepared-super-network files present in ``directory`` (what a checkpoint copies along)."""
    optional = [f for f in (SPARSITY_FILE, CALIBRATION_FILE) if (Path(directory) / f).is_file()]
    return [*PREPARED_FILES, *optional]


class Prepared(NamedTuple):
    """What a prepared super-network directory holds; ``restore_supernet(*prepared)`` rebuilds it."""

    spec: SupernetSpec
    space: SearchSpace
    importance: Importance | None
    norms: InputNorms | None


def save_prepared(built: Built, spec: SupernetSpec, out_dir: str | Path) -> Path:
    """Write what ``load_prepared`` needs: the spec, the resolved space and the importance scores."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "supernet_spec.json").write_text(json.dumps(to_dict(spec), indent=1))
    built.supernet.space.save(out_dir / "space.json")
    imp = built.importance.to_dict() if built.importance is not None else None
    (out_dir / "importance.json").write_text(json.dumps(imp))
    norms = built.norms.to_dict() if built.norms is not None else None
    (out_dir / SPARSITY_FILE).write_text(json.dumps(norms))
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(built.calibration, indent=1))
    return out_dir


def missing_prepared(directory: str | Path) -> list[str]:
    """The files of a prepared super-network directory that ``directory`` lacks (none: it is one)."""
    return [f for f in PREPARED_FILES if not (Path(directory) / f).is_file()]


def load_prepared(directory: str | Path) -> Prepared:
    """Read a directory written by ``save_prepared`` (a checkpoint holds the same files)."""
    directory = Path(directory)
    missing = missing_prepared(directory)
    if missing:
        raise FileNotFoundError(f"{directory} is not a lonas-ray super-network directory: missing {missing}")
    spec = from_dict(SupernetSpec, json.loads((directory / "supernet_spec.json").read_text()), where=str(directory))
    space = SearchSpace.load(directory / "space.json")
    imp = json.loads((directory / "importance.json").read_text())
    norms_file = directory / SPARSITY_FILE
    norms = json.loads(norms_file.read_text()) if norms_file.is_file() else None
    if spec.sparsity.method == "wanda" and norms is None:
        raise FileNotFoundError(f"{directory} prunes with Wanda but has no {SPARSITY_FILE} (its input norms)")
    return Prepared(spec, space, Importance.from_dict(imp) if imp is not None else None,
                    InputNorms.from_dict(norms) if norms is not None else None)


def preflight(spec: SupernetSpec) -> SearchSpace | None:
    """What ``build_supernet`` would refuse that needs no weights, checked before anything is written: the model's
    files (a local one) and the space against the model's shape. Returns the space's dimensions as resolved
    (None when the space is generated from importance, or SmolLM2's config is not converted yet)."""
    from lonas_ray.model_source import model_config
    from lonas_ray.shape import ModelShape

    config = model_config(spec.model)
    if config is None:
        return None
    space = SearchSpace.resolve(spec.space, ModelShape.from_config(config))
    return None if spec.generate.enabled else space


def prepare_once(spec: SupernetSpec, prepared: str | Path, data: DataSpec | None = None) -> Path:
    """Score importance, reorder and size the space once, into ``prepared``; an existing one is reused.

    Every process that later rebuilds the super-network (Ray Train workers, search
    evaluators) restores from this directory, so they all slice the same channels
    even where scoring is not bit-reproducible (GPU kernels).
    """
    prepared = Path(prepared)
    if not missing_prepared(prepared):
        log.info("reusing the prepared super-network in %s", prepared)
        return prepared
    with atomic_dir(prepared) as partial:
        save_prepared(build_supernet(spec, data), spec, partial)
    return prepared
