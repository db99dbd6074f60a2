"""Custom Ray metrics (``ray.util.metrics``): exported as ``ray_lonas_*`` on each node's metrics port,
so the Ray dashboard's Grafana panels and any Prometheus can chart lonas-ray jobs.

Every gauge is tagged with ``run`` (the output directory's name); search gauges also with
``pool``, and the best-quality gauge with the latency ``band``.
"""

from __future__ import annotations

import functools

GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "lonas_train_loss": ("training loss of the last optimizer step", ("run",)),
    "lonas_train_tokens_per_s": ("training throughput over all workers (tokens/s)", ("run",)),
    "lonas_train_subnet_params": ("mean parameter count of the sub-networks of the last step", ("run",)),
    "lonas_train_step": ("optimizer steps done", ("run",)),
    "lonas_search_evaluations_done": ("sub-network evaluations in results.parquet for the pool", ("run", "pool")),
    "lonas_search_evaluations_total": ("evaluations the pool's search will have when done", ("run", "pool")),
    "lonas_pareto_size": ("members of the pool's quality/latency Pareto front so far", ("run", "pool")),
    "lonas_search_best_quality": (
        "best quality so far among sub-networks whose latency is within the band (a fraction of maximal's)",
        ("run", "pool", "band"),
    ),
    "lonas_pipeline_stage": ("pipeline stages finished (of lonas_ray.pipeline.stages.STAGES)", ("run",)),
}


@functools.cache
def gauge(name: str):
    from ray.util.metrics import Gauge

    description, tag_keys = GAUGES[name]
    return Gauge(name, description=description, tag_keys=tag_keys)


def set_gauges(values: dict[str, float], run: str, **tags: str) -> None:
    for name, value in values.items():
        gauge(name).set(float(value), tags={"run": run, **tags})
