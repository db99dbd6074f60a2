"""What a training checkpoint holds, and how a worker writes and reads it.

Layout (one directory; Ray Train merges the files every rank reports):
  adapter.safetensors                   the super-adapter (rank 0)
  supernet_spec.json space.json importance.json   to rebuild the super-network anywhere (rank 0)
  train_state.json                      step, world size, schedule seed (rank 0)
  ds/                                   DeepSpeed engine state: optimizer shards per rank, scheduler, step
  rng_rank<r>.pt                        each rank's torch / python RNG state (dropout)
  probe.safetensors                     final checkpoint only: two training inputs and the maximal
                                        network's logits on them, to verify a reloaded super-network
Frozen base weights are never written: a checkpoint is adapter-sized.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lonas_ray.build import load_prepared, prepared_file_names, restore_supernet
from lonas_ray.elastic.supernet import SuperNetwork

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "train_state.json"
PROBE_FILE = "probe.safetensors"
DS_TAG = "state"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint directory lacks files or holds unreadable ones."""


def save_adapter(supernet: SuperNetwork, path: str | Path) -> None:
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in supernet.adapter_state_dict().items()}
    save_file(state, str(path))


def load_adapter(supernet: SuperNetwork, path: str | Path) -> None:
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise CorruptCheckpointError(f"cannot read adapter weights {path}: {exc}") from exc
    supernet.load_adapter_state_dict(state)


def probe_logits(supernet: SuperNetwork, batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Logits of the maximal sub-network on ``batch``: a fingerprint of the trained weights.

    Every rank calls it, so that a sharded engine could gather collectively."""
    was_training = supernet.training
    supernet.eval()
    with torch.no_grad(), supernet.activated(supernet.space.maximal()):
        logits = supernet(input_ids=batch["input_ids"].to(device),
                          attention_mask=batch["attention_mask"].to(device)).logits
    supernet.train(was_training)
    return {"input_ids": batch["input_ids"].contiguous(), "attention_mask": batch["attention_mask"].contiguous(),
            "logits": logits.float().cpu().contiguous()}


def write_checkpoint(directory: Path, *, engine, supernet: SuperNetwork, prepared_dir: Path, step: int,
                     rank: int, world_size: int, seed: int, full_adapters=contextlib.nullcontext,
                     probe_batch: dict[str, torch.Tensor] | None = None, device=None) -> None:
    """Every rank calls this (DeepSpeed's save, the probe forward and ZeRO-3 gathers are collective).

    ``full_adapters`` is a context in which every rank holds whole adapter tensors
    (``deepspeed.zero.GatheredParameters`` under ZeRO-3; nothing below it). Rank 0 writes shared files.
    """
    engine.save_checkpoint(str(directory / "ds"), tag=DS_TAG, exclude_frozen_parameters=True)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, directory / f"rng_rank{rank}.pt")
    probe = probe_logits(supernet, probe_batch, device) if probe_batch is not None else None
    with full_adapters():  # after the probe: a ZeRO-3 forward re-partitions what it touched
        if rank == 0:
            save_adapter(supernet, directory / ADAPTER_FILE)
        if probe is not None:
            save_file(probe, str(directory / PROBE_FILE))
        for name in prepared_file_names(prepared_dir):
            shutil.copy(prepared_dir / name, directory / name)
        (directory / STATE_FILE).write_text(json.dumps({"step": step, "world_size": world_size, "seed": seed}))


def read_checkpoint(directory: Path, *, engine, supernet: SuperNetwork, rank: int, world_size: int,
                    full_adapters=contextlib.nullcontext) -> int:
    """Restore from ``directory``; returns the number of optimizer steps already done."""
    state_file = directory / STATE_FILE
    if not state_file.is_file() or not (directory / ADAPTER_FILE).is_file():
        raise CorruptCheckpointError(f"checkpoint {directory} lacks {STATE_FILE} or {ADAPTER_FILE}")
    try:
        state = json.loads(state_file.read_text())
        step = int(state["step"])
    except (ValueError, KeyError) as exc:
        raise CorruptCheckpointError(f"checkpoint {directory}: unreadable {STATE_FILE}: {exc}") from exc
    if state.get("world_size") == world_size and (directory / "ds").is_dir():
        load_path, _ = engine.load_checkpoint(str(directory / "ds"), tag=DS_TAG, load_module_strict=False)
        if load_path is None:
            raise CorruptCheckpointError(f"DeepSpeed could not load the engine state under {directory / 'ds'}")
    else:
        log.warning("checkpoint was written by %s workers, now %d: restoring adapters and step only "
                    "(optimizer state starts fresh)", state.get("world_size"), world_size)
        with full_adapters():
            load_adapter(supernet, directory / ADAPTER_FILE)
    rng = directory / f"rng_rank{rank}.pt"
    if rng.is_file():
        saved = torch.load(rng, weights_only=True)  # tensors, tuples and ints: no pickled code runs
        torch.set_rng_state(saved["torch"])
        random.setstate(saved["python"])
    return step


def load_trained_supernet(supernet_dir: str | Path) -> tuple[SuperNetwork, object]:
    """The trained super-network (and tokenizer) from a ``supernet/`` directory or a checkpoint."""
    supernet_dir = Path(supernet_dir)
    built = restore_supernet(*load_prepared(supernet_dir))
    load_adapter(built.supernet, supernet_dir / ADAPTER_FILE)
    return built.supernet, built.tokenizer
