"""The README's commands: the export job on the tiny config, the space command, and config errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import lonas_cli_batch

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def lonas(*args, cwd=ROOT, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lonas_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_export_tiny_config_writes_verified_models(tmp_path):
    out = tmp_path / "out"
    proc = lonas("export", "--config", "jobs/configs/tiny_core.yaml", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    labels = [r["label"] for r in summary["subnets"]]
    assert labels[:3] == ["maximal", "heuristic", "minimal"]
    params = {r["label"]: r["params"] for r in summary["subnets"]}
    assert params["minimal"] < params["heuristic"] < params["maximal"]
    for row in summary["subnets"]:
        model_dir = Path(row["path"])
        assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
        assert (model_dir / "peft" / "adapter" / "adapter_config.json").is_file()
        assert json.loads((model_dir / "lonas_subnet.json").read_text())["subnet_id"] == row["subnet_id"]
        assert row["max_rel_err"] < 1e-4
    assert (out / "space.json").is_file()
    assert "max rel err" in proc.stdout


def test_space_command_describes_the_space():
    proc = lonas("space", "--config", "jobs/configs/tiny_core.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    assert info["dimensions"] == {"rank": 12, "heads": 4, "mlp": 4, "keep": 1}
    assert info["size"] == 3**12 * 2**4 * 3**4 * 2


BAD_CONFIGS = [
    (lambda c: c["supernet"]["space"]["lora"].update(target_modules=["qq_proj"]), "unknown module pattern 'qq_proj'"),
    (lambda c: c["supernet"]["space"]["mlp"].update(choices=[1.0, 999]), "larger than the layer"),
    (lambda c: c["supernet"]["space"]["heads"].update(choices=[3]), "breaks GQA"),
    (lambda c: c["supernet"].update(modle={}), "did you mean 'model'"),
    (lambda c: c.update(subnets=["median"]), "subnets entry 'median'"),
    (lambda c: c["supernet"]["importance"].update(method="magic"), "importance.method 'magic'"),
    (lambda c: c["supernet"].update(sparsity={"method": "wanda", "level": 1.0}), "sparsity.level must be in [0, 1)"),
    (lambda c: c["supernet"].update(sparsity={"method": "wanda", "pattern": "4:2"}), "with 0 < N < M"),
    (lambda c: c["supernet"].update(quantization={"enabled": True, "group_size": 48}),
     "quantization.group_size 48 does not divide the input width(s)"),
    (lambda c: c["supernet"].update(quantization={"qa": True}), "quantization.qa needs a quantized base"),
]


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory):
    """`lonas-ray export` of every BAD_CONFIGS case (in one interpreter: ``helpers.lonas_cli_batch``)."""
    tmp, argvs = tmp_path_factory.mktemp("bad-configs"), []
    for i, (mutate, _) in enumerate(BAD_CONFIGS):
        config = yaml.safe_load((ROOT / "jobs/configs/tiny_core.yaml").read_text())
        mutate(config)
        (tmp / f"bad{i}.yaml").write_text(yaml.safe_dump(config))
        argvs.append(["export", "--config", str(tmp / f"bad{i}.yaml"), "--output", str(tmp / f"out{i}")])
    return tmp, lonas_cli_batch(argvs)


@pytest.mark.parametrize("case", range(len(BAD_CONFIGS)), ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs_fail_with_a_clear_message_and_write_nothing(bad_config_runs, case):
    tmp, runs = bad_config_runs
    run, message = runs[case], BAD_CONFIGS[case][1]
    assert run["returncode"] == 2, run["stderr"][-2000:]
    assert message in run["stderr"]
    assert "Traceback" not in run["stderr"]
    assert not (tmp / f"out{case}" / "models").exists()


def test_missing_config_file_is_a_clear_error(tmp_path):
    proc = lonas("export", "--config", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_quickstart_on_smollm2(tmp_path):
    """The README's run command (SmolLM2-135M, EFTNAS-generated space) exports verified models."""
    out = tmp_path / "qs"
    proc = lonas("export", "--config", "jobs/configs/quickstart_core.yaml", "--output", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["label"]: r for r in summary["subnets"]}
    assert rows["maximal"]["params"] == 134_515_008  # SmolLM2-135M, tied embeddings
    assert rows["minimal"]["params"] < 0.8 * rows["maximal"]["params"]
    assert all(r["max_rel_err"] < 1e-4 for r in rows.values())
    assert (Path(rows["heuristic"]["path"]) / "tokenizer.json").is_file()
    # formats: [hf, gguf]: llama.cpp's file beside each export, per-layer shapes as deci, SmolLM2's pre-tokenizer
    import gguf

    for row in rows.values():
        manifest = json.loads((Path(row["path"]) / "lonas_subnet.json").read_text())
        assert manifest["gguf"]["file"] == "model.gguf" and manifest["gguf"]["pre"] == "smollm"
        reader = gguf.GGUFReader(Path(row["path"]) / "model.gguf")
        arch = reader.get_field("general.architecture").contents()
        assert arch == ("llama" if row["architecture"] == "LlamaForCausalLM" else "deci"), row
    assert rows["minimal"]["architecture"] == "LonasLlamaForCausalLM"  # EFTNAS widths differ per layer


def test_the_configuration_reference_is_rendered_from_the_configs_and_current():
    """`lonas-ray config-reference` prints every key of the pipeline config with its help text, and the
    committed docs/configuration.md is exactly that output."""
    from lonas_ray.config_docs import render, rows
    from lonas_ray.pipeline.config import PipelineConfig

    proc = lonas("config-reference")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == render() == (ROOT / "docs" / "configuration.md").read_text(), \
        "docs/configuration.md is stale: run `lonas-ray config-reference > docs/configuration.md`"
    keys = {key: help_text for key, _, _, help_text in rows(PipelineConfig)}
    assert all(h.strip() for h in keys.values()), [k for k, h in keys.items() if not h.strip()]  # help everywhere
    for key in ("search.budget", "pools.<name>.latency.repeats", "export.recover_steps", "supernet.model.kind"):
        assert keys.get(key), key  # present, with its help


@pytest.mark.timeout(120)
def test_a_ray_without_the_dashboards_packages_runs_without_the_dashboard():
    """The GPU image's Ray is a minimal one (no aiohttp): asking for the dashboard there must not stop the run."""
    script = """
import sys
sys.modules["aiohttp"] = None  # as in a minimal Ray: the dashboard's packages do not import
import ray
from lonas_ray.ray_env import ensure_ray
assert ensure_ray(num_cpus=1, dashboard=True, object_store_memory=100 * 2**20)
try:
    print("task", ray.get(ray.remote(lambda: 41 + 1).remote()))
finally:
    ray.shutdown()
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task 42" in proc.stdout
    assert "no Ray dashboard: this Ray lacks ray[default]'s dashboard packages" in proc.stdout
    assert "Ray dashboard: http" not in proc.stdout
