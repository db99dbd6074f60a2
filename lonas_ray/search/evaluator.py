"""Evaluate sub-networks of one loaded super-network: quality, serving latency, counts.

``Evaluator`` loads the super-network and tokenizes the evaluation set once;
each ``evaluate`` then extracts and merges one sub-network (what would be
deployed), scores it and times it on this process's device. ``SubnetTrainable``
(``lonas_ray.search.trainable``) is the Tune face of it.

Timing holds the device's lease alone; loading, slicing and scoring (batch by
batch) hold it shared (``lonas_ray.lease``): evaluators sharing a node work at
once but time one at a time, and nothing of theirs runs beside a timing, so a
latency is the same figure whichever pool or stage took it.
The evaluator also times the maximal sub-network after its first timed evaluation
of another sub-network and after every ``latency.reference_every`` more
(``reference``): the same-run
reference every speed-up is taken against, and its drift over a long search.
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
from lonas_ray.lease import lease_for
from lonas_ray.memory import peak_memory
from lonas_ray.merge.extract import extract
from lonas_ray.model_source import DTYPES
from lonas_ray.search.config import LatencySpec, PoolSpec, QualitySpec, SearchConfig
from lonas_ray.search.latency import measure
from lonas_ray.search.quality import build_eval_set, score_examples, subset, subset_indices
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
    from lonas_ray.train.state import ADAPTER_FILE, load_trained_supernet

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
        self.lease = lease_for(self.device)
        with self.lease.shared():  # loading is heavy too: never beside another evaluator's timing
            self.supernet, self.tokenizer = load_supernet_files(job.supernet_files)
            self.supernet.to(self.device)
            self.space: SearchSpace = self.supernet.space
            self.full_set = build_eval_set(load_examples(data, "eval"), self.tokenizer, data.cutoff_len)
        self.load_s = time.perf_counter() - t0
        self.since_reference = 0  # timed evaluations since this evaluator last timed the reference
        self.references = 0  # reference timings this evaluator made
        self.rows = 0  # rows this evaluator made (the first carries its load time)
        log.info("evaluator for pool %s ready in %.1f s on %s (%d eval examples)",
                 job.pool, self.load_s, self.device, len(self.full_set))

    def _examples(self, n: int | None):
        idx = subset_indices(len(self.full_set), n, self.quality_spec.seed)
        return subset(self.full_set, idx)

    def _time(self, model) -> dict[str, dict]:
        """Every runtime's figures (``LatencyStats`` as a dict) of ``model``, each timed holding the device alone;
        ``lease_wait_s``: how long it waited for the other work on the device to pause."""
        ls, out = self.latency, {}
        for runtime in self.runtimes:
            timer = partial(measure_vllm, python=ls.vllm_python) if runtime == "vllm" else \
                partial(measure, runtime=runtime)
            with self.lease.exclusive() as hold:
                stats = timer(model, batch_size=ls.batch_size, prompt_len=ls.prompt_len, new_tokens=ls.new_tokens,
                              warmup=ls.warmup, repeats=ls.repeats)
            out[runtime] = dict(vars(stats), samples_ms=list(stats.samples_ms), lease=hold.key,
                                lease_wait_s=round(hold.waited_s, 3))
        return out

    def _model(self, config: SubnetConfig):
        """The merged sub-network, sliced holding the lease shared (a merge is heavy: never beside a timing)."""
        with self.lease.shared(), torch.no_grad():
            return extract(self.supernet, config).to(self.dtype)

    def evaluate(self, config: SubnetConfig, *, examples: int | None, with_latency: bool = True) -> dict[str, Any]:
        """One results row (``lonas_ray.search.results.SCHEMA``) for sub-network ``config``."""
        t0 = time.perf_counter()
        config = self.space.validate(config)
        with self.lease.shared():
            counts = count_subnet(self.supernet, config)
        model = self._model(config)
        evalset = self._examples(examples)
        switched = time.perf_counter()
        q, right = score_examples(model, evalset, self.quality_spec.batch_size, decode=self.tokenizer.decode,
                                  share=self.lease.shared)
        scored = time.perf_counter()
        lat = self._time(model) if with_latency else {}
        profile = {"load_s": round(self.load_s, 3) if self.rows == 0 else 0.0,
                   "switch_s": round(switched - t0, 3), "score_s": round(scored - switched, 3),
                   "time_s": round(time.perf_counter() - scored, 3), **peak_memory()}
        self.rows += 1
        self.since_reference += bool(lat)
        del model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        primary = lat[self.runtimes[0]] if lat else {}
        return {
            "subnet_id": self.space.subnet_id(config),
            "config": json.dumps(config, sort_keys=True),
            "pool": self.job.pool,
            "quality": q.quality,
            "quality_metric": q.metric,
            "loss": q.loss,
            "task_loss": q.task_loss,
            "latency_ms": primary.get("latency_ms"),
            "latency_p90_ms": primary.get("latency_p90_ms"),
            "latency_runtime": primary.get("runtime"),
            "prefill_ms": primary.get("prefill_ms"),
            "decode_ms": primary.get("decode_ms"),
            "latencies": json.dumps(lat),
            "params": counts.params,
            "nonzero_params": counts.nonzero_params,
            "macs": counts.macs_per_token,
            "weight_bytes": counts.weight_bytes,
            "eval_examples": q.examples,
            "outcomes": json.dumps([int(r) for r in right]) if right is not None else None,
            "profile": json.dumps(profile),
            "node_id": _node_id(),
            "eval_s": time.perf_counter() - t0,
            "timestamp": time.time(),
        }

    def reference_due(self, subnet_id: str) -> bool:
        """Whether the maximal is to be timed again after the evaluation of ``subnet_id`` just made: after the
        evaluator's first timed evaluation of another sub-network, then after every ``latency.reference_every``
        more (never right after the maximal's own row, which is a timing of it)."""
        every = self.latency.reference_every
        if not every or self.since_reference == 0 or subnet_id == self.space.subnet_id(self.space.maximal()):
            return False
        return self.references == 0 or self.since_reference >= every

    def reference(self) -> dict[str, Any]:
        """The maximal sub-network timed now, under the same lease as the candidates (``REFERENCES`` entry)."""
        t0 = time.perf_counter()
        maximal = self.space.maximal()
        model = self._model(maximal)
        lat = self._time(model)
        del model
        self.references, self.since_reference = self.references + 1, 0
        return {"subnet_id": self.space.subnet_id(maximal), "pool": self.job.pool, "node_id": _node_id(),
                "latencies": lat, "seconds": round(time.perf_counter() - t0, 3), "timestamp": time.time()}


def _node_id() -> str:
    """The Ray node this runs on ('' outside Ray): tests assert placement with it."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
