"""jobs/bench_dims.py: ladders that cut one dimension each, scored sliced and recovered, with their trade-off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT
from lonas_ray.shape import ModelShape
from lonas_ray.space import SearchSpace, SpaceSpec

sys.path.insert(0, str(ROOT / "jobs"))
from bench_dims import dimension_ladders, trade_off  # noqa: E402

pytestmark = pytest.mark.timeout(600)

SPACE = {"lora": {"target_modules": ["q_proj", "v_proj", "up_proj"], "r_max": 8, "alpha": 16, "rank_choices": [8, 4]},
         "mlp": {"choices": [1.0, 0.5]}, "heads": {"choices": [1.0, 0.5]}}


def test_each_ladder_cuts_only_its_own_dimension_and_depth_skips_the_least_influential_blocks_first():
    shape = ModelShape(family="llama", num_layers=6, hidden_size=64, intermediate_size=128, num_heads=4,
                       num_kv_heads=2, head_dim=16, vocab_size=100, tie_word_embeddings=False)
    spec = {**SPACE, "mlp": {"choices": [1.0, 0.75, 0.5]}, "depth": {"skippable": [1, 3, 4]}}
    space = SearchSpace.resolve(SpaceSpec.from_dict(spec), shape)
    maximal = space.maximal()
    order = [4, 0, 5, 1, 2, 3]  # least influential first: 4, then 1, then 3 among the skippable ones
    ladders = dimension_ladders(space, order, [1, 2, 3, 5])
    assert [label for label, _ in ladders["depth"]] == ["skip 1", "skip 2", "skip 3"]  # 5 > skippable: left out
    skipped = [sorted(int(k.split(".")[1]) for k, v in cfg.items() if k.startswith("keep.") and not v)
               for _, cfg in ladders["depth"]]
    assert skipped == [[4], [1, 4], [1, 3, 4]]
    assert [label for label, _ in ladders["mlp"]] == ["0.75x", "0.50x"]
    assert [label for label, _ in ladders["heads"]] == ["0.50x"]
    kinds = {"depth": "keep", "mlp": "mlp", "heads": "heads"}
    for dim, rungs in ladders.items():
        for _, cfg in rungs:
            space.validate(cfg)
            changed = {space.dims[k].kind for k in cfg if cfg[k] != maximal[k]}
            assert changed == {kinds[dim]}
    # a width rung cuts every elastic layer to the same level
    assert {v for k, v in ladders["mlp"][1][1].items() if k.startswith("mlp.")} == {64}
    assert {v for k, v in ladders["heads"][0][1].items() if k.startswith("heads.")} == {2}


def test_trade_off_is_points_lost_per_tenth_of_latency_saved():
    maximal = {"quality": 0.80, "latency_ms": 100.0}
    t = trade_off({"quality": 0.74, "latency_ms": 80.0}, maximal, "quality")
    assert t["latency_saved"] == pytest.approx(0.2) and t["points_lost"] == pytest.approx(6.0)
    assert t["points_per_10pct"] == pytest.approx(3.0)
    assert trade_off({"quality": 0.8, "latency_ms": 101.0}, maximal, "quality")["points_per_10pct"] is None


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("dims")
    space = d / "space.yaml"
    space.write_text(yaml.safe_dump({"supernet": {"space": {**SPACE, "depth": {"auto": 2}},
                                                  "importance": {"method": "grad", "examples": 4, "max_length": 32}}}))
    out = d / "d.json"
    cmd = [sys.executable, "jobs/bench_dims.py", "--quick", "--tasks", "intent_recognition", "--space-config",
           str(space), "--depth-levels", "1,2", "--latency-repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_job_scores_every_rung_sliced_and_recovered_against_the_maximal(result):
    (task,) = result["tasks"]
    rows = {r["model"]: r for r in task["rows"]}
    assert list(rows)[:2] == ["peft_lora", "maximal"]
    assert {"depth:skip 1", "depth:skip 2", "mlp:0.50x", "heads:0.50x"} <= set(rows)
    maximal = rows["maximal"]
    for name, row in rows.items():
        if ":" not in name:
            continue
        assert row["params"] < maximal["params"]
        assert row["examples"] == maximal["examples"] == task["report_examples"]
        assert row["sliced"] == trade_off(row, maximal, "quality")
        assert row["recovered"] == trade_off(row, maximal, "recovered_quality")
        lo, hi = row["recovered_ci95"]
        assert 0.0 <= lo <= row["recovered_quality"] <= hi <= 1.0
        assert row["recover_s"] > 0
    assert rows["depth:skip 2"]["params"] < rows["depth:skip 1"]["params"]
    assert sorted(task["supernet"]["block_order"]) == [0, 1, 2, 3]
