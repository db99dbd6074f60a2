"""The Ray Train worker loop: DeepSpeed over the super-network, one sampled sub-network set per step.

Runs in every ``TorchTrainer`` worker (it must live in the package: Ray workers
cannot import test modules). Ray Train has already set up torch.distributed
(gloo on CPU, NCCL on GPU); ``deepspeed.initialize`` reuses that group.

Three parts: ``build_worker`` (super-network, data, DeepSpeed engine, resume
point), the step itself (``lonas_ray.train.step.train_step`` on this rank's
micro-batches) and ``report_step`` (the rank's record, metrics, gauges, and a
checkpoint when one is due); ``train_loop_per_worker`` only strings them together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lonas_ray.build import load_prepared, restore_supernet
from lonas_ray.counting import count_subnet
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.data.tokenize import build_train_dataset, collate
from lonas_ray.hf_compat import enable_activation_checkpointing
from lonas_ray.memory import peak_memory
from lonas_ray.space import SearchSpace
from lonas_ray.storage import download_file, is_uri, upload_file
from lonas_ray.train.config import TrainConfig
from lonas_ray.train.schedule import batch_indices, rank_micro_batches, subnets_for_step
from lonas_ray.train.state import read_checkpoint, write_checkpoint
from lonas_ray.train.step import train_step
from lonas_ray.train.teacher import TeacherLogits, load_teacher
from lonas_ray.transfer import write_tree

log = logging.getLogger(__name__)


def _stdout_print(*objects, sep=" ", end="\n", file=None, flush=False) -> None:
    sys.stdout.write(sep.join(map(str, objects)) + end)


def bar_label(strategy: str) -> str:
    """What the progress bar names: the baseline stage trains the maximal alone (plain LoRA), not a super-adapter."""
    return "LoRA training (maximal only)" if strategy == "fixed:maximal" else "super-adapter training"


def _progress_bar(total: int, done: int, label: str):
    """Rank 0's ``tqdm_ray`` bar, drawn by the driver, whose state lines bypass Ray Train's print patch.

    Ray Train patches ``print`` in its workers to tee into stdout *and* its logger
    (stderr), so each bar state reaches the driver twice, and the second copy of the
    closing state re-opens a bar that never closes: the driver then redraws a
    finished training bar under every later log line.
    """
    import builtins

    from ray.experimental.tqdm_ray import tqdm

    class WorkerBar(tqdm):
        def _dump_state(self, force_flush=False) -> None:
            patched, builtins.print = builtins.print, _stdout_print
            try:
                super()._dump_state(force_flush)
            finally:
                builtins.print = patched

    bar = WorkerBar(total=total, desc=label)
    bar.update(done)
    return bar


def deepspeed_config(cfg: TrainConfig, n_subnets: int, use_bf16: bool) -> dict:
    """The DeepSpeed config of a run: each (sub-network, micro-batch) pair is one accumulation micro-step."""
    return {
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": cfg.accumulation * n_subnets,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": use_bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(cfg: TrainConfig):
    warm, total = cfg.optim.warmup_steps, cfg.optim.steps

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))
    return f


def report_interval_s() -> float:
    """How often Ray Train's controller takes a worker's report: it polls the workers at its health-check interval
    (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default) and a worker holds one report, so a report sooner than
    that after the one before waits for the poll: on an H100, a tiny model's 10 steps took the poll's 2 s."""
    return float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))


def metrics_report_due(done: int, log_every: int, since_last_s: float, interval_s: float) -> bool:
    """A metrics-only report every ``log_every`` steps, skipped while the controller cannot have taken the last."""
    return done % log_every == 0 and since_last_s >= interval_s


def _rank_zero_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank: a report is a collective, so ranks whose clocks differ must still agree."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _check_same_subnets(ids: list[str], step: int) -> None:
    """Every rank must train the same sub-networks on a step; a mismatch is a bug worth stopping for."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ids)
    if any(g != ids for g in gathered):
        raise RuntimeError(f"step {step}: ranks disagree on the sub-networks: {gathered}")


