"""Super-adapter training on a real local Ray with 2 CPU workers running DeepSpeed ZeRO-2.

Runs go through the ``lonas-ray train`` command in a subprocess (each starts its
own local Ray), so a hung or crashed Ray never takes pytest down with it.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import checkpoints
from lonas_ray.config_io import ConfigError
from lonas_ray.data.toy import write_toy_task
from lonas_ray.space import SearchSpace
from lonas_ray.train.config import TrainConfig
from lonas_ray.train.schedule import batch_indices, rank_micro_batches, subnets_for_step
from lonas_ray.train.state import CorruptCheckpointError, load_trained_supernet
from lonas_ray.train.trainer import train

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16


def make_config(tmp_path: Path, name: str, **changes) -> Path:
    data = write_toy_task(tmp_path / "toy.jsonl", n=128, seed=0)
    cfg = {
        "supernet": {
            # wider random init than the default 0.02, so the frozen random lm_head can express a
            # confident prediction and the toy task is learnable by the adapters alone
            "model": {"kind": "tiny", "family": "llama", "overrides": {"initializer_range": 0.2}},
            "space": {
                "lora": {"r_max": 8, "alpha": 16, "rank_choices": [8, 4]},
                "mlp": {"choices": [1.0, 0.5]},
                "heads": {"choices": [1.0, 0.5]},
            },
            "importance": {"method": "grad", "examples": 4, "max_length": 32},
        },
        "data": {"train": str(data), "format": "instruction", "cutoff_len": 48},
        "output_dir": str(tmp_path / name),
        "sampling": {"strategy": "sandwich", "sandwich_random": 1},
        "optim": {"steps": STEPS, "batch_size": 8, "micro_batch_size": 2, "lr": 0.01, "warmup_steps": 2},
        "deepspeed": {"zero_stage": 2},
        "scaling": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
        "checkpoint": {"every_steps": 4, "num_to_keep": 2, "max_failures": 1},
    }
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_train(config: Path) -> subprocess.Popen:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "lonas_ray.cli", "train", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 420) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"training did not finish in {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def rank_records(out_dir: Path, rank: int) -> list[dict]:
    lines = (out_dir / "ranks" / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def last_per_step(records: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in records}  # a step redone after a restart keeps its last record


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    config = make_config(tmp, "run")
    log = finish(start_train(config))
    (tmp / "run" / "driver.log").write_text(log)
    return tmp / "run", config


def test_training_lowers_the_loss_and_the_super_adapter_reloads(uninterrupted):
    out, config = uninterrupted
    steps = last_per_step(rank_records(out, 0))
    assert sorted(steps) == list(range(STEPS))
    first = sum(steps[s]["loss"] for s in range(3)) / 3
    last = sum(steps[s]["loss"] for s in range(STEPS - 3, STEPS)) / 3
    assert last < 0.8 * first, (first, last)
    supernet_dir = out / "supernet"
    state = json.loads((supernet_dir / "train_state.json").read_text())
    assert state == {"step": STEPS, "world_size": 2, "seed": 0}
    supernet, _ = load_trained_supernet(supernet_dir)
    assert any(bool(p.abs().sum() > 0) for n, p in supernet.adapter_state_dict().items() if n.endswith("lora_B"))
    probe = load_file(str(supernet_dir / "probe.safetensors"))
    supernet.eval()
    with torch.no_grad():
        logits = supernet(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


def test_the_driver_log_closes_the_training_bar_and_has_no_library_noise(uninterrupted):
    out, _ = uninterrupted
    log = (out / "driver.log").read_text()
    training, _, after = log.partition("trained super-network")
    assert re.search(r"super-adapter training \(loss [\d.]+\): 100%", training), training[-2000:]
    # a bar the driver never saw closed is redrawn under every later line and again at exit
    assert "super-adapter training" not in after, after[-2000:]
    assert "LOAD_GLOBAL" not in log  # dill's bytecode dump from datasets' fingerprinting


def test_all_ranks_train_the_same_subnetworks_on_each_step(uninterrupted):
    out, config = uninterrupted
    cfg = TrainConfig.from_yaml(config)
    space = SearchSpace.load(out / "supernet" / "space.json")
    r0, r1 = last_per_step(rank_records(out, 0)), last_per_step(rank_records(out, 1))
    for step in range(STEPS):
        expected = [SearchSpace.subnet_id(s) for s in subnets_for_step(space, "sandwich", cfg.seed, step, 1)]
        assert r0[step]["subnets"] == r1[step]["subnets"] == expected
        assert expected[0] == SearchSpace.subnet_id(space.maximal())
        assert expected[1] == SearchSpace.subnet_id(space.minimal())
        # the two ranks see disjoint halves of the step's global batch
        indices = batch_indices(128, step, cfg.optim.batch_size, cfg.seed)
        assert r0[step]["indices"] == rank_micro_batches(indices, 0, 2, 2)
        assert r1[step]["indices"] == rank_micro_batches(indices, 1, 2, 2)


def kill_rank1_past_a_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL rank 1's worker once Ray Train has recorded a checkpoint (step 4 or 8) and training went past it."""
    deadline = time.time() + 300
    rank1_log = out / "ranks" / "rank1.jsonl"
    while time.time() < deadline:
        saved = checkpoints(out)
        if saved and rank1_log.is_file() and any(json.loads(x)["step"] >= int(saved[-1].split("_")[1])
                                                 for x in rank1_log.read_text().splitlines()):
            break
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("training never went past a checkpoint Ray Train recorded")
    os.kill(int((out / "ranks" / "rank1.pid").read_text()), signal.SIGKILL)


