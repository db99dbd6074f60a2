"""Pools that scale from zero and back on Ray's own autoscaler v2, run by Ray's fake multi-node provider (which
starts and stops real raylets on this machine as if they were cloud instances).

Ray 2.60's ``AutoscalingCluster`` cannot be used as shipped: it reads ``fake_multi_node/example.yaml``, which
the wheel lacks (and so would the autoscaler, for the ``fake_multinode`` provider type's defaults), and its
start() runs ``ray stop --force`` for the whole host. The cluster config it needs is written here instead
(``fake_cluster``, the provider named as an external one), and the head is started like every other test's
(``helpers.Head``).

The driver runs in a fresh process (``DRIVER``), as a job's does: Ray caches per process whether the cluster
runs autoscaler v2, and another test's cluster in this process would have cached "no".
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from helpers import ROOT, Head

pytestmark = [pytest.mark.timeout(300), pytest.mark.ray, pytest.mark.slow]

POOL = "cpu_a"  # a node type of the fake cluster; "gpu_x" is one no node type offers


def fake_cluster(gcs_port: int) -> dict:
    """An autoscaler config for the fake provider: a head that hosts nothing and one pool node type from zero."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    return {
        "cluster_name": "lonas-fake", "max_workers": 1, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s: the pool's node goes soon after its work
        # Ray's own fake provider, named as an external one: as "fake_multinode" the autoscaler would read its
        # defaults from the example.yaml the wheel lacks; an external provider's defaults are built in
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider."
                     "FakeMultiNodeProvider", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_NODE_ID, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            POOL: {"resources": {"CPU": 1, f"pool_{POOL}": 1}, "labels": {"lonas/pool": POOL},
                   "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


DRIVER = """
import json, sys, time
import ray
from lonas_ray.search.config import PoolSpec
from lonas_ray.search.pools import PoolError, wait_for_pool, wait_seconds

ray.init(address=sys.argv[1], logging_level="ERROR")
pool = PoolSpec(placement=sys.argv[2], cpus=1)
out = {"wait_s": wait_seconds(pool)}
t0 = time.monotonic()
try:
    wait_for_pool("gpu_x", PoolSpec(cpus=1, gpus=1))
except PoolError as exc:
    out.update(refused_s=time.monotonic() - t0, refusal=str(exc))
t0 = time.monotonic()
placement, serving = wait_for_pool("cpu_a", pool)
out.update(joined_s=time.monotonic() - t0, serving=serving, mode=placement.mode)
on = ray.remote(lambda: ray.get_runtime_context().get_node_id()).options(**placement.task_options()).remote()
out["ran_on"] = ray.get(on, timeout=60)
print("RESULT " + json.dumps(out), flush=True)
"""


def alive_pool_nodes(head: Head) -> list[str]:
    proc = head.ray("list", "nodes", f"--address=127.0.0.1:{head.gcs}", "--format=json", "--detail")
    return [n["node_id"] for n in json.loads(proc.stdout) if n["state"] == "ALIVE"
            and n.get("labels", {}).get("lonas/pool") == POOL]


def test_a_pool_scales_up_from_zero_for_its_work_and_back_down_after_it(tmp_path):
    """No node serves the pool at first; the search's wait places an evaluator's placement group (label
    selector), for which autoscaler v2 launches the pool's node type; work lands there; once the work is done
    nothing of the wait keeps the idle node, which is terminated. A pool no node type offers is refused within
    seconds, not after the 900 s default wait."""
    placement = "label"  # what autoscaler v2 scales, and what lonas-ray's cluster files use
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    head = Head(tmp_path, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_enable_autoscaler_v2="1",
                RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID)
    config = tmp_path / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(fake_cluster(head.gcs)))
    try:
        head.start(False, 0, f"--autoscaling-config={config}")
        assert alive_pool_nodes(head) == []
        env = {k: v for k, v in head.env.items() if k not in ("RAY_enable_autoscaler_v2", "RAY_FAKE_CLUSTER",
                                                               "RAY_OVERRIDE_NODE_ID_FOR_TESTING")}
        proc = subprocess.run([sys.executable, "-c", DRIVER, f"127.0.0.1:{head.gcs}", placement], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=240)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = json.loads(line[len("RESULT "):])
        assert out["wait_s"] == 900  # the default on a cluster that runs autoscaler v2
        assert out["mode"] == placement and len(out["serving"]) == 1 and out["ran_on"] == out["serving"][0]
        assert "pool 'gpu_x': no node type of this cluster can run an evaluator" in out["refusal"]
        assert out["refused_s"] < 60, out
        deadline = time.monotonic() + 60  # idle 6 s, then the autoscaler's next rounds terminate it
        while alive_pool_nodes(head) and time.monotonic() < deadline:
            time.sleep(2)
        assert alive_pool_nodes(head) == [], "the pool's node stayed up after its work was done"
    finally:
        head.stop()
