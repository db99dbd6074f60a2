"""jobs/bench_scale.py on a tiny shape: every sub-network extracted and timed, the ideal figures consistent."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import ROOT

SUBNETS = ("full", "mlp_0.75", "mlp_0.5", "heads_0.75", "heads_0.5", "depth_-1/8", "depth_-1/4",
           "mlp_0.75+heads_0.75+depth_-1/8", "mlp_0.5+heads_0.5+depth_-1/4")


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    cmd = [sys.executable, "jobs/bench_scale.py", "--shapes", "tiny", "--device", "cpu", "--batches", "1,2",
           "--prompt-len", "8", "--new-tokens", "3", "--warmup", "0", "--repeats", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_subnetwork_is_timed_at_every_batch(result):
    rows = result["rows"]
    assert sorted((r["subnet"], r["batch"]) for r in rows) == sorted((s, b) for s in SUBNETS for b in (1, 2))
    for r in rows:
        assert r["runtime"] == "static" and r["repeats"] == 2
        for key in ("prefill_ms", "decode_ms", "latency_ms", "floor_decode_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["subnet"], key)
        assert r["decode_p90_ms"] >= r["decode_ms"] and r["prefill_p90_ms"] >= r["prefill_ms"]
    assert result["bandwidth"]["gb_per_s_median"] > 0
    assert "random" in result["weights"]


def test_sizes_and_ideal_ratios_follow_the_slicing(result):
    by = {(r["subnet"], r["batch"]): r for r in result["rows"]}
    full = by[("full", 1)]
    assert full["params_ratio"] == 1.0 and full["read_ratio"] == 1.0 and full["decode_speedup"] == 1.0
    # tiny: hidden 64, MLP 256, 4 heads of 16, 4 layers, vocabulary 256, untied head; block 3 is skippable
    block_mlp = 3 * 64 * 256
    assert full["params"] - by[("mlp_0.5", 1)]["params"] == 4 * block_mlp // 2
    assert full["params"] - by[("heads_0.5", 1)]["params"] == 4 * (4 * 64 * 32)  # q, k, v, o lose 2 heads of 16
    assert by[("depth_-1/4", 1)]["layers"] == 3 and full["layers"] == 4
    assert by[("mlp_0.75", 1)]["params"] > by[("mlp_0.5", 1)]["params"]
    for name in SUBNETS[1:]:
        for batch in (1, 2):
            r = by[(name, batch)]
            if name == "depth_-1/8":  # one skippable block: an eighth of it drops none
                assert r["params_ratio"] == 1.0
                continue
            assert r["params_ratio"] > 1 and r["read_ratio"] > 1, name
            # the floor is the bytes a decode step reads over the measured bandwidth
            assert r["floor_decode_ms"] == pytest.approx(
                r["decode_read_bytes"] / (result["bandwidth"]["gb_per_s_median"] * 1e9) * 1e3)
            assert r["decode_speedup"] == pytest.approx(by[("full", batch)]["decode_ms"] / r["decode_ms"])


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("formats") / "formats.json"
    cmd = [sys.executable, "jobs/bench_scale.py", "--shapes", "tiny", "--device", "cpu", "--batches", "1",
           "--prompt-len", "8", "--new-tokens", "3", "--warmup", "0", "--repeats", "2", "--group-size", "32",
           "--formats", "bf16,int4_hf,int4_tinygemm,sparse24", "--subnets", "full,mlp_0.5", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_int4_export_is_timed_as_transformers_loads_it_against_bf16(formats):
    by = {(r["format"], r["subnet"]): r for r in formats["rows"]}
    for subnet in ("full", "mlp_0.5"):
        dense, int4 = by[("bf16", subnet)], by[("int4_hf", subnet)]
        assert int4["params"] == dense["params"] and int4["decode_ms"] > 0
        facts = int4["conversion"]
        assert facts["format"] == "compressed-tensors pack-quantized" and facts["group_size"] == 32
        # on disk the block linears are 4-bit: well under the fp32 model's bytes (embeddings and head stay dense)
        assert facts["safetensors_bytes"] < 0.75 * 4 * dense["params"]
        assert facts["runs_as"] == "torch.float32"  # transformers unpacks it to the dense dtype
        assert int4["decode_speedup_vs_bf16_full"] == pytest.approx(
            by[("bf16", "full")]["decode_ms"] / int4["decode_ms"])


def test_a_kernel_this_device_lacks_is_an_error_row_and_the_other_formats_still_run(formats):
    # PyTorch's INT4 and 2:4 kernels are CUDA-only: on CPU each of their rows names the failure
    errors = {(r["format"], r["subnet"]): r["error"] for r in formats["rows"] if "error" in r}
    assert set(errors) == {(f, s) for f in ("int4_tinygemm", "sparse24") for s in ("full", "mlp_0.5")}
    assert all("CUDA" in e or "CPU" in e for e in errors.values()), errors
    assert {r["format"] for r in formats["rows"] if "decode_ms" in r} == {"bf16", "int4_hf"}


def test_an_unknown_format_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x.json"
    proc = subprocess.run([sys.executable, "jobs/bench_scale.py", "--shapes", "tiny", "--device", "cpu",
                           "--formats", "fp8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unknown format 'fp8'" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
