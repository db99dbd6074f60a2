"""The pipeline config: one YAML that holds what the train and search stages need, once.

The model, data and pools are written once here; ``train_config`` and
``search_config`` derive the stage configs (and so reuse their validation), which
``PipelineConfig`` builds eagerly: a bad pipeline config fails before any stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lonas_ray.build import SupernetSpec
from lonas_ray.config_io import ConfigError, YamlConfig, from_dict, help_field, to_dict
from lonas_ray.data.spec import DataSpec
from lonas_ray.merge.gguf_export import DTYPES as GGUF_DTYPES
from lonas_ray.merge.gguf_export import check_formats, check_gguf_source, gguf_options
from lonas_ray.search.config import ParetoSpec, PoolSpec, QualitySpec, SearchConfig, StrategySpec
from lonas_ray.train.config import BASELINE, TrainConfig, TrainSettings

EXPORT_SELECTIONS = ("picks", "front", "targets")
BASELINE_DIR = "baseline"  # out/baseline/ (its training run) and models/baseline/ (its export)


@dataclass
class BaselineSpec:
    enabled: bool = help_field(True, help="train and evaluate plain LoRA (the maximal network only) to compare with")
    steps: int | None = help_field(None, help="its optimizer steps (default: train.optim.steps or .epochs)")

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"baseline.steps must be >= 1, got {self.steps}")


@dataclass
class ZeroShotSpec:
    enabled: bool = help_field(
        True, help="score the untouched base model like the baseline (every pool, quality.final_examples): the row "
        "that says whether fine-tuning helped at all"
    )


@dataclass
class ExportSpec:
    select: str = help_field(
        "picks", help="which sub-networks become models: picks (each pool's latency and params picks), front "
        "(every member of every pool's latency front) or targets (per pool and latency target, the best of the "
        "front's top export.candidates after each one's recovery fine-tune: recover-then-rank)"
    )
    latency_targets: list[float] = help_field(
        default_factory=lambda: [0.9, 0.8, 0.7],
        help="select: targets: the latency budgets, as fractions of the maximal sub-network's latency on each pool"
    )
    candidates: int = help_field(
        3, help="select: targets: front members per target (best search objective first) that are recovered and "
        "re-scored on the search's examples before the best is exported (K)"
    )
    cpus: float = help_field(1, help="CPUs of one merge task")
    gpus: float = help_field(0, help="GPUs of one merge task: the recovery fine-tune and its scoring run there "
                             "(the merge and the save stay on the host)")
    memory_gb: float | None = help_field(
        None, help="host memory one merge task reserves with Ray's scheduler, in GB, so that a node runs only as "
        "many merges at once as its memory holds; unset: 4x the base model's bytes at its dtype, 5x with "
        "with_adapter (the super-network, the merged copy, the save), from the model's config; 0: no reservation")
    resources: dict[str, float] = help_field(default_factory=dict, help="extra Ray resources of a merge task")
    with_adapter: bool = help_field(False, help="also write the unmerged base + a stock-PEFT adapter (peft/)")
    formats: list[str] = help_field(
        default_factory=lambda: ["hf"], help="what each exported model is written as: hf (Hugging Face, always) "
        "and gguf (models/<id>/model.gguf for llama.cpp; Llama/Mistral families, dense or sparse bases)"
    )
    gguf_dtype: str = help_field("f16", help="formats: gguf: the GGUF's matrix dtype, f16 or f32 (exact)")
    recover_steps: int = help_field(
        0, help="a recovery fine-tune of each chosen sub-network's adapter before its merge (that sub-network "
        "alone, train.optim's batch and lr; 0: off); its checkpoint is scored again and those figures are reported"
    )
    lm_eval: bool = help_field(
        True, help="score each exported checkpoint again with lm-evaluation-harness on the final examples "
        "(an independent judge of lonas-ray's scorer; models/<id>/lm_eval.json, a report column)"
    )

    def __post_init__(self):
        if self.select not in EXPORT_SELECTIONS:
            raise ConfigError(f"export.select '{self.select}' is unknown; use one of {', '.join(EXPORT_SELECTIONS)}")
        if self.cpus < 0 or self.gpus < 0:
            raise ConfigError("export.cpus and export.gpus must be >= 0")
        if self.memory_gb is not None and not self.memory_gb >= 0:
            raise ConfigError(f"export.memory_gb must be >= 0 (GB a merge task reserves), got {self.memory_gb!r}; "
                              "0 reserves nothing, and leaving it out reserves 4x the base model's bytes")
        if not isinstance(self.recover_steps, int) or self.recover_steps < 0:
            raise ConfigError(f"export.recover_steps must be an integer >= 0, got {self.recover_steps!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise ConfigError(f"export.candidates must be an integer >= 1 (K candidates per target), got "
                              f"{self.candidates!r}")
        if not self.latency_targets or any(not 0 < t <= 1 for t in self.latency_targets):
            raise ConfigError(f"export.latency_targets must be fractions in (0, 1] of the maximal's latency, got "
                              f"{self.latency_targets}")
        check_formats(self.formats, "export.formats")
        if self.gguf_dtype not in GGUF_DTYPES:
            raise ConfigError(f"export.gguf_dtype '{self.gguf_dtype}' is unknown; use one of {', '.join(GGUF_DTYPES)}")
        if self.select == "targets" and self.recover_steps < 1:
            raise ConfigError("export.select: targets ranks candidates after their recovery fine-tune: set "
                              "export.recover_steps >= 1 (or use select: picks)")


@dataclass
class PipelineConfig(YamlConfig):
    CONFIG_NAME = "pipeline config"

    supernet: SupernetSpec = help_field(help="model, search space, importance reordering")
    data: DataSpec = help_field(help="training data (data.train) and held-out evaluation data (data.eval)")
    pools: dict[str, PoolSpec] = help_field(help="hardware pools by name (see the search stage)")
    output_dir: str = help_field("out/pipeline",
                                 help="where every stage writes (every file: the output contract in docs/pipeline.md)")
    train: TrainSettings = help_field(default_factory=TrainSettings, help="super-adapter training")
    baseline: BaselineSpec = help_field(default_factory=BaselineSpec, help="the plain-LoRA baseline")
    zero_shot: ZeroShotSpec = help_field(default_factory=ZeroShotSpec, help="the base model, not fine-tuned")
    search: StrategySpec = help_field(default_factory=StrategySpec, help="strategy, pools and budget")
    quality: QualitySpec = help_field(default_factory=QualitySpec, help="task quality")
    pareto: ParetoSpec = help_field(default_factory=ParetoSpec, help="Pareto reference and pick rule")
    export: ExportSpec = help_field(default_factory=ExportSpec, help="merge tasks and what they export")

    def __post_init__(self):
        if self.train.distill.frozen_teacher and self.train.distill.teacher == BASELINE and not self.baseline.enabled:
            raise ConfigError(f"train.distill.teacher '{BASELINE}' needs the baseline: set baseline.enabled: true, "
                              "or name a teacher directory, or distill in place (teacher: maximal)")
        if "gguf" in self.export.formats:
            self.check_gguf()
        self.train_config(".")  # the stage configs' own checks, now
        self.search_config(".", ".")

    def check_gguf(self) -> None:
        """GGUF exports: a family and a base the writer covers, known before any stage runs."""
        check_gguf_source(self.supernet.model, "export.formats")
        if self.supernet.quantization.enabled:
            raise ConfigError("export.formats: gguf takes dense or sparse merges, and this base is quantized to INT4 "
                              "(supernet.quantization.enabled): leave gguf out, or quantize with llama.cpp's own "
                              "tools after a dense export")

    def gguf_options(self) -> dict | None:
        """``save_subnetwork``'s gguf options for this run's models (None: no GGUF asked for)."""
        if "gguf" not in self.export.formats:
            return None
        return gguf_options(self.supernet.model, self.export.gguf_dtype)

    def teacher_dir(self, output_dir: str | Path) -> Path | None:
        """The frozen teacher's directory for a run in ``output_dir`` (None: in place or no distillation)."""
        d = self.train.distill
        if not d.frozen_teacher:
            return None
        return Path(output_dir) / BASELINE_DIR / "supernet" if d.teacher == BASELINE else Path(d.teacher)

    def train_config(self, output_dir: str | Path, *, baseline: bool = False) -> TrainConfig:
        raw = {**to_dict(self.train), "supernet": to_dict(self.supernet), "data": to_dict(self.data),
               "output_dir": str(output_dir)}
        if baseline:  # plain LoRA: the maximal alone, no teacher (it is the teacher)
            raw["sampling"] = {"strategy": "fixed:maximal", "sandwich_random": 0}
            raw["distill"] = {**raw["distill"], "weight": 0.0}
            if self.baseline.steps:  # its own step count replaces the super-adapter's steps or epochs
                raw["optim"] = {**raw["optim"], "steps": self.baseline.steps, "epochs": None}
        elif self.train.distill.frozen_teacher:
            raw["distill"] = {**raw["distill"], "teacher": str(self.teacher_dir(output_dir))}
        return from_dict(TrainConfig, raw, where="pipeline config (train)")

    def search_config(self, supernet_dir: str | Path, output_dir: str | Path) -> SearchConfig:
        raw = {"data": to_dict(self.data), "pools": to_dict(self.pools), "supernet_dir": str(supernet_dir),
               "output_dir": str(output_dir), "search": to_dict(self.search), "quality": to_dict(self.quality),
               "pareto": to_dict(self.pareto)}
        return from_dict(SearchConfig, raw, where="pipeline config (search)")