def _sum_across_ranks(value: float, device: torch.device) -> float:
    """Sum over ranks; the tensor lives on the worker's device because NCCL has no CPU path."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return float(t)


def _mean_across_ranks(value: float, device: torch.device) -> float:
    return _sum_across_ranks(value, device) / (dist.get_world_size() if dist.is_initialized() else 1)


@dataclass
class Worker:
    """One rank's training state, built once (``build_worker``)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    supernet: Any
    space: SearchSpace
    dataset: Any
    pad_id: int
    engine: Any
    params: list
    prepared_dir: Path
    out: Path  # where this rank writes ranks/: the run's directory, or a node-local one when the run is on a URI
    run: str  # the run's name (metric tags)
    ranks_uri: str | None = None  # the run's URI: ranks/ logs are uploaded there
    teacher: Any = None  # a frozen teacher's TeacherLogits (train.distill.teacher), None in place or off
    start: int = 0  # the first step to run (after a resume, the checkpoint's)
    params_of: dict[str, int] = field(default_factory=dict)  # sub-network id -> params (counted once)
    last_report: float = 0.0  # perf_counter() when the last ray.train.report returned

    def full_adapters(self):
        """Under ZeRO-3 the adapters themselves are sharded: gather them for a checkpoint."""
        import deepspeed

        if self.cfg.deepspeed.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(self.params, modifier_rank=0)
        return contextlib.nullcontext()

    @property
    def rank_log(self) -> Path:
        return self.out / "ranks" / f"rank{self.rank}.jsonl"


def build_worker(loop_config: dict) -> Worker:
    """The super-network on this rank's device inside a DeepSpeed engine, the data, and where to start."""
    import deepspeed
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(loop_config["train"])
    local = Path(tempfile.mkdtemp(prefix="lonas-worker-"))  # this node's own: the driver's disk may be elsewhere
    prepared_dir = write_tree(loop_config["prepared_files"], local / "prepared")
    output = loop_config["output_dir"]
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    built = restore_supernet(*load_prepared(prepared_dir), seed=cfg.seed)
    supernet, space = built.supernet, built.supernet.space
    tokenizer = built.tokenizer or byte_tokenizer()
    use_bf16 = device.type == "cuda" and str(cfg.deepspeed.bf16).lower() != "false" \
        or str(cfg.deepspeed.bf16).lower() == "true"
    if use_bf16:
        supernet.model.to(torch.bfloat16)  # frozen base in bf16; DeepSpeed handles the adapters
    supernet.to(device)
    if cfg.optim.gradient_checkpointing:
        enable_activation_checkpointing(supernet.model, {"use_reentrant": False})
    supernet.train()
    if device.type == "cpu":
        # DeepSpeed would JIT-compile a shared-memory allreduce (~45 s) that gloo does not need.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    params = supernet.adapter_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    n_subnets = len(subnets_for_step(space, cfg.sampling.strategy, cfg.seed, 0, cfg.sampling.sandwich_random))
    engine, _, _, _ = deepspeed.initialize(
        model=supernet, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=params,
        config=deepspeed_config(cfg, n_subnets, use_bf16), dist_init_required=False,
    )
    teacher = None
    if cfg.distill.frozen_teacher:
        source = cfg.distill.teacher  # a trained super-network comes through the object store, a model dir by path
        if loop_config.get("teacher_files") is not None:
            source = write_tree(ray.get(loop_config["teacher_files"]), local / "teacher")
        teacher = TeacherLogits(load_teacher(source, device, torch.bfloat16 if use_bf16 else None))
    worker = Worker(cfg, ctx.get_world_rank(), ctx.get_world_size(), device, supernet, space,
                    build_train_dataset(cfg.data, tokenizer),
                    tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, engine, params,
                    prepared_dir, local if is_uri(output) else Path(output), loop_config["run"],
                    output if is_uri(output) else None, teacher=teacher)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            worker.start = read_checkpoint(Path(d), engine=engine, supernet=supernet, rank=worker.rank,
                                           world_size=worker.world, full_adapters=worker.full_adapters)
        log.info("rank %d resumed at step %d", worker.rank, worker.start)
    return worker


def step_batches(w: Worker, step: int) -> tuple[list, list[str], list[list[int]], list[dict]]:
    """Step ``step``'s sub-networks (checked equal on every rank), their ids, this rank's micro-batches."""
    cfg = w.cfg
    subnets = subnets_for_step(w.space, cfg.sampling.strategy, cfg.seed, step, cfg.sampling.sandwich_random)
    ids = [SearchSpace.subnet_id(s) for s in subnets]
    _check_same_subnets(ids, step)
    indices = batch_indices(len(w.dataset), step, cfg.optim.batch_size, cfg.seed)
    micro = rank_micro_batches(indices, w.rank, w.world, cfg.optim.micro_batch_size)
    batches = [{k: v.to(w.device) for k, v in collate(w.dataset.select(mb), w.pad_id).items()} for mb in micro]
    return subnets, ids, micro, batches