def assert_resumed_as_uninterrupted(out: Path, reference: Path) -> None:
    """One restart, from a checkpoint; then the uninterrupted run's schedule and, state restored exactly, losses."""
    records = rank_records(out, 0)
    restarts = sorted({r["restart_from"] for r in records})
    assert restarts[0] == 0 and len(restarts) == 2 and restarts[1] in (4, 8), restarts
    resumed = last_per_step(records)
    assert sorted(resumed) == list(range(STEPS))
    assert json.loads((out / "supernet" / "train_state.json").read_text())["step"] == STEPS
    ref = last_per_step(rank_records(reference, 0))
    for step in range(STEPS):
        assert resumed[step]["subnets"] == ref[step]["subnets"]
        assert resumed[step]["indices"] == ref[step]["indices"]
    same_losses(out, reference, STEPS)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sampling": {"strategy": "greedy"}}, "sampling.strategy 'greedy' is unknown"),
        ({"optim": {"batch_size": 6}}, "optim.batch_size (6) is not divisible"),
        ({"data": {"train": "/nonexistent/train.jsonl"}}, "/nonexistent/train.jsonl"),
        ({"data": {"answer_field": "response"}}, "response"),
        ({"deepspeed": {"zero_stage": 5}}, "deepspeed.zero_stage must be 0-3"),
    ],
)
def test_bad_configs_fail_before_any_worker_starts(tmp_path, changes, message):
    import ray

    config = make_config(tmp_path, "bad", **changes)
    with pytest.raises(ConfigError) as err:
        train(TrainConfig.from_yaml(config))
    assert message in str(err.value)
    assert not ray.is_initialized()
    assert not (tmp_path / "bad" / "ranks").exists()


def test_a_corrupt_or_incomplete_super_network_is_a_clear_error(uninterrupted, tmp_path):
    import shutil

    out, _ = uninterrupted
    broken = tmp_path / "supernet"
    shutil.copytree(out / "supernet", broken)
    data = (broken / "adapter.safetensors").read_bytes()
    (broken / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="cannot read adapter weights"):
        load_trained_supernet(broken)
    (broken / "space.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing \\['space.json'\\]"):
        load_trained_supernet(broken)
    # the original is untouched and still loads
    load_trained_supernet(out / "supernet")


def test_shipped_training_configs_are_valid():
    from lonas_ray.data.spec import check_data

    for name in ("train_tiny.yaml", "train_smollm2.yaml"):
        cfg = TrainConfig.from_yaml(ROOT / "jobs" / "configs" / name)
        check_data(cfg.data)
        assert cfg.scaling.num_workers == 2


