"""A lease on the hardware a latency measurement runs on: timing runs alone, other heavy work shares.

Why: two pools on one node timed the same architecture at 560, 572 and 643 ms in one run, because
one evaluator's timing ran while the other scored or timed on the same cores. A latency is only a
figure to decide by when nothing else heavy ran beside it, so every timed span holds its hardware's
lease *exclusively*, and heavy work that may run beside a measurement (an evaluator's scoring, a
merge or recovery task) holds it *shared*: scorings run in parallel with each other, a timing waits
until they pause and stops them while it runs.

The lease is a reader-writer lock over ``fcntl.flock`` on files of one host-local directory
(``LONAS_RAY_LEASE_DIR``, default ``<tmp>/lonas-ray-leases``): every process of the host sees it,
whatever Ray node or actor it is, and the kernel releases a dead process's hold (a SIGKILLed
evaluator leaves no stale lease). A waiting timing takes a turnstile first, so scorings that keep
starting cannot starve it: a new scoring waits at the turnstile behind it, the running ones finish
their batch (scoring holds the lease per batch, timing per measurement).

Keys name the hardware: ``cpu`` for a host's CPUs, ``cuda-<uuid>`` for one GPU. GPU evaluators on
GPUs of their own hold different leases and may time at once; a CPU scoring does not block a GPU
timing. Containers of one host (Kubernetes pods) share the lease only if they share the directory
(mount one host path there, ``docs/cluster.md``).

``LONAS_RAY_LEASE_TRACE=FILE`` appends every hold to FILE as one JSON line (pid, key, mode, wall-clock start and
end of the hold): what a test or a puzzled user reads to see that no timing overlapped other heavy work.

Not leased: Ray Train's ranks. A rank blocked by a waiting timing while another rank holds its
share inside a collective would deadlock them; the pipeline never trains while it searches.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV_DIR = "LONAS_RAY_LEASE_DIR"
ENV_TRACE = "LONAS_RAY_LEASE_TRACE"
CPU = "cpu"


def lease_dir() -> Path:
    """Where this host's lease files live (made on first use)."""
    return Path(os.environ.get(ENV_DIR) or Path(tempfile.gettempdir()) / "lonas-ray-leases")


@dataclass
class Hold:
    """What taking a lease cost: the seconds it waited for the hardware (a measurement records it)."""

    key: str
    mode: str
    waited_s: float = 0.0


class HardwareLease:
    """The lease of one piece of hardware (``key``), see the module doc."""

    def __init__(self, key: str, directory: str | Path | None = None):
        self.key = key
        self.directory = Path(directory) if directory is not None else lease_dir()

    def _open(self, suffix: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.directory / f"{self.key}.{suffix}", os.O_RDWR | os.O_CREAT, 0o666)

    def exclusive(self):
        """Hold the hardware alone (a timed span): waits for the shared holders to pause, blocks new ones."""
        return self._hold("exclusive", fcntl.LOCK_EX)

    def shared(self):
        """Hold the hardware beside other shared holders (heavy work that is not a measurement)."""
        return self._hold("shared", fcntl.LOCK_SH)

    @contextmanager
    def _hold(self, mode: str, flag: int) -> Iterator[Hold]:
        t0 = time.perf_counter()
        held_from = None
        gate, lock = self._open("gate"), self._open("lock")
        try:
            # the turnstile: a waiting timing holds it, so shared holders arriving after it wait behind it;
            # a shared holder passes it at once unless a timing waits or runs
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(lock, flag)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            held_from = time.time()
            yield Hold(self.key, mode, time.perf_counter() - t0)
        finally:
            held_to = time.time()
            os.close(lock)  # closing releases the flock
            os.close(gate)
            if held_from is not None and os.environ.get(ENV_TRACE):
                _trace(os.environ[ENV_TRACE], {"pid": os.getpid(), "key": self.key, "mode": mode,
                                               "start": held_from, "end": held_to})


def _trace(path: str, record: dict) -> None:
    """One line appended in one write (O_APPEND: lines of concurrent holders never interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_trace(path: str | Path) -> list[dict]:
    """The holds a trace file recorded, in the order they began (each is written once released, so a short hold
    that began later may be written before a long one)."""
    holds = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return sorted(holds, key=lambda h: h["start"])


def hardware_key(device) -> str:
    """The lease key of a torch device: ``cpu``, or ``cuda-<uuid>`` (one GPU, whatever index it has here)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return CPU
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"cuda-{uuid}" if uuid is not None else f"cuda-{os.environ.get('CUDA_VISIBLE_DEVICES', '')}-{index}"


def lease_for(device) -> HardwareLease:
    """The lease of the hardware ``device`` computes on."""
    return HardwareLease(hardware_key(device))
