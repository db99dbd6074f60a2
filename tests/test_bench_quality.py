"""jobs/bench_quality.py --quick: every row scored, prune-then-LoRA in exactly the pick's shape, honest splits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quality") / "q.json"
    cmd = [sys.executable, "jobs/bench_quality.py", "--quick", "--tasks", "intent_recognition",
           "--parts", "zero_shot,peft_lora,supernet,recover,prune_lora,minitron", "--space-config", "jobs/configs/tiny.yaml",
           "--targets", "0.95,0.9", "--band", "0.1", "--latency-repeats", "1", "--teacher", "peft_lora",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_row_has_accuracy_with_its_interval_on_the_report_examples(result):
    (task,) = result["tasks"]
    assert task["select_examples"] + task["report_examples"] == task["test_examples"] == 140
    assert task["select_examples"] == 35
    names = [r["model"] for r in task["rows"]]
    assert names[:2] == ["zero_shot", "peft_lora"]
    assert {"supernet:maximal", "supernet:heuristic"} <= set(names)
    assert any(n.startswith("prune_lora:") for n in names)
    for r in task["rows"]:
        assert r["examples"] == task["report_examples"] and r["metric"] == "mc_accuracy"
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["quality"] <= hi <= 1.0
        assert r["hits"] == round(r["quality"] * r["examples"])
        assert r["latency_ms"] > 0 and r["speedup_vs_peft_lora"] > 0


def test_each_recovery_fine_tune_keeps_its_picks_shape_and_trains_the_steps_asked(result):
    (task,) = result["tasks"]
    rows = {r["model"]: r for r in task["rows"]}
    recovered = [name for name in rows if name.startswith("recover:")]
    assert recovered and "recover:maximal" not in rows
    assert len(recovered) == len(task["supernet"]["picks"]) - 1
    for name in recovered:
        pick = rows[f"supernet:{name.split(':', 1)[1]}"]
        assert rows[name]["subnet_id"] == pick["subnet_id"] and rows[name]["params"] == pick["params"]
        assert rows[name]["steps"] == result["settings"]["recover_steps"] == 2


@pytest.mark.parametrize("part", ["prune_lora", "minitron"])
def test_the_prune_first_baselines_have_exactly_the_shape_of_their_pick_and_lonas_rays_cost(result, part):
    (task,) = result["tasks"]
    rows = {r["model"]: r for r in task["rows"]}
    picks, sn = task["supernet"]["picks"], task["supernet"]
    pruned = [name for name in rows if name.startswith(f"{part}:")]
    assert pruned and f"{part}:maximal" not in rows  # the maximal's shape is the base: that is peft_lora
    assert len(pruned) == len(picks) - 1
    # lonas-ray's whole cost: the super-adapter's passes and every recovery's steps; --budget-share 1 gives all of it
    assert sn["total_passes"] == sn["passes"] + result["settings"]["recover_steps"] * (len(picks) - 1)
    assert sn["baseline_steps"] == sn["total_passes"] and sn["budget_share"] == 1.0
    for name in pruned:
        pick = name.split(":", 1)[1]
        assert rows[name]["subnet_id"] == rows[f"supernet:{pick}"]["subnet_id"] == picks[pick]["subnet_id"]
        assert rows[name]["params"] == rows[f"supernet:{pick}"]["params"]  # merged LoRA adds nothing
        assert rows[name]["steps"] == sn["baseline_steps"]
    assert rows["supernet:maximal"]["params"] == rows["peft_lora"]["params"] == rows["zero_shot"]["params"]
    for name, pick in picks.items():
        if name.startswith("pick_"):
            target = float(name.removeprefix("pick_"))
            assert target - 0.1 <= pick["params_ratio"] <= target  # the budget the pick was searched within


def test_the_plain_lora_model_teaches_with_one_forward_per_training_step(result):
    (task,) = result["tasks"]
    steps = result["settings"]["steps"]
    assert task["supernet"]["teacher"] == "peft_lora" and task["supernet"]["distill"] > 0
    # one batch per step and three sub-networks per sandwich step, yet one teacher forward per step
    assert task["teacher"]["forwards_in_training"] == steps
    # the Minitron-style rows learn from the teacher: their models differ from prune-then-LoRA's of the same shape
    rows = {r["model"]: r for r in task["rows"]}
    assert any(rows[n]["task_loss"] != rows[n.replace("minitron", "prune_lora")]["task_loss"]
               for n in rows if n.startswith("minitron:"))
    assert task["supernet"]["passes"] == 3 * steps
