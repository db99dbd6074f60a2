"""The peak memory of this process, host and GPU: what a cluster user sizes nodes by.

Each worker (a training rank, an evaluator, a merge task) reports its own peak with what it already returns; the
pipeline keeps the largest per stage (``stages.json``, ``summary.json``). Host memory is the process's peak
resident set (``ru_maxrss``: the kernel's own high-water mark, no sampling); GPU memory is what PyTorch's
allocator held at most (``torch.cuda.max_memory_allocated``, so not the CUDA context or another process's
share), and None where this process never used a GPU.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def peak_gpu_mib() -> float | None:
    """The most GPU memory PyTorch allocated in this process, over its visible GPUs, in MiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20, 1)


def peak_memory() -> dict[str, float | None]:
    return {"peak_rss_mib": peak_rss_mib(), "peak_gpu_mib": peak_gpu_mib()}


def largest(records: Iterable[dict | None]) -> dict[str, float | None]:
    """The largest of each peak over several workers' ``peak_memory`` records (None where none had a figure)."""
    out: dict[str, float | None] = {"peak_rss_mib": None, "peak_gpu_mib": None}
    for record in records:
        for key in out:
            value = (record or {}).get(key)
            if value is not None and (out[key] is None or value > out[key]):
                out[key] = value
    return out
