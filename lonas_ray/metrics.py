"""Custom Ray metrics (``ray.util.metrics``): exported as ``ray_lonas_*`` on each node's metrics port,
so the Ray dashboard's Grafana panels and any Prometheus can chart lonas-ray jobs."""

from __future__ import annotations

import functools

GAUGES = {
    "lonas_train_loss": "training loss of the last optimizer step",
    "lonas_train_tokens_per_s": "training throughput over all workers (tokens/s)",
    "lonas_train_subnet_params": "mean parameter count of the sub-networks of the last step",
    "lonas_train_step": "optimizer steps done",
}


@functools.lru_cache(maxsize=None)
def gauge(name: str):
    from ray.util.metrics import Gauge

    return Gauge(name, description=GAUGES[name], tag_keys=("run",))


def set_gauges(values: dict[str, float], run: str) -> None:
    for name, value in values.items():
        gauge(name).set(float(value), tags={"run": run})
