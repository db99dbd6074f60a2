"""jobs/compare_runs.py: two pipeline runs' figures side by side and B minus A paired over the same examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

sys.path.insert(0, str(ROOT / "jobs"))
from compare_runs import compare, load_run  # noqa: E402

N = 100


TARGET = "85% of the maximal's latency on batch"


def write_run(out: Path, *, baseline: list[int], maximal: list[int], pick: list[int], pick_id: str = "p1",
              other: list[int] | None = None) -> Path:
    """The parts of a finished run's summary.json and final_quality.json the comparison reads: ``pick`` chosen
    for TARGET, ``other`` (if given) an export chosen for no target, both judged on the same pool."""
    out.mkdir(parents=True)
    models = [(pick_id, pick)] + ([("o1", other)] if other is not None else [])
    summary = {
        "baseline": {"subnet_id": "max", "quality": sum(baseline) / N, "eval_examples": N, "outcomes": baseline},
        "search": {"maximal": "max"},
        "models": [{"subnet_id": sid, "quality": sum(o) / N, "eval_examples": N, "outcomes": o,
                    "quality_ci95": [0.0, 1.0]} for sid, o in models],
        "ranking": {"targets": {TARGET: {"chosen": pick_id}}},
        "deployment": {"outcome": "undecided", "models": [
            {"subnet_id": sid, "pool": "interactive", "outcome": "undecided", "kept": 1.0, "kept_ci95": [0.9, 1.1],
             "speedup": 1.2, "speedup_ci95": [1.1, 1.3]} for sid, _ in models]},
    }
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "final_quality.json").write_text(json.dumps(
        {"max": {"quality": sum(maximal) / N, "examples": N, "outcomes": maximal}}))
    return out


def test_b_minus_a_is_paired_per_model_and_judged_by_its_interval(tmp_path):
    half = [1] * 50 + [0] * 50
    a = write_run(tmp_path / "a", baseline=half, maximal=half, pick=half)
    b = write_run(tmp_path / "b", baseline=half, maximal=[1] * 80 + [0] * 20, pick=[1] * 49 + [0] * 51,
                  pick_id="p2", other=[1] * N)
    got = compare(load_run(a), load_run(b))
    d = got["b_minus_a"]
    assert d["baseline"]["difference"] == 0 and d["baseline"]["verdict"] == "tie"
    assert abs(d["maximal"]["difference"] - 0.30) < 1e-9 and d["maximal"]["verdict"] == "win"
    assert d["maximal"]["difference_ci95"][0] > 0 and d["maximal"]["examples"] == N
    assert abs(d[TARGET]["difference"] + 0.01) < 1e-9 and d[TARGET]["verdict"] == "tie"  # p2 against p1: one target
    assert set(d) == {"baseline", "maximal", TARGET}  # b's other export has nothing in a to pair with
    exported = got["b"]["exported"]
    assert exported[TARGET]["subnet_id"] == "p2" and exported[TARGET]["speedup"] == 1.2
    assert exported["o1"]["quality"] == 1.0 and exported["o1"]["pool"] == "interactive"  # both judged there, both kept
    assert got["a"]["maximal"]["quality"] == 0.5 and got["b"]["maximal"]["quality"] == 0.8
    assert "outcomes" not in json.dumps(got)  # figures only: the outcomes stay in the runs


def test_models_scored_on_different_examples_are_not_paired(tmp_path):
    a = write_run(tmp_path / "a", baseline=[1] * N, maximal=[1] * N, pick=[1] * N)
    b = write_run(tmp_path / "b", baseline=[1] * 60, maximal=[1] * N, pick=[1] * N)
    d = compare(load_run(a), load_run(b))["b_minus_a"]
    assert d["baseline"] is None and d["maximal"]["verdict"] == "tie"


def test_a_directory_that_is_not_a_finished_run_and_an_existing_json_are_refused_and_nothing_is_written(tmp_path):
    a = write_run(tmp_path / "a", baseline=[1] * N, maximal=[1] * N, pick=[1] * N)
    cmd = [sys.executable, str(ROOT / "jobs" / "compare_runs.py")]
    proc = subprocess.run([*cmd, str(a), str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "holds no summary.json" in proc.stderr and "Traceback" not in proc.stderr
    kept = tmp_path / "kept.json"
    kept.write_text("earlier")
    proc = subprocess.run([*cmd, str(a), str(a), "--json", str(kept)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "exists" in proc.stderr and kept.read_text() == "earlier"
    out = tmp_path / "new.json"
    proc = subprocess.run([*cmd, str(a), str(a), "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(out.read_text())["b_minus_a"]["maximal"]["difference"] == 0
