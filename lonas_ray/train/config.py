"""The training config: one YAML file, validated on the driver before any worker starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lonas_ray.build import SupernetSpec
from lonas_ray.config_io import ConfigError, YamlConfig, help_field
from lonas_ray.data.spec import DataSpec
from lonas_ray.train.schedule import STRATEGIES

# distill.teacher's two named teachers: the step's own maximal (in place), and the pipeline's plain-LoRA baseline
IN_PLACE = "maximal"
BASELINE = "baseline"


@dataclass
class SamplingSpec:
    strategy: str = help_field("sandwich", help=f"sub-networks per step: {', '.join(STRATEGIES)}")
    sandwich_random: int = help_field(1, help="random sub-networks besides largest and smallest (sandwich)")
    maximal_weight: float = help_field(
        1.0, help="sandwich: the maximal's loss weight against each other sub-network's 1 (its share of an update "
        "is weight / (weight + the others)); above 1 keeps the maximal closer to plain LoRA at equal steps")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"sampling.strategy '{self.strategy}' is unknown; use one of {', '.join(STRATEGIES)}")
        if self.sandwich_random < 0:
            raise ConfigError("sampling.sandwich_random must be >= 0")
        if not (isinstance(self.maximal_weight, (int, float)) and self.maximal_weight > 0):
            raise ConfigError(f"sampling.maximal_weight must be a number > 0, got {self.maximal_weight!r}")
        if self.maximal_weight != 1 and self.strategy != "sandwich":
            raise ConfigError(f"sampling.maximal_weight weighs a sandwich step's maximal, but sampling.strategy is "
                              f"'{self.strategy}': use strategy sandwich, or leave maximal_weight at 1")


@dataclass
class DistillSpec:
    """Knowledge distillation: a teacher's answer logits teach every sub-network beside the labels."""

    teacher: str = help_field(
        IN_PLACE, help=f"'{IN_PLACE}' (in place: the sandwich step's maximal teaches the others), '{BASELINE}' "
        "(lonas-ray run: the plain-LoRA baseline, trained first, frozen) or a directory: a lonas-ray supernet/ "
        "or a Hugging Face model"
    )
    weight: float = help_field(0.0, help="share of the soft (teacher) term in a student's loss, 0 (off) to 1")
    temperature: float = help_field(1.0, help="softmax temperature of teacher and student (> 0)")
    maximal: bool = help_field(
        True, help="a frozen teacher teaches the maximal too; false: the maximal learns from the labels alone (as "
        "BigNAS and AttentiveNAS train their largest child) and the teacher teaches the smaller sub-networks")

    def __post_init__(self):
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError(f"distill.teacher must be '{IN_PLACE}', '{BASELINE}' or a model directory, "
                              f"got {self.teacher!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"distill.weight must lie in [0, 1], got {self.weight}")
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")

    @property
    def frozen_teacher(self) -> bool:
        """Whether a separate, frozen model teaches (rather than the step's maximal, in place)."""
        return self.weight > 0 and self.teacher != IN_PLACE


@dataclass
class OptimSpec:
    steps: int = help_field(100, help="optimizer steps (unless epochs is set)")
    epochs: float | None = help_field(
        None, help="an epoch budget instead: steps = ceil(epochs x training examples / batch_size), resolved "
        "when training starts"
    )
    batch_size: int = help_field(8, help="global batch size (examples per optimizer step, all workers)")
    micro_batch_size: int = help_field(4, help="examples per forward on one worker")
    lr: float = help_field(3e-4, help="peak learning rate (AdamW)")
    weight_decay: float = help_field(0.0, help="AdamW weight decay")
    warmup_steps: int = help_field(0, help="linear warm-up steps, then linear decay to 0")
    grad_clip: float = help_field(1.0, help="gradient norm clip (0: off)")
    gradient_checkpointing: bool = help_field(False, help="recompute activations in backward to save memory")

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ConfigError("optim.steps, optim.batch_size and optim.micro_batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"optim.epochs must be > 0 (passes over data.train), got {self.epochs}")

    def resolve_epochs(self, examples: int) -> None:
        """Turn an epoch budget into ``steps`` for a training set of ``examples`` rows."""
        if self.epochs is not None:
            self.steps = max(1, math.ceil(self.epochs * examples / self.batch_size))


@dataclass
class DeepSpeedSpec:
    zero_stage: int = help_field(2, help="ZeRO stage: 2 (optimizer state + gradients sharded) or 3 (+ parameters)")
    bf16: bool | str = help_field("auto", help="bf16 mixed precision: auto (on with GPUs), true, false")

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 0-3, got {self.zero_stage}")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"deepspeed.bf16 must be auto, true or false, got {self.bf16}")


@dataclass
class ScalingSpec:
    num_workers: int = help_field(2, help="data-parallel Ray Train workers")
    use_gpu: bool = help_field(False, help="one GPU per worker")
    resources_per_worker: dict[str, float] = help_field(
        default_factory=lambda: {"CPU": 1}, help="Ray resources per worker, e.g. {CPU: 8, pool_h100: 1}"
    )

    def __post_init__(self):
        if self.num_workers < 1:
            raise ConfigError("scaling.num_workers must be >= 1")


@dataclass
class CheckpointSpec:
    every_steps: int = help_field(10, help="report a checkpoint every this many steps (and at the end)")
    num_to_keep: int = help_field(2, help="checkpoints Ray Train keeps")
    max_failures: int = help_field(2, help="worker-group restarts from the last checkpoint before giving up")

    def __post_init__(self):
        if self.every_steps < 1 or self.num_to_keep < 1 or self.max_failures < 0:
            raise ConfigError("checkpoint.every_steps and num_to_keep must be >= 1, max_failures >= 0")


@dataclass
class TrainSettings:
    """How the super-adapter trains: a training run less its model, data and output directory.

    The pipeline config holds these under ``train:`` and the model and data once for every stage.
    """

    sampling: SamplingSpec = help_field(default_factory=SamplingSpec, help="sub-network sampling per step")
    distill: DistillSpec = help_field(default_factory=DistillSpec, help="knowledge distillation (teacher, weight, T)")
    optim: OptimSpec = help_field(default_factory=OptimSpec, help="optimizer and batch sizes")
    deepspeed: DeepSpeedSpec = help_field(default_factory=DeepSpeedSpec, help="DeepSpeed settings")
    scaling: ScalingSpec = help_field(default_factory=ScalingSpec, help="Ray Train workers and resources")
    checkpoint: CheckpointSpec = help_field(default_factory=CheckpointSpec, help="checkpoints and recovery")
    seed: int = help_field(0, help="seed of the sub-network and data schedule")
    log_every: int = help_field(10, help="report the step's metrics to Ray Train (its dashboard page, the run's "
                                "result) every this many steps, besides each checkpoint, but not sooner than Ray "
                                "Train's controller takes reports (about every 2 s): a report before that waits for "
                                "it, which held short steps to its pace. The per-step figures are the "
                                "lonas_train_* gauges and ranks/rank<N>.jsonl either way")

    def __post_init__(self):
        per_step = self.optim.micro_batch_size * self.scaling.num_workers
        if self.optim.batch_size % per_step:
            raise ConfigError(
                f"optim.batch_size ({self.optim.batch_size}) is not divisible by micro_batch_size x num_workers "
                f"({self.optim.micro_batch_size} x {self.scaling.num_workers} = {per_step})"
            )
        if self.log_every < 1:
            raise ConfigError("log_every must be >= 1")
        if self.distill.weight > 0 and self.distill.teacher == IN_PLACE and self.sampling.strategy != "sandwich":
            raise ConfigError(
                f"distill.weight > 0 with distill.teacher: {IN_PLACE} needs sampling.strategy: sandwich (the maximal "
                f"sub-network, first in each sandwich step, is the teacher); got '{self.sampling.strategy}'. Set "
                f"distill.weight: 0, use sandwich, or name a frozen teacher ('{BASELINE}' or a model directory)"
            )

    @property
    def accumulation(self) -> int:
        """Micro-batches per worker per optimizer step (before sandwich multiplies it)."""
        return self.optim.batch_size // (self.optim.micro_batch_size * self.scaling.num_workers)


@dataclass(kw_only=True)
class TrainConfig(TrainSettings, YamlConfig):
    """A training run: its settings plus the model, the data and where it writes."""

    CONFIG_NAME = "train config"

    supernet: SupernetSpec = help_field(help="model, search space, importance reordering")
    data: DataSpec = help_field(help="training data")
    output_dir: str = help_field("out/train", help="where the run, its checkpoints and supernet/ go")
