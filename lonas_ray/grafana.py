"""A Grafana dashboard of lonas-ray's own metrics, built from the gauge registry, and installed beside Ray's.

Ray's dashboard embeds panels of *Ray's* generated Grafana dashboards only, so
application metrics (``ray_lonas_*``) need a dashboard of their own. This one is
generated from ``metrics.GAUGES`` (one panel group per gauge: a test holds the
two together), and Ray's own provisioning loads it: at start a Ray head writes
``<session>/metrics/grafana/`` (``grafana.ini``, a dashboards provider and a
Prometheus data source named ``RAY_PROMETHEUS_NAME``), and every JSON file in its
``dashboards/`` folder appears in a Grafana started with that ``grafana.ini``. The
pipeline driver copies this dashboard there (``install_into_ray_session``); for a
Grafana of your own, ``lonas-ray grafana-dashboard --out FILE`` writes the same
JSON (``infra/monitoring/lonas_ray_grafana_dashboard.json`` is a copy).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lonas_ray.metrics import GAUGES

log = logging.getLogger(__name__)

UID = "lonasRayDashboard"
FILE_NAME = "lonas_ray_grafana_dashboard.json"
RUN = 'run=~"$run"'


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"


def _q(metric: str, by: str) -> str:
    return f"max by ({by}) (ray_{metric}{{{RUN}}})"


PANELS = (
    Panel("Pipeline stages finished", GAUGES["lonas_pipeline_stage"][0],
          ((_q("lonas_pipeline_stage", "run"), "{{run}}"),)),
    Panel("Training loss", GAUGES["lonas_train_loss"][0], ((_q("lonas_train_loss", "run"), "{{run}}"),)),
    Panel("Training throughput", GAUGES["lonas_train_tokens_per_s"][0],
          ((_q("lonas_train_tokens_per_s", "run"), "{{run}}"),), unit="tokens/s"),
    Panel("Training steps", GAUGES["lonas_train_step"][0], ((_q("lonas_train_step", "run"), "{{run}}"),)),
    Panel("Sub-network params in training", GAUGES["lonas_train_subnet_params"][0],
          ((_q("lonas_train_subnet_params", "run"), "{{run}}"),)),
    Panel("Search evaluations per pool", "sub-network evaluations done, and the pool's total when done",
          ((_q("lonas_search_evaluations_done", "run, pool"), "{{pool}} done ({{run}})"),
           (_q("lonas_search_evaluations_total", "run, pool"), "{{pool}} total ({{run}})"))),
    Panel("Pareto front size per pool", GAUGES["lonas_pareto_size"][0],
          ((_q("lonas_pareto_size", "run, pool"), "{{pool}} ({{run}})"),)),
    Panel("Best quality per latency band", GAUGES["lonas_search_best_quality"][0],
          ((_q("lonas_search_best_quality", "run, pool, band"), "{{pool}} {{band}} ({{run}})"),), unit="percentunit"),
)


def _panel(i: int, p: Panel) -> dict:
    return {
        "id": i + 1, "type": "timeseries", "title": p.title, "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(p.targets)],
    }


def dashboard() -> dict:
    """The dashboard JSON: a data-source variable (as Ray's dashboards have) and a ``run`` filter."""
    return {
        "uid": UID, "title": "lonas-ray", "tags": ["lonas-ray", "ray"], "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 0,
             "current": {}, "label": "Data source"},
            {"name": "run", "label": "Run (output directory)", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": 'label_values({__name__=~"ray_lonas_.*"}, run)', "refId": "runs"},
             "definition": 'label_values({__name__=~"ray_lonas_.*"}, run)',
             "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
             "current": {"text": ["All"], "value": ["$__all"]}},
        ]},
        "panels": [_panel(i, p) for i, p in enumerate(PANELS)],
        "annotations": {"list": []},
    }


def to_json() -> str:
    """The dashboard as the file holds it."""
    return json.dumps(dashboard(), indent=1) + "\n"


def write(path: str | Path) -> Path:
    """Write the dashboard whole or not at all (a temporary file renamed over it): Grafana may read it any time."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(to_json())
    os.replace(tmp, path)
    return path


def ray_grafana_folder() -> Path:
    """``<session>/metrics/grafana`` of the Ray node this process is connected to."""
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path()) / "metrics" / "grafana"


def install_into_ray_session(wait_s: float = 20.0) -> Path | None:
    """Copy the dashboard into the connected Ray node's Grafana dashboards folder, once Ray has written it.

    A Ray head writes its Grafana provisioning when its dashboard starts (and
    first deletes the folder), so this waits up to ``wait_s`` for Ray's own
    dashboards before adding this one. A job driver runs on the head node (``ray
    job submit``), where the folder is; a driver elsewhere (Ray Client), or a Ray
    without its dashboard, has none and gets ``None``. A view only: never raises.
    """
    try:
        folder = ray_grafana_folder() / "dashboards"
        deadline = time.monotonic() + wait_s
        while not any(f.name != FILE_NAME for f in folder.glob("*_grafana_dashboard.json")):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
        path = write(folder / FILE_NAME)
        print(f"Grafana dashboard 'lonas-ray' installed beside Ray's: {path} (a Grafana started with "
              f"{folder.parent / 'grafana.ini'} shows it)", flush=True)
        return path
    except Exception as exc:  # noqa: BLE001 (monitoring must not stop a run)
        log.debug("no Grafana dashboard installed: %s", exc)
        return None


def install_in_background() -> threading.Thread:
    """``install_into_ray_session`` without delaying the caller."""
    thread = threading.Thread(target=install_into_ray_session, name="lonas-grafana", daemon=True)
    thread.start()
    return thread
