"""The training driver: validate, prepare the super-network once, run Ray Train, publish ``supernet/``.

Everything that can be checked without a worker is checked first (config, data
files, record fields), so a bad run fails in seconds with a message, not after
a worker group has started. Re-running with the same ``output_dir`` resumes:
the prepared super-network is reused and Ray Train continues the run of the
same name from its latest checkpoint. ``output_dir`` may be a URI
(``lonas_ray.storage``): checkpoints then go straight there, and the workers get
what they need (the prepared super-network, a trained teacher) through the
object store, never from the driver's disk.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lonas_ray.atomic import atomic_dir
from lonas_ray.build import preflight, prepare_once, prepared_file_names
from lonas_ray.config_io import ConfigError, to_dict
from lonas_ray.data.spec import check_data
from lonas_ray.storage import RunStorage
from lonas_ray.train.config import ScalingSpec, TrainConfig
from lonas_ray.train.state import ADAPTER_FILE, PROBE_FILE, STATE_FILE
from lonas_ray.train.teacher import check_teacher, teacher_kind
from lonas_ray.transfer import read_tree

log = logging.getLogger(__name__)

RUN_NAME = "train"


@dataclass
class TrainResult:
    supernet_dir: Path
    steps: int
    metrics: dict | None


def train(cfg: TrainConfig, address: str | None = None, storage: RunStorage | None = None) -> TrainResult:
    """Train the super-adapter; returns where the trained super-network was written (in ``storage``'s local
    copy; ``storage`` defaults to ``cfg.output_dir``, whose URI this call then pulls and pushes itself)."""
    check_data(cfg.data)
    if cfg.distill.frozen_teacher:
        check_teacher(cfg.distill.teacher, in_pipeline=False)
    preflight(cfg.supernet)  # the model's files and the space, before anything is written
    from lonas_ray.ray_env import ensure_ray

    ensure_ray(address)
    check_workers_fit(cfg.scaling)  # a fixed cluster without room for the workers: refused, not waited on
    own = storage is None
    storage = storage or RunStorage.open(cfg.output_dir)
    if own:
        storage.pull()
    out = storage.local
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare_once(cfg.supernet, out / "prepared", cfg.data)
    if cfg.optim.epochs is not None:
        from lonas_ray.data.load import load_examples

        examples = len(load_examples(cfg.data, "train"))
        cfg.optim.resolve_epochs(examples)
        log.info("optim.epochs %g over %d training examples at batch %d: %d steps", cfg.optim.epochs, examples,
                 cfg.optim.batch_size, cfg.optim.steps)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lonas_ray.train.loop import train_loop_per_worker

    resources = dict(cfg.scaling.resources_per_worker)
    teacher = cfg.distill.teacher if cfg.distill.frozen_teacher else None
    shipped_teacher = teacher is not None and teacher_kind(teacher) == "supernet"  # a plain model dir stays a path
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg), "prepared_files": read_tree(prepared), "output_dir": storage.shared,
                           "run": storage.name,
                           "teacher_files": ray.put(read_tree(teacher)) if shipped_teacher else None},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage.path("ray_results"),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint; see the logs under {storage.path('ray_results')}")
    supernet_dir = out / "supernet"
    with result.checkpoint.as_directory() as d:
        publish(Path(d), supernet_dir)
    steps = int(json.loads((supernet_dir / STATE_FILE).read_text())["step"])
    log.info("trained super-network written to %s (%d steps)", supernet_dir, steps)
    if own:
        storage.push()
    return TrainResult(supernet_dir, steps, result.metrics)


def worker_bundle(scaling: ScalingSpec) -> dict[str, float]:
    """The Ray resources one training worker asks for (Ray Train's defaults: 1 CPU, and 1 GPU with use_gpu)."""
    bundle = {"CPU": 1.0, **{k: float(v) for k, v in scaling.resources_per_worker.items()}}
    if scaling.use_gpu:
        bundle.setdefault("GPU", 1.0)
    return bundle


def check_workers_fit(scaling: ScalingSpec, what: str = "train.scaling") -> None:
    """``ConfigError`` now, before anything is written, when a cluster that cannot grow (no autoscaler; an embedded
    Ray) has no room for the training workers: Ray Train would wait for them for ever (a GPU run on a CPU machine)."""
    from lonas_ray.search.pools import describe_nodes, shortfall

    bundle = worker_bundle(scaling)
    if (short := shortfall(bundle, scaling.num_workers)) is None:
        return
    room, nodes = short
    need = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
    gpu = " (use_gpu: true, and this cluster has no GPU)" if scaling.use_gpu and not any(
        (n.get("Resources") or {}).get("GPU") for n in nodes if n.get("Alive")) else ""
    raise ConfigError(
        f"{what}: {scaling.num_workers} training worker(s) of {need} each{gpu} do not fit this cluster, which has "
        f"room for {room}: {describe_nodes(nodes)}. Lower {what}.num_workers or resources_per_worker, set use_gpu: "
        "false to train on CPUs, or run where the GPUs are")


def publish(checkpoint_dir: Path, supernet_dir: Path) -> None:
    """Copy the adapter and what rebuilds the super-network out of a checkpoint (no optimizer state)."""
    with atomic_dir(supernet_dir) as tmp:
        for name in (*prepared_file_names(checkpoint_dir), ADAPTER_FILE, STATE_FILE, PROBE_FILE):
            if (checkpoint_dir / name).is_file() or name != PROBE_FILE:
                shutil.copy(checkpoint_dir / name, tmp / name)
