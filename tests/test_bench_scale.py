"""jobs/bench_scale.py on a tiny shape: every sub-network extracted and timed, the ideal figures consistent."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT

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
