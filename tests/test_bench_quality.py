"""jobs/bench_quality.py --quick: every row scored, prune-then-LoRA in exactly the pick's shape, honest splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture(scope="module")
def result_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "q.json"
    cmd = [sys.executable, "jobs/bench_quality.py", "--quick", "--tasks", "intent_recognition",
           "--parts", "zero_shot,peft_lora,supernet,recover,prune_lora,minitron",
           "--space-config", "jobs/configs/tiny.yaml",
           "--targets", "1.3,1.1", "--band", "0.8", "--target-by", "latency", "--budget-share", "0.5,1",
           "--latency-repeats", "1", "--teacher", "peft_lora", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def result(result_file) -> dict:
    return json.loads(result_file.read_text())


def test_picks_from_an_earlier_run_train_only_the_baselines_at_a_new_share_of_its_cost(result_file, result, tmp_path):
    out = tmp_path / "later.json"
    cmd = [sys.executable, "jobs/bench_quality.py", "--quick", "--tasks", "intent_recognition", "--parts",
           "prune_lora", "--space-config", "jobs/configs/tiny.yaml", "--picks-from", str(result_file),
           "--budget-share", "0.25", "--latency-repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (earlier,), (later,) = result["tasks"], json.loads(out.read_text())["tasks"]
    sn = later["supernet"]
    assert sn["picks"] == earlier["supernet"]["picks"] and sn["total_passes"] == earlier["supernet"]["total_passes"]
    assert sn["picks_from"] == str(result_file)
    assert sn["budgets"] == [{"share": 0.25, "steps": round(0.25 * sn["total_passes"])}]
    rows = {r["model"]: r for r in later["rows"]}
    assert set(rows) == {f"prune_lora:{n}" for n in sn["picks"] if n != "maximal"}  # no super-adapter rows
    for name, row in rows.items():
        assert row["subnet_id"] == sn["picks"][name.split(":", 1)[1]]["subnet_id"]
        assert row["steps"] == sn["budgets"][0]["steps"]


def test_picks_from_a_run_of_another_space_stop_before_training_with_the_fix(result_file, tmp_path):
    space = tmp_path / "other.yaml"
    space.write_text(Path(ROOT / "jobs/configs/tiny.yaml").read_text().replace("choices: [1.0, 0.75, 0.5]",
                                                                               "choices: [1.0, 0.25]"))
    out = tmp_path / "later.json"
    cmd = [sys.executable, "jobs/bench_quality.py", "--quick", "--tasks", "intent_recognition", "--parts",
           "peft_lora,prune_lora", "--space-config", str(space), "--picks-from", str(result_file), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not out.exists()
    assert "is not in this run's space" in proc.stderr and "same --space-config" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_row_has_accuracy_with_its_interval_on_the_report_examples(result):
    (task,) = result["tasks"]
    assert task["select_examples"] + task["report_examples"] == task["test_examples"] == 140
    assert task["select_examples"] == 35
    names = [r["model"] for r in task["rows"]]
    assert names[:2] == ["zero_shot", "peft_lora"]
    assert {"supernet:maximal", "supernet:heuristic"} <= set(names)
    # the tiny model's latency barely depends on its widths: targets above 1 keep every band populated whatever the
    # timing noise, so both picks exist; the bands themselves are checked below
    assert {"supernet:pick_1.30", "supernet:pick_1.10"} <= set(names)
    assert any(n.startswith("prune_lora@0.5:") for n in names) and any(n.startswith("prune_lora@1:") for n in names)
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
def test_the_prune_first_baselines_have_exactly_the_shape_of_their_pick_at_each_share_of_lonas_rays_cost(result, part):
    (task,) = result["tasks"]
    rows = {r["model"]: r for r in task["rows"]}
    picks, sn = task["supernet"]["picks"], task["supernet"]
    # lonas-ray's whole cost: the super-adapter's passes and every recovery's steps
    assert sn["total_passes"] == sn["passes"] + result["settings"]["recover_steps"] * (len(picks) - 1)
    assert [b["share"] for b in sn["budgets"]] == [0.5, 1.0]
    assert [b["steps"] for b in sn["budgets"]] == [round(0.5 * sn["total_passes"]), sn["total_passes"]]
    for budget in sn["budgets"]:
        label = f"{part}@{budget['share']:g}"
        pruned = [name for name in rows if name.startswith(f"{label}:")]
        assert f"{label}:maximal" not in rows  # the maximal's shape is the base: that is peft_lora
        assert len(pruned) == len(picks) - 1
        for name in pruned:
            pick = name.split(":", 1)[1]
            assert rows[name]["subnet_id"] == rows[f"supernet:{pick}"]["subnet_id"] == picks[pick]["subnet_id"]
            assert rows[name]["params"] == rows[f"supernet:{pick}"]["params"]  # merged LoRA adds nothing
            assert rows[name]["steps"] == budget["steps"] and rows[name]["budget_share"] == budget["share"]
    assert rows["supernet:maximal"]["params"] == rows["peft_lora"]["params"] == rows["zero_shot"]["params"]


def test_latency_targets_pick_within_their_band_of_the_maximals_measured_latency_and_cost_is_counted(result):
    (task,) = result["tasks"]
    sn = task["supernet"]
    assert sn["target_by"] == "latency"
    for name, pick in sn["picks"].items():
        if name.startswith("pick_"):
            assert pick["target"] - 0.8 <= pick["latency_ratio"] <= pick["target"]
            assert pick["candidates"] >= 1
    assert sn["picks"]["maximal"]["latency_ratio"] == 1.0
    search = sn["search"]
    assert search["latency_measured"] >= 2 and search["scored"] >= 1 and search["search_s"] > 0
    assert search["candidates"] == result["settings"]["candidates"]
    assert sn["total_s"] >= sn["train_s"] + search["search_s"]


def test_spread_sampling_reaches_from_the_maximal_to_the_minimal_where_uniform_sampling_stays_in_the_middle():
    sys.path.insert(0, str(ROOT / "jobs"))
    from bench_quality import spread_sample

    from lonas_ray.shape import ModelShape
    from lonas_ray.space import SearchSpace, SpaceSpec

    shape = ModelShape(family="llama", num_layers=8, hidden_size=64, intermediate_size=128, num_heads=4,
                       num_kv_heads=2, head_dim=16, vocab_size=100, tie_word_embeddings=True)
    space = SearchSpace.resolve(SpaceSpec.from_dict({"mlp": {"choices": [1.0, 0.5]}, "depth": {"skippable": [2, 5]}}),
                                shape)

    def cut_share(cfg: dict) -> float:
        return sum(v != space.dims[k].choices[0] for k, v in cfg.items()) / len(cfg)

    spread = [cut_share(spread_sample(space, seed)) for seed in range(64)]
    uniform = [cut_share(space.sample(seed)) for seed in range(64)]
    assert min(spread) < 0.15 and max(spread) > 0.85  # near-maximal and near-minimal candidates both occur
    assert 0.15 < min(uniform) and max(uniform) < 0.85  # what latency targets far from the maximal would miss
    for seed in range(64):
        space.validate(spread_sample(space, seed))
        assert spread_sample(space, seed) == spread_sample(space, seed)


def test_a_params_band_draws_the_sandwichs_random_slot_only_among_the_shapes_in_it():
    sys.path.insert(0, str(ROOT / "jobs"))
    from bench_quality import in_params_band

    from helpers import tiny_model
    from lonas_ray.counting import count_subnet
    from lonas_ray.elastic.supernet import SuperNetwork
    from lonas_ray.space import SearchSpace, SpaceSpec
    from lonas_ray.train.schedule import subnets_for_step

    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict({"lora": {"r_max": 4, "rank_choices": [4, 2]},
                                                               "mlp": {"choices": [1.0, 0.5]},
                                                               "heads": {"choices": [1.0, 0.5]}}))
    space, full = supernet.space, count_subnet(supernet, supernet.space.maximal()).params
    share = lambda c: count_subnet(supernet, c).params / full  # noqa: E731
    accept = in_params_band(supernet, [0.7, 0.9])
    uniform = [share(subnets_for_step(space, "sandwich", 0, step)[2]) for step in range(40)]
    banded = [subnets_for_step(space, "sandwich", 0, step, accept=accept) for step in range(40)]
    assert any(not 0.7 <= u <= 0.9 for u in uniform)  # uniform draws leave the band
    assert all(0.7 <= share(b[2]) <= 0.9 for b in banded)
    assert all(b[:2] == [space.maximal(), space.minimal()] for b in banded)  # the sandwich's ends stay
    assert banded == [subnets_for_step(space, "sandwich", 0, step, accept=accept) for step in range(40)]  # seeded
    assert len({SearchSpace.subnet_id(b[2]) for b in banded}) > 1
    with pytest.raises(ValueError, match="lies in the training band: widen it"):
        subnets_for_step(space, "sandwich", 0, 0, accept=in_params_band(supernet, [0.01, 0.02]))


def test_the_plain_lora_model_teaches_with_one_forward_per_training_step(result):
    (task,) = result["tasks"]
    steps = result["settings"]["steps"]
    assert task["supernet"]["teacher"] == "peft_lora" and task["supernet"]["distill"] > 0
    # one batch per step and three sub-networks per sandwich step, yet one teacher forward per step
    assert task["teacher"]["forwards_in_training"] == steps
    # the Minitron-style rows learn from the teacher: their models differ from prune-then-LoRA's of the same shape
    rows = {r["model"]: r for r in task["rows"]}
    minitron = [n for n in rows if n.startswith("minitron@")]
    assert minitron and any(rows[n]["task_loss"] != rows[n.replace("minitron", "prune_lora")]["task_loss"]
                            for n in minitron)
    assert task["supernet"]["passes"] == 3 * steps


@pytest.mark.parametrize("option, value, message", [
    ("--random-band", "0.9,0.5", "--random-band takes lo,hi with 0 <= lo < hi <= 1"),
    ("--warm-start-share", "1", "--warm-start-share takes a share of the steps in [0, 1), got 1.0")])
def test_a_lever_set_out_of_its_range_stops_before_anything_runs(tmp_path, option, value, message):
    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, "jobs/bench_quality.py", "--quick", "--tasks", "intent_recognition",
                           option, value, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr and not out.exists()


def test_a_warm_start_trains_the_maximal_alone_first_then_the_same_sandwich_at_the_same_steps():
    """--warm-start-share (OFA's warm start): the first steps train the maximal with one pass each, the rest are the
    very sandwich steps a run without it takes; the optimizer steps stay the same."""
    import argparse

    import datasets
    import torch

    sys.path.insert(0, str(ROOT / "jobs"))
    from bench_quality import train_supernet

    from helpers import tiny_model
    from lonas_ray.elastic.supernet import SuperNetwork
    from lonas_ray.space import SpaceSpec
    from lonas_ray.train.schedule import subnets_for_step

    spec = SpaceSpec.from_dict({"lora": {"r_max": 4, "rank_choices": [4, 2]}, "mlp": {"choices": [1.0, 0.5]}})
    space = SuperNetwork(tiny_model(), spec).space
    warm = [subnets_for_step(space, "sandwich", 0, step, warm_start_steps=3) for step in range(8)]
    assert warm[:3] == [[space.maximal()]] * 3
    assert warm[3:] == [subnets_for_step(space, "sandwich", 0, step) for step in range(3, 8)]

    rows = {"input_ids": [[1, 5, 9, 13, 2]] * 8, "labels": [[-100, -100, 9, 13, 2]] * 8}
    for share, passes in ((0.0, 3 * 4), (0.5, 2 + 3 * 2)):  # 4 steps: 2 of the maximal alone, then 2 sandwiches
        args = argparse.Namespace(lr=1e-3, steps=4, batch=2, seed=0, random_band=None, warm_start_share=share,
                                  distill=0.0, distill_temperature=1.0, distill_maximal=True, maximal_weight=1.0)
        supernet = SuperNetwork(tiny_model(), spec)
        assert train_supernet(supernet, datasets.Dataset.from_dict(rows), 0, args, torch.device("cpu")) == passes
