"""jobs/bench_core.py --quick runs and writes every figure, each a sane measurement (no speed is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import ROOT

SUBNETS = ("heuristic", "between", "minimal")
VARIANTS = ("base", "supernet.maximal", *(f"{kind}.{n}" for n in SUBNETS for kind in ("supernet", "extracted")))
MACHINE = ("platform", "cpu_model", "logical_cores", "torch", "transformers", "peft", "torch_threads")


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "jobs/bench_core.py", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedup" in proc.stderr  # the human-readable table went to the log
    return json.loads(out.read_text())


def check_stats(stats: dict, where: str, repeats: int | None = None) -> None:
    for key in ("median", "p90", "min", "max", "mean"):
        assert math.isfinite(stats[key]) and stats[key] > 0, f"{where}.{key} = {stats[key]}"
    assert stats["min"] <= stats["median"] <= stats["max"], where
    assert stats["min"] <= stats["p90"] <= stats["max"], where
    assert stats["repeats"] >= 1 and (repeats is None or stats["repeats"] == repeats), where


def test_machine_and_load_are_recorded(result):
    for key in MACHINE:
        assert result["machine"][key], key
    assert result["mode"] == "quick"
    assert all(len(v) == 3 for v in result["load_average"].values())
    assert result["section_seconds"]["total"] > 0
    assert result["other_load"]["other_processes_cpu_s"] >= 0


def test_switch_figures(result):
    sw = result["switch"]
    settings = result["settings"]
    check_stats(sw["switch_us"], "switch_us", settings["switches"])
    check_stats(sw["validate_us"], "validate_us", settings["switches"])
    assert sw["model"]["device"] == "meta" and sw["model"]["num_layers"] == 32
    assert sw["dimensions"] == sum(sw["dimensions_by_kind"].values()) > 0
    assert sw["dimensions_by_kind"]["keep"] == sw["skippable_blocks"] == 8
    assert sw["elastic_linears"] == 32 * 7


def test_extraction_and_latency_figures(result):
    sub = result["subnets"]
    settings = result["settings"]
    for name in ("maximal", *SUBNETS):
        check_stats(sub["extract_s"][name], f"extract_s.{name}", settings["extract_repeats"])
        assert sub["extract_max_rel_err"][name] < 1e-4, name  # the extracted model computes the same logits
    assert set(sub["variants"]) == set(VARIANTS)
    for name, row in sub["variants"].items():
        check_stats(row["latency_ms"], name, settings["forward_repeats"])
        for key in ("params", "macs_per_token", "speedup_vs_base", "params_vs_base", "macs_vs_base"):
            assert math.isfinite(row[key]) and row[key] > 0, f"{name}.{key}"
    rows = sub["variants"]
    assert rows["extracted.minimal"]["params"] < rows["base"]["params"]
    assert rows["extracted.minimal"]["macs_per_token"] < rows["base"]["macs_per_token"]
    for name in SUBNETS:  # counted before extraction == measured on the extracted model
        assert rows[f"supernet.{name}"]["params"] == rows[f"extracted.{name}"]["params"], name


def test_overhead_figures(result):
    ov = result["overhead"]
    settings = result["settings"]
    assert ov["logits_max_rel_err_elastic_vs_peft"] < 1e-5  # both sides compute the same function
    assert ov["trainable_params"]["elastic"] == ov["trainable_params"]["peft"] > 0
    for part, names, repeats in (("inference", ("elastic", "peft", "base"), settings["forward_repeats"]),
                                 ("train_step", ("elastic", "peft"), settings["train_repeats"])):
        for name in names:
            check_stats(ov[part][f"{name}_ms"], f"{part}.{name}", repeats)
        for key in ("overhead_pct", "paired_overhead_pct"):  # may be negative: only sanity, never speed
            assert math.isfinite(ov[part][key]) and ov[part][key] > -100, f"{part}.{key}"
