"""Serving latency of an extracted sub-network: prefill and per-token decode, the way models are served.

Why not time ``model(...)`` in a Python loop: for decode, eager PyTorch spends
most of a step launching kernels, so eager timing mostly measures Python and
hides the compression (a 1.47x smaller Llama-7B sub-network decoded 1.08x
faster eagerly, 1.23x with a static cache, on one H100). Runtimes, by realism:

* ``cuda_graph`` (GPU): a static KV cache and the decode step captured once in
  a CUDA graph and replayed, which is what ``torch.compile(mode=
  "reduce-overhead")`` does for decode, without paying an Inductor compile per
  sub-network. The default on GPU pools.
* ``compiled``: a static KV cache and ``torch.compile`` of the forward
  (reduce-overhead on GPU); the most realistic, and the slowest to set up
  (one compile per sub-network, since every sub-network has new shapes).
* ``static``: a static KV cache, eager steps (the CPU default: a CPU has no
  launch overhead to hide and no CUDA graphs).
* ``eager``: the dynamic cache, eager steps; what ``generate()`` does without
  a cache implementation. Reported as a second, labelled figure.

Every repeat runs one prefill of ``prompt_len`` tokens and ``new_tokens`` greedy
decode steps, timed with the device synchronised at both ends. A repeat's
latency is prefill + all decode steps (one request); the figures are the
median, p10 and p90 over repeats after ``warmup`` unmeasured repeats, and every
repeat's total (``samples_ms``), from which speed-ups get their intervals
(``lonas_ray.stats.ratio_of_medians``). Nothing here holds the hardware: the
caller times under its lease (``lonas_ray.lease``), so nothing heavy runs beside.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StaticCache

from lonas_ray.hf_compat import cache_kwarg, output_cache

RUNTIMES = ("cuda_graph", "compiled", "static", "eager")
GPU_ONLY = ("cuda_graph",)


@dataclass(frozen=True)
class LatencyStats:
    """One runtime's figures over the measured repeats (milliseconds)."""

    runtime: str
    latency_ms: float  # median of prefill + new_tokens decode steps
    latency_p90_ms: float
    prefill_ms: float  # median
    decode_ms: float  # median per decoded token
    repeats: int
    prefill_p90_ms: float
    decode_p90_ms: float
    latency_p10_ms: float | None = None
    samples_ms: tuple[float, ...] = ()  # every measured repeat's prefill + decode, in order


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU): every timed span starts and ends with it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0..1), numpy's default definition."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class _Decoder:
    """Prefill + greedy decode steps for one runtime; ``reset`` starts a new request."""

    def __init__(self, model, runtime: str, batch: int, max_len: int, device: torch.device):
        self.model, self.runtime, self.device = model, runtime, device
        self.static = runtime != "eager"
        self.cache = StaticCache(config=model.config, max_cache_len=max_len) if self.static else None
        self.forward: Callable = model.forward
        self.cache_kw = cache_kwarg(model)  # once: a signature read per decode step would be timed
        if runtime == "compiled":
            torch._dynamo.reset()  # new shapes every sub-network: never hit the recompile limit and fall back
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.forward = torch.compile(model.forward, mode=mode, dynamic=False, fullgraph=False)
        self.graph = None
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.logits = None
        self.past = None

    def reset(self) -> None:
        if self.static:
            self.cache.reset()
        self.past = None

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if self.static:
            pos = torch.arange(n, device=self.device)
            out = self.forward(input_ids=ids, cache_position=pos, use_cache=True, **{self.cache_kw: self.cache})
        else:
            out = self.model(input_ids=ids, use_cache=True)
            self.past = output_cache(out)
        return out.logits[:, -1:].argmax(-1)

    def _static_step(self) -> torch.Tensor:
        return self.forward(input_ids=self.tok, cache_position=self.pos, use_cache=True,
                            **{self.cache_kw: self.cache}).logits

    def capture(self, ids: torch.Tensor) -> None:
        """Record the decode step in a CUDA graph, after warm-up steps on a side stream (as PyTorch requires)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.reset()
                self.tok.copy_(self.prefill(ids))
                self.pos.fill_(ids.shape[1])
                self._static_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._static_step()

    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        if self.runtime == "cuda_graph":
            self.tok.copy_(token)
            self.pos.fill_(position)
            self.graph.replay()
            return self.logits[:, -1:].argmax(-1)
        if self.static:
            self.tok.copy_(token)
            self.pos.fill_(position)
            return self._static_step()[:, -1:].argmax(-1)
        out = self.model(input_ids=token, use_cache=True, **{self.cache_kw: self.past})
        self.past = output_cache(out)
        return out.logits[:, -1:].argmax(-1)


@torch.inference_mode()
def greedy_tokens(model, ids: torch.Tensor, new_tokens: int, runtime: str = "static") -> torch.Tensor:
    """The greedy continuation under ``runtime`` (what the timed loop computes; tests compare runtimes)."""
    device = ids.device
    dec = _Decoder(model, runtime, ids.shape[0], ids.shape[1] + new_tokens, device)
    if runtime == "cuda_graph":
        dec.capture(ids)
    dec.reset()
    token = dec.prefill(ids)
    out = [token]
    for i in range(new_tokens - 1):
        token = dec.step(token, ids.shape[1] + i)
        out.append(token)
    return torch.cat(out, dim=1)


@torch.inference_mode()
def measure(model, runtime: str, *, batch_size: int, prompt_len: int, new_tokens: int, warmup: int,
            repeats: int, seed: int = 0) -> LatencyStats:
    """Time ``repeats`` requests of ``model`` (on its own device and dtype) under ``runtime``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"latency runtime {runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")
    device = next(model.parameters()).device
    if runtime in GPU_ONLY and device.type != "cuda":
        raise ValueError(f"latency runtime {runtime!r} needs a CUDA device; the model is on {device}")
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=gen).to(device)
    dec = _Decoder(model, runtime, batch_size, prompt_len + new_tokens, device)
    if runtime == "cuda_graph":
        dec.capture(ids)
    totals, prefills, decodes = [], [], []
    for r in range(warmup + repeats):
        dec.reset()
        sync(device)
        t0 = time.perf_counter()
        token = dec.prefill(ids)
        sync(device)
        t1 = time.perf_counter()
        for i in range(new_tokens):
            token = dec.step(token, prompt_len + i)
        sync(device)
        t2 = time.perf_counter()
        if r >= warmup:
            prefills.append((t1 - t0) * 1e3)
            decodes.append((t2 - t1) * 1e3 / max(new_tokens, 1))
            totals.append((t2 - t0) * 1e3)
    return LatencyStats(
        runtime=runtime,
        latency_ms=statistics.median(totals),
        latency_p90_ms=percentile(totals, 0.9),
        prefill_ms=statistics.median(prefills),
        decode_ms=statistics.median(decodes),
        repeats=repeats,
        prefill_p90_ms=percentile(prefills, 0.9),
        decode_p90_ms=percentile(decodes, 0.9),
        latency_p10_ms=percentile(totals, 0.1),
        samples_ms=tuple(round(t, 4) for t in totals),
    )
