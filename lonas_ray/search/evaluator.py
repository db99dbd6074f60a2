"""Evaluate sub-networks of one loaded super-network: quality, serving latency, counts.

``Evaluator`` loads the super-network and tokenizes the evaluation set once;
each ``evaluate`` then extracts and merges one sub-network (what would be
deployed), scores it and times it on this process's device. ``SubnetTrainable``
(``lonas_ray.search.trainable``) is the Tune face of it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lonas_ray.config_io import from_dict, to_dict
from lonas_ray.counting import count_subnet
from lonas_ray.data.spec import DataSpec
from lonas_ray.merge.extract import extract
from lonas_ray.model_source import DTYPES
from lonas_ray.search.config import LatencySpec, PoolSpec, QualitySpec, SearchConfig
from lonas_ray.search.latency import measure
from lonas_ray.search.quality import build_eval_set, evaluate_quality, subset, subset_indices
from lonas_ray.search.vllm_runtime import measure_vllm
from lonas_ray.space import SearchSpace, SubnetConfig

log = logging.getLogger(__name__)


@dataclass
class EvalJob:
    """What an evaluator needs, as plain data: it travels to Ray workers through the object store.

    The super-network directory's files (specs, importance, adapter: small next to
    the base model) travel as bytes, so worker nodes need no shared file system
    for it; only the base model must be loadable there (a package, or a path
    every node has).
    """

    supernet_files: dict[str, bytes]  # a trained supernet/ directory, or a prepared (untrained) one
    data: dict
    quality: dict
    pool: str
    pool_spec: dict

    @classmethod
    def from_config(cls, cfg: SearchConfig, pool: str, supernet_dir: str | Path) -> EvalJob:
        from lonas_ray.transfer import read_tree

        files = read_tree(supernet_dir, recursive=False)
        return cls(files, to_dict(cfg.data), to_dict(cfg.quality), pool, to_dict(cfg.pools[pool]))


def load_supernet(directory: str | Path):
    """(super-network, tokenizer) of a trained ``supernet/`` directory or an untrained prepared one."""
    from lonas_ray.build import load_prepared, restore_supernet
    from lonas_ray.data.byte_tokenizer import byte_tokenizer
    from lonas_ray.train.state import ADAPTER_FILE
    from lonas_ray.train.trainer import load_trained_supernet

    if (Path(directory) / ADAPTER_FILE).is_file():
        supernet, tokenizer = load_trained_supernet(directory)
    else:
        built = restore_supernet(*load_prepared(directory))
        supernet, tokenizer = built.supernet, built.tokenizer
    return supernet, tokenizer or byte_tokenizer()


def load_supernet_files(files: dict[str, bytes]):
    """``load_supernet`` of a directory that came through the object store (``transfer.read_tree``)."""
    from lonas_ray.transfer import write_tree

    with tempfile.TemporaryDirectory(prefix="lonas-supernet-") as d:
        return load_supernet(write_tree(files, Path(d) / "supernet"))


class Evaluator:
    def __init__(self, job: EvalJob):
        from lonas_ray.data.load import load_examples

        self.job = job
        self.pool = from_dict(PoolSpec, job.pool_spec, where=f"pools.{job.pool}")
        self.quality_spec = from_dict(QualitySpec, job.quality, where="quality")
        data = from_dict(DataSpec, job.data, where="data")
        cuda = self.pool.uses_cuda
        if cuda and not torch.cuda.is_available():
            raise RuntimeError(f"pool {job.pool} wants CUDA but this worker sees no GPU")
        self.device = torch.device("cuda" if cuda else "cpu")
        self.latency: LatencySpec = self.pool.latency
        self.runtimes = self.latency.resolved_runtimes(cuda)
        dtype = self.latency.dtype
        self.dtype = DTYPES[dtype] if dtype != "auto" else (torch.bfloat16 if cuda else torch.float32)
        t0 = time.perf_counter()
        self.supernet, self.tokenizer = load_supernet_files(job.supernet_files)
        self.supernet.to(self.device)
        self.space: SearchSpace = self.supernet.space
        self.full_set = build_eval_set(load_examples(data, "eval"), self.tokenizer, data.cutoff_len)
        self.load_s = time.perf_counter() - t0
        log.info("evaluator for pool %s ready in %.1f s on %s (%d eval examples)",
                 job.pool, self.load_s, self.device, len(self.full_set))

    def _examples(self, n: int | None):
        idx = subset_indices(len(self.full_set), n, self.quality_spec.seed)
        return subset(self.full_set, idx)

    def evaluate(self, config: SubnetConfig, *, examples: int | None, with_latency: bool = True) -> dict[str, Any]:
        """One results row (``lonas_ray.search.results.SCHEMA``) for sub-network ``config``."""
        t0 = time.perf_counter()
        config = self.space.validate(config)
        counts = count_subnet(self.supernet, config)
        with torch.no_grad():
            model = extract(self.supernet, config).to(self.dtype)
        evalset = self._examples(examples)
        q = evaluate_quality(model, evalset, self.quality_spec.batch_size, decode=self.tokenizer.decode)
        lat = {}
        if with_latency:
            ls = self.latency
            for runtime in self.runtimes:
                timer = partial(measure_vllm, python=ls.vllm_python) if runtime == "vllm" else \
                    partial(measure, runtime=runtime)
                lat[runtime] = timer(model, batch_size=ls.batch_size, prompt_len=ls.prompt_len,
                                     new_tokens=ls.new_tokens, warmup=ls.warmup, repeats=ls.repeats)
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        primary = lat[self.runtimes[0]] if lat else None
        return {
            "subnet_id": self.space.subnet_id(config),
            "config": json.dumps(config, sort_keys=True),
            "pool": self.job.pool,
            "quality": q.quality,
            "quality_metric": q.metric,
            "loss": q.loss,
            "task_loss": q.task_loss,
            "latency_ms": primary.latency_ms if primary else None,
            "latency_p90_ms": primary.latency_p90_ms if primary else None,
            "latency_runtime": primary.runtime if primary else None,
            "prefill_ms": primary.prefill_ms if primary else None,
            "decode_ms": primary.decode_ms if primary else None,
            "latencies": json.dumps({r: vars(s) for r, s in lat.items()}),
            "params": counts.params,
            "nonzero_params": counts.nonzero_params,
            "macs": counts.macs_per_token,
            "weight_bytes": counts.weight_bytes,
            "eval_examples": q.examples,
            "node_id": _node_id(),
            "eval_s": time.perf_counter() - t0,
            "timestamp": time.time(),
        }


def _node_id() -> str:
    """The Ray node this runs on ('' outside Ray): tests assert placement with it."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
