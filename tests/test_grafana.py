"""The Grafana dashboard of ray_lonas_* metrics: one panel per emitted gauge, installed beside Ray's own."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT
from lonas_ray import grafana
from lonas_ray.metrics import GAUGES

pytestmark = [pytest.mark.ray]

SHIPPED = ROOT / "infra" / "monitoring" / grafana.FILE_NAME


def queried(board: dict) -> dict[str, set[str]]:
    """Metric name -> the labels its queries group by."""
    found: dict[str, set[str]] = {}
    for panel in board["panels"]:
        for target in panel["targets"]:
            by = re.match(r"max by \(([\w, ]+)\) \((ray_lonas_\w+)\{", target["expr"])
            assert by, target["expr"]
            found.setdefault(by.group(2), set()).update(x.strip() for x in by.group(1).split(","))
    return found


def test_every_emitted_gauge_has_a_panel_and_every_panel_charts_an_emitted_gauge():
    found = queried(grafana.dashboard())
    assert set(found) == {f"ray_{name}" for name in GAUGES}
    for metric, labels in found.items():
        assert labels <= set(GAUGES[metric.removeprefix("ray_")][1]), (metric, labels)  # only the gauge's tags


def test_the_dashboard_filters_by_run_and_uses_a_prometheus_data_source_variable():
    board = grafana.dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "ray_lonas_" in variables["run"]["definition"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all('run=~"$run"' in t["expr"] for t in panel["targets"])


def test_the_shipped_json_is_the_generated_dashboard():
    assert json.loads(SHIPPED.read_text()) == grafana.dashboard(), (
        "regenerate it: lonas-ray grafana-dashboard > infra/monitoring/" + grafana.FILE_NAME)


def test_the_cli_writes_the_dashboard_and_never_overwrites_a_file(tmp_path):
    out = tmp_path / "board.json"
    cmd = [sys.executable, "-m", "lonas_ray.cli", "grafana-dashboard", "--out", str(out)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and json.loads(out.read_text()) == grafana.dashboard()
    out.write_text("mine")
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists; remove it or give another --out" in again.stderr
    assert "Traceback" not in again.stderr and out.read_text() == "mine"


@pytest.mark.timeout(180)
def test_installed_into_the_ray_sessions_grafana_folder_that_rays_provisioning_reads():
    import ray

    from lonas_ray.ray_env import ensure_ray

    assert not ray.is_initialized()
    ensure_ray(num_cpus=1, dashboard=True, object_store_memory=100 * 2**20)
    try:
        path = grafana.install_into_ray_session(wait_s=60)
        assert path is not None
        folder = grafana.ray_grafana_folder()
        assert path == folder / "dashboards" / grafana.FILE_NAME
        assert json.loads(path.read_text())["uid"] == grafana.UID
        assert any(f.name != grafana.FILE_NAME for f in path.parent.glob("*_grafana_dashboard.json"))  # Ray's own
        provider = yaml.safe_load((folder / "provisioning" / "dashboards" / "default.yml").read_text())
        assert [p["options"]["path"] for p in provider["providers"]] == [str(path.parent)]
    finally:
        ray.shutdown()