def same_losses(out: Path, reference: Path, steps: int) -> None:
    """The first ``steps`` per-step losses equal the reference run's (ZeRO-2; the learning rate is the same on the
    steps compared: warm-up, then a decay that first differs between run lengths at step 3's update)."""
    got, ref = last_per_step(rank_records(out, 0)), last_per_step(rank_records(reference, 0))
    assert sorted(got) == list(range(steps))
    for step in range(steps):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4), step


def test_workers_spread_over_two_nodes_of_a_cluster(uninterrupted, tmp_path, monkeypatch):
    """Two single-CPU nodes of a real ``ray.cluster_utils.Cluster``: one rank on each, one schedule; under ZeRO-1
    (optimizer states sharded across the nodes) with ZeRO-2's losses."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every node on 127.0.0.1
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 200 * 2**20, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
        # an epoch budget: 0.125 x 128 toy examples / batch 8 = 2 steps, whatever optim.steps says
        config = make_config(tmp_path, "nodes", optim={"steps": 50, "epochs": 0.125}, checkpoint={"every_steps": 2},
                             deepspeed={"zero_stage": 1})
        result = train(TrainConfig.from_yaml(config), address=cluster.address)
        assert result.steps == 2
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    finally:
        ray.shutdown()
        cluster.shutdown()
    out = tmp_path / "nodes"
    r0, r1 = rank_records(out, 0), rank_records(out, 1)
    node0, node1 = {r["node"] for r in r0}, {r["node"] for r in r1}
    assert len(node0) == len(node1) == 1 and node0 != node1 and (node0 | node1) == nodes
    assert [r["subnets"] for r in r0] == [r["subnets"] for r in r1]
    same_losses(out, uninterrupted[0], 2)


def test_zero3_resumes_a_killed_worker_to_the_same_losses_and_saves_the_adapters_whole(uninterrupted, tmp_path):
    """ZeRO-3 shards the adapters too: a worker killed past a checkpoint resumes from the sharded checkpoint to the
    per-step losses of the uninterrupted ZeRO-2 run, and the saved adapters are complete."""
    reference, _ = uninterrupted
    proc = start_train(make_config(tmp_path, "zero3", deepspeed={"zero_stage": 3}))
    kill_rank1_past_a_checkpoint(proc, tmp_path / "zero3")
    finish(proc)
    out = tmp_path / "zero3"
    assert_resumed_as_uninterrupted(out, reference)
    supernet, _ = load_trained_supernet(out / "supernet")
    probe = load_file(str(out / "supernet" / "probe.safetensors"))
    supernet.eval()
    with torch.no_grad():
        logits = supernet(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


def test_training_metrics_reach_the_node_metrics_endpoint(uninterrupted, tmp_path):
    """The ray_lonas_train_* gauges are exported on the node's Prometheus port (what the dashboard charts); the run
    is without ZeRO sharding (stage 0), with ZeRO-2's losses."""
    import socket
    import urllib.request

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=port,
             object_store_memory=200 * 2**20)
    try:
        config = make_config(tmp_path, "metrics", optim={"steps": 4}, checkpoint={"every_steps": 4},
                             deepspeed={"zero_stage": 0})
        train(TrainConfig.from_yaml(config))
        found: dict[str, float] = {}
        deadline = time.time() + 60
        while time.time() < deadline and len(found) < 4:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            for line in body.splitlines():
                if line.startswith("ray_lonas_train_") and 'run="metrics"' in line:
                    found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
            time.sleep(1)
    finally:
        ray.shutdown()
    assert set(found) == {"ray_lonas_train_loss", "ray_lonas_train_tokens_per_s",
                          "ray_lonas_train_subnet_params", "ray_lonas_train_step"}
    assert found["ray_lonas_train_step"] == 4
    assert found["ray_lonas_train_loss"] > 0 and found["ray_lonas_train_tokens_per_s"] > 0
    same_losses(tmp_path / "metrics", uninterrupted[0], 4)