def report_step(w: Worker, step: int, subnets: list, ids: list[str], micro: list[list[int]], stats, step_s: float,
                bar, probe_batch: dict) -> None:
    """The rank's record, the run's metrics and gauges, and the checkpoint when one is due."""
    import ray
    import ray.train

    from lonas_ray.metrics import set_gauges

    cfg = w.cfg
    rank_loss = stats.ce_sum / stats.passes  # plain cross-entropy: comparable with distillation on or off
    loss_mean = _mean_across_ranks(rank_loss, w.device)
    tokens_per_s = _sum_across_ranks(stats.tokens, w.device) / step_s
    for sid, sub in zip(ids, subnets):  # counting reads every tensor: once per sub-network, not per step
        if sid not in w.params_of:
            w.params_of[sid] = count_subnet(w.supernet, sub).params
    params_mean = sum(w.params_of[sid] for sid in ids) / len(ids)
    with w.rank_log.open("a") as f:
        f.write(json.dumps({"step": step, "subnets": ids, "indices": micro, "loss": rank_loss,
                            "tokens": stats.tokens, "teacher_passes": stats.teacher_passes, "step_s": step_s,
                            "restart_from": w.start, "node": ray.get_runtime_context().get_node_id(),
                            "ended": time.time()}) + "\n")  # epoch s: the wall time between steps, waits included
    done = step + 1
    metrics = {"step": done, "loss": loss_mean, "tokens_per_s": tokens_per_s, "subnet_params": params_mean,
               "lr": w.engine.get_lr()[0], "subnets": ids}
    # rank 0's peak memory so far (ranks hold the same replica and batch shape): what a node must offer a rank
    metrics.update({k: v for k, v in peak_memory().items() if v is not None})
    if w.rank == 0:
        set_gauges({"lonas_train_loss": loss_mean, "lonas_train_tokens_per_s": tokens_per_s,
                    "lonas_train_subnet_params": params_mean, "lonas_train_step": done}, run=w.run)
        bar.set_description(f"{bar_label(cfg.sampling.strategy)} (loss {loss_mean:.4f})")
        bar.update(1)
    last = done == cfg.optim.steps
    if done % cfg.checkpoint.every_steps == 0 or last:
        with tempfile.TemporaryDirectory(prefix="lonas-ckpt-") as tmp:
            write_checkpoint(Path(tmp), engine=w.engine, supernet=w.supernet, prepared_dir=w.prepared_dir, step=done,
                             rank=w.rank, world_size=w.world, seed=cfg.seed, full_adapters=w.full_adapters,
                             probe_batch=probe_batch if last else None, device=w.device)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step_{done:06d}")
        w.last_report = time.perf_counter()
        upload_rank_log(w)
    elif done % cfg.log_every == 0 and _rank_zero_decides(
            metrics_report_due(done, cfg.log_every, time.perf_counter() - w.last_report, report_interval_s()),
            w.device):
        ray.train.report(metrics)
        w.last_report = time.perf_counter()


def upload_rank_log(w: Worker) -> None:
    """On a URI run, this rank's log so far to ``<uri>/ranks/`` (whole: object stores do not append)."""
    if w.ranks_uri is not None:
        upload_file(w.rank_log, f"{w.ranks_uri}/ranks/{w.rank_log.name}")


def train_loop_per_worker(loop_config: dict) -> None:
    logging.getLogger("lonas_ray").setLevel(logging.INFO)  # not the root logger: dill would dump bytecode
    w = build_worker(loop_config)
    w.rank_log.parent.mkdir(parents=True, exist_ok=True)
    if w.ranks_uri is not None:  # a resumed rank appends to the log its earlier attempts uploaded
        download_file(f"{w.ranks_uri}/ranks/{w.rank_log.name}", w.rank_log)
    (w.out / "ranks" / f"rank{w.rank}.pid").write_text(str(os.getpid()))
    probe_batch = collate(w.dataset.select([0, 1]), w.pad_id)
    bar = _progress_bar(w.cfg.optim.steps, w.start, bar_label(w.cfg.sampling.strategy)) if w.rank == 0 else None

    def backward_and_step(loss):  # DeepSpeed steps the optimizer itself at the accumulation boundary
        w.engine.backward(loss)
        w.engine.step()

    for step in range(w.start, w.cfg.optim.steps):
        t0 = time.perf_counter()
        subnets, ids, micro, batches = step_batches(w, step)
        stats = train_step(subnets, batches, activate=w.supernet.activate, forward=lambda b: w.engine(**b),
                           backward=backward_and_step,
                           distill_weight=w.cfg.distill.weight, temperature=w.cfg.distill.temperature,
                           teacher=w.teacher, distill_maximal=w.cfg.distill.maximal,
                           maximal_weight=w.cfg.sampling.maximal_weight)
        report_step(w, step, subnets, ids, micro, stats, time.perf_counter() - t0, bar, probe_batch)
    if bar is not None:
        bar.close()
        sys.stdout.flush()  # the closing state is a stdout line: out before Ray Train ends the worker
    shutil.rmtree(w.prepared_dir.parent, ignore_errors=True)  # this rank's node-local copies
