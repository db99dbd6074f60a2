"""jobs/bench_robust.py --quick cells: a sweep over seeds that resumes, refuses a changed resume, stops in time,
and pools paired outcomes that agree with the rows' own accuracies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

CELL_ARGS = ["--quick", "--parts", "zero_shot,peft_lora,supernet,prune_lora", "--space-config",
             "jobs/configs/tiny.yaml", "--targets", "1.3", "--band", "0.8", "--no-heuristic",
             "--latency-repeats", "0", "--budget-share", "0.5"]


def sweep(directory, *args, timeout=500):
    return subprocess.run([sys.executable, "jobs/bench_robust.py", "--dir", str(directory), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    directory = tmp_path_factory.mktemp("robust") / "sweep"
    proc = sweep(directory, "--tasks", "intent_recognition", "--seeds", "0,1", "--", *CELL_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return directory


def cell(directory, seed: int) -> dict:
    return json.loads((directory / "cells" / f"intent_recognition.seed{seed}.json").read_text())


def test_every_cell_is_one_seed_of_the_benchmark_and_the_pooled_difference_is_the_rows_own(done):
    summary = json.loads((done / "summary.json").read_text())
    assert summary["cells_done"] == ["intent_recognition.seed0", "intent_recognition.seed1"]
    assert summary["cells_left"] == []
    cells = [cell(done, s) for s in (0, 1)]
    assert [c["settings"]["seed"] for c in cells] == [0, 1] and all(c["complete"] for c in cells)
    rows = [{r["model"]: r for r in c["tasks"][0]["rows"]} for c in cells]
    for name, model, reference in [("plain LoRA - zero-shot", "peft_lora", "zero_shot"),
                                   ("maximal - plain LoRA", "supernet:maximal", "peft_lora"),
                                   ("supernet - prune_lora @ pick_1.30", "supernet:pick_1.30", "prune_lora:pick_1.30"),
                                   ("supernet - plain LoRA @ pick_1.30", "supernet:pick_1.30", "peft_lora")]:
        pooled = summary["comparisons"][name]
        assert pooled["tasks"] == 1 and pooled["cells"] == 2
        assert pooled["examples"] == sum(r[model]["examples"] for r in rows)
        for r in rows:  # each row's outcomes are its examples, its hits among them
            assert len(r[model]["outcomes"]) == r[model]["examples"] and r[model]["outcomes"].count("1") == \
                r[model]["hits"]
        expected = sum(r[model]["quality"] - r[reference]["quality"] for r in rows) / 2  # the mean of the seeds'
        assert pooled["difference"] == pytest.approx(expected)
        lo, hi = pooled["difference_ci95"]
        assert lo <= pooled["difference"] <= hi
        assert pooled["verdict"] == ("win" if lo > 0 else "loss" if hi < 0 else "tie")
    assert all(c["cells"] == 2 for c in summary["comparisons"].values())  # each seed's pair once, never twice
    # issue 41's targets, judged on these rows: one task and two seeds are too few, the wins come from the pooled
    # verdict against prune-then-LoRA, and without timings the keep target is not judged
    targets = summary["targets"]
    assert targets["scope"] == {"met": False, "tasks": 1, "fewest_seeds": 2, "needs": ">= 5 tasks x >= 3 seeds"}
    assert targets["wins"]["baselines"]["prune_lora"]["picks"] == {
        "pick_1.30": summary["comparisons"]["supernet - prune_lora @ pick_1.30"]["verdict"]}
    assert targets["keeps"]["met"] is None and targets["met"] is False


def test_running_the_sweep_again_runs_no_finished_cell(done):
    before = {s: cell(done, s) for s in (0, 1)}
    proc = sweep(done, timeout=120)  # the recorded sweep: tasks, seeds and cell arguments from sweep.json
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cell intent_recognition" not in proc.stdout and "plain LoRA - zero-shot" in proc.stdout
    assert {s: cell(done, s) for s in (0, 1)} == before


def test_a_resume_with_other_cell_arguments_is_refused_and_changes_nothing(done):
    record = (done / "sweep.json").read_text()
    other = [a if a != "0.5" else "0.25" for a in CELL_ARGS]  # another --budget-share
    proc = sweep(done, "--tasks", "intent_recognition", "--seeds", "0,1,2", "--", *other, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "holds a sweep with other cell arguments" in proc.stderr and "another --dir" in proc.stderr
    assert (done / "sweep.json").read_text() == record
    assert not (done / "cells" / "intent_recognition.seed2.json").exists()
    clash = sweep(done.parent / "other", "--tasks", "intent_recognition", "--seeds", "0", "--", "--seed", "3",
                  timeout=120)
    assert clash.returncode == 2 and "this job sets --tasks, --seed and --out per cell" in clash.stderr
    assert not (done.parent / "other").exists()


def test_a_new_seed_joins_the_sweep_running_only_its_cell_and_the_summary_pools_all_three(done, tmp_path):
    grown = tmp_path / "sweep"
    shutil.copytree(done, grown)
    before = {s: cell(grown, s) for s in (0, 1)}
    proc = sweep(grown, "--seeds", "2", timeout=300)  # the recorded tasks and cell arguments, one more seed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((grown / "sweep.json").read_text())["seeds"] == [0, 1, 2]
    assert {s: cell(grown, s) for s in (0, 1)} == before and cell(grown, 2)["settings"]["seed"] == 2
    summary = json.loads((grown / "summary.json").read_text())
    assert summary["cells_done"] == [f"intent_recognition.seed{s}" for s in (0, 1, 2)]
    assert summary["comparisons"]["maximal - plain LoRA"]["cells"] == 3


def test_a_time_limit_starts_no_cell_that_the_longest_finished_one_says_would_not_end_in_time(done, tmp_path):
    part = tmp_path / "sweep"
    shutil.copytree(done, part)
    (part / "cells" / "intent_recognition.seed1.json").unlink()
    longest = cell(done, 0)["tasks"][0]["wall_s"]
    proc = sweep(part, "--time-limit", str(longest / 2), "--summarize-only", timeout=120)
    assert proc.returncode == 0 and "cell intent_recognition" not in proc.stdout  # summarize only: nothing run
    proc = sweep(part, "--tasks", "intent_recognition", "--seeds", "0,1", "--time-limit", str(longest / 2), "--",
                 *CELL_ARGS, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopping with 1 cell(s) left" in proc.stdout and not (part / "cells" / "intent_recognition.seed1.json"
                                                                  ).exists()
    assert json.loads((part / "summary.json").read_text())["cells_left"] == ["intent_recognition.seed1"]


def test_a_sweep_folder_renders_as_a_table_of_its_pooled_comparisons_with_its_machine(done):
    sys.path.insert(0, str(ROOT / "jobs"))
    from render_benchmarks import load_run
    from render_robust import robust

    run = load_run(done.parent, done.name, "{{table: robust(sweep)}}")  # the folder's summary.json
    text = robust([run])
    summary = json.loads((done / "summary.json").read_text())
    assert summary["machine"] == cell(done, 0)["machine"] and summary["date"] == cell(done, 1)["date"]
    assert "cell_args=" in text and "machine: CPU" in text  # where the figures came from
    for name, c in summary["comparisons"].items():
        lo, hi = c["difference_ci95"]
        assert f"| sweep | {name} | {c['difference']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {c['verdict']} | 1 | 2 |" in text


def test_a_sweep_against_another_pairs_each_models_outcomes_by_task_seed_and_example(done, tmp_path):
    """A lever's own effect: this sweep's rows minus the other's of the same model, task and seed, pooled; the
    settings the cells differ in are named; a cell scored on other examples is refused, writing nothing."""
    lever = tmp_path / "lever"
    shutil.copytree(done, lever)
    flips = {}
    for seed in (0, 1):  # the "lever" gets some of the maximal's misses right, and records a changed setting
        path = lever / "cells" / f"intent_recognition.seed{seed}.json"
        data = json.loads(path.read_text())
        data["settings"]["maximal_weight"] = 2.0
        row = next(r for r in data["tasks"][0]["rows"] if r["model"] == "supernet:maximal")
        misses = [i for i, c in enumerate(row["outcomes"]) if c == "0"][: 3 - seed]
        row["outcomes"] = "".join("1" if i in misses else c for i, c in enumerate(row["outcomes"]))
        flips[seed] = len(misses) / len(row["outcomes"])
        path.write_text(json.dumps(data))
    proc = sweep(lever, "--against", str(done), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((lever / f"against_{done.name}.json").read_text())
    assert result["cells"] == ["intent_recognition.seed0", "intent_recognition.seed1"]
    assert result["settings"]["changed"] == {"maximal_weight": {"sweep": 2.0, "reference": 1.0}}
    maximal = result["comparisons"]["supernet:maximal"]
    assert maximal["difference"] == pytest.approx((flips[0] + flips[1]) / 2) and maximal["difference"] > 0
    assert maximal["cells"] == 2 and maximal["difference_ci95"][0] >= 0
    for model in ("peft_lora", "zero_shot", "supernet:pick_1.30"):  # untouched: the same outcomes, exactly 0
        assert result["comparisons"][model]["difference"] == 0
        assert result["comparisons"][model]["difference_ci95"] == [0, 0]
    assert "maximal_weight" in proc.stdout and "supernet:maximal" in proc.stdout

    sys.path.insert(0, str(ROOT / "jobs"))
    from render_benchmarks import load_run
    from render_robust import recipes

    text = recipes([load_run(lever, f"against_{done.name}", "{{table: recipes(x)}}")])
    assert f"| lever - {done.name} | supernet:maximal | {maximal['difference']:+.3f} |" in text
    assert "maximal_weight 1.0 -> 2.0" in text

    path = lever / "cells" / "intent_recognition.seed1.json"  # one cell scored on fewer examples
    data = json.loads(path.read_text())
    row = next(r for r in data["tasks"][0]["rows"] if r["model"] == "peft_lora")
    row["outcomes"] = row["outcomes"][:-1]
    path.write_text(json.dumps(data))
    (lever / f"against_{done.name}.json").unlink()
    proc = sweep(lever, "--against", str(done), timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "peft_lora of intent_recognition seed 1" in proc.stderr and "not paired" in proc.stderr
    assert not (lever / f"against_{done.name}.json").exists()
    mixed = sweep(lever, "--against", str(done), "--seeds", "0", timeout=120)
    assert mixed.returncode == 2 and "give only --dir and --against" in mixed.stderr
