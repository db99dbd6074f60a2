"""jobs/bench_lease.py at a tiny size: every condition measured with sane, self-consistent figures, the lease's own
check (no measured timing beside busy work under it), a re-run that skips what the JSON holds, and its table. No
speed is asserted: the figures are the benchmark's business (jobs/results/bench_lease_cpu.json). Starts no Ray."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "jobs"))
import render_benchmarks  # noqa: E402

from lonas_ray.search.latency import percentile  # noqa: E402

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ARGS = ["--shape", "tiny", "--busy", "1", "--measurements", "2", "--repeats", "3", "--busy-repeats", "1"]
CONDITIONS = ["alone", "busy1_nolease", "busy1_lease"]


def bench(out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/bench_lease.py", *ARGS, "--out", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lease") / "bench_lease_tiny.json"
    proc = bench(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(out.read_text())


def test_every_condition_is_measured_with_figures_that_follow_from_its_samples(run):
    _, result = run
    rows = result["conditions"]
    assert [r["condition"] for r in rows] == CONDITIONS
    assert [(r["busy"], r["lease"]) for r in rows] == [(0, False), (1, False), (1, True)]
    alone = rows[0]
    for row in rows:
        ms = row["measurements"]
        assert len(ms) == 2
        for m in ms:
            assert len(m["samples_ms"]) == 3 and all(x > 0 for x in m["samples_ms"])
            assert 0 < m["latency_p10_ms"] <= m["latency_ms"] <= m["latency_p90_ms"]
            assert m["latency_ms"] == pytest.approx(statistics.median(m["samples_ms"]), abs=1e-3)
            assert m["lease_wait_s"] >= 0
        samples = [x for m in ms for x in m["samples_ms"]]
        assert row["latency_ms"] == pytest.approx(statistics.median(m["latency_ms"] for m in ms), abs=1e-3)
        assert row["latency_p10_ms"] == pytest.approx(percentile(samples, 0.1), abs=1e-3)
        assert row["latency_p90_ms"] == pytest.approx(percentile(samples, 0.9), abs=1e-3)
        assert 0 < row["latency_p10_ms"] <= row["latency_ms"] <= row["latency_p90_ms"]
        assert row["ratio_to_alone"] == pytest.approx(row["latency_ms"] / alone["latency_ms"], rel=1e-3)
        assert len(row["busy_work"]) == row["busy"]
        assert row["other_load"]["wall_s"] > 0 and row["other_load"]["other_processes_cpu_s"] >= 0
    assert alone["ratio_to_alone"] == 1.0 and alone["overlap"]["share"] == 0


def test_the_lease_keeps_busy_work_off_the_measured_timings_and_nothing_holds_it_without(run):
    _, result = run
    rows = {r["condition"]: r for r in result["conditions"]}
    free, leased = rows["busy1_nolease"], rows["busy1_lease"]
    assert free["overlap"]["share"] > 0  # the busy evaluator computed beside the measured timings ...
    assert free["busy_work"][0]["scorings"] + free["busy_work"][0]["timings"] > 0
    assert all(m["lease_wait_s"] == 0 for m in free["measurements"])
    assert free["busy_work"][0]["lease_wait_s"] == 0
    assert leased["overlap"]["with_busy_work_s"] == 0  # ... and never under the lease
    assert leased["overlap"]["measured_s"] > 0


def test_the_json_records_where_and_how_it_ran(run):
    _, result = run
    for key in ("platform", "cpu_model", "logical_cores", "torch", "transformers"):
        assert result["machine"][key]
    assert result["machine"]["torch_threads"] == 1
    assert result["date"] and result["command"].startswith("python jobs/bench_lease.py")
    assert "random" in result["weights"] and result["params"] > 0
    s = result["settings"]
    assert (s["model"], s["shape"], s["runtime"], s["measurements"], s["repeats"]) == ("config", "tiny", "static", 2, 3)


def test_a_rerun_skips_the_conditions_the_json_holds_and_measures_only_the_missing_one(run, tmp_path):
    out, first = run
    again = bench(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stderr
    assert json.loads(out.read_text()) == first
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps({**first, "conditions": first["conditions"][:2]}))
    resumed = bench(cut)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "alone: already in" in resumed.stderr and "busy1_nolease: already in" in resumed.stderr
    rows = json.loads(cut.read_text())["conditions"]
    assert [r["condition"] for r in rows] == CONDITIONS
    assert rows[:2] == first["conditions"][:2]  # kept as measured, not measured again
    assert rows[2]["ratio_to_alone"] == pytest.approx(rows[2]["latency_ms"] / rows[0]["latency_ms"], rel=1e-3)
    other = bench(cut, "--new-tokens", "4")
    assert other.returncode != 0 and "other settings" in other.stderr
    assert json.loads(cut.read_text())["conditions"] == rows


def test_the_benchmarks_doc_renders_a_table_row_per_condition(run, tmp_path):
    out, result = run
    template = tmp_path / "template.md"
    template.write_text(f"# t\n\n{{{{table: lease({out.stem})}}}}\n")
    text = render_benchmarks.render(template, out.parent)
    assert "command: `python jobs/bench_lease.py" in text
    for words, row in zip(["| alone |", "| 1 busy, no lease |", "| 1 busy, lease |"], result["conditions"]):
        line = next(line for line in text.splitlines() if words in line)
        assert f"{row['ratio_to_alone']:.2f}x" in line and f"{row['latency_ms']:.1f} (" in line
