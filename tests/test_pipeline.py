"""The pipeline as users run it: a real head (``ray start --head``), ``ray job submit``, resume, the output contract.

One module-scoped run does what a user would: submit ``jobs/configs/tiny.yaml``
stopped after training, submit it again and stop the job mid-search, submit it a
third time to the end, watching the node's metrics endpoint meanwhile. The tests
then check what each step must have left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from helpers import ENV, ROOT, TINY, Head, checkpoints, processes_using
from lonas_ray.pipeline.report import speedup_text
from lonas_ray.search.results import SCHEMA, read_results

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray, pytest.mark.slow]

def reference_samples(out: Path, pool: str, maximal: str) -> list[float]:
    """Every timed repeat of the maximal on ``pool``, read from the files: its row, then each re-timing."""
    row = next(r for r in read_results(out / "results.parquet").to_pylist()
               if r["pool"] == pool and r["subnet_id"] == maximal)
    runtime = row["latency_runtime"]
    samples = list(json.loads(row["latencies"])[runtime]["samples_ms"])
    for ref in json.loads((out / "latency_reference.json").read_text()).get(pool, []):
        samples += ref["latencies"][runtime]["samples_ms"]
    return samples


def stages(out: Path) -> dict:
    return json.loads((out / "stages.json").read_text())


def result_rows(out: Path) -> list[dict]:
    return read_results(out / "results.parquet").to_pylist()  # read while the job appends to it


def driver_pids(out: Path) -> list[int]:
    """The job's entrypoint processes (the pipeline driver, and the shell Ray may start it through)."""
    return sorted(set(processes_using("jobs/pipeline.py")) & set(processes_using(str(out))))


def interrupt(head: Head, out: Path, job: str, ready, how: str, timeout: float = 400) -> None:
    """Once ``ready()``: SIGKILL the job's driver (``how="kill"``, as a node's OOM killer or a lost head does) or stop
    it the way ``ray job stop`` does (``how="stop"``); returns once the job is over."""
    client, end = head.client(), time.time() + timeout
    while not ready():
        assert time.time() < end, f"never ready to {how}:\n" + client.get_job_logs(job)[-4000:]
        assert str(client.get_job_status(job).value) in ("PENDING", "RUNNING"), client.get_job_logs(job)[-4000:]
        time.sleep(0.05)
    if how == "stop":
        client.stop_job(job)
        assert head.wait(job, timeout=120) == "STOPPED"
        return
    pids = driver_pids(out)
    assert pids, "the driver was not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert head.wait(job, timeout=120) == "FAILED"


def ranks(out: Path, rank: int = 0) -> list[dict]:
    path = out / "ranks" / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def manifests(out: Path) -> dict[str, int]:
    """Exported models that look whole (their manifest is written last): modification time by directory."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/lonas_subnet.json")}


METRICS = {"ray_lonas_search_evaluations_done", "ray_lonas_search_evaluations_total", "ray_lonas_pareto_size",
           "ray_lonas_search_best_quality", "ray_lonas_pipeline_stage"}


def metrics_settled(seen: dict, out: Path) -> bool:
    """Every custom metric scraped, and each pool's evaluations gauge at the pool's rows: what the metrics tests
    check can be seen (instead of waiting the endpoint's whole interval after the run)."""
    rows = result_rows(out)
    done = {dict(tags).get("pool"): value for (name, tags), value in list(seen["samples"].items())
            if name == "ray_lonas_search_evaluations_done"}
    return METRICS <= seen["metrics"] and all(done.get(pool) == len([r for r in rows if r["pool"] == pool])
                                              for pool in ("cpu_a", "cpu_b"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Six submissions into one output directory, each after an interruption a cluster sees: the driver SIGKILLed
    mid-training, resumed and stopped after training, stopped (``ray job stop``) mid-search, SIGKILLed during
    cross-evaluation and again mid-export, and a last one to the end; what each interruption left is kept."""
    tmp = tmp_path_factory.mktemp("pipeline")
    out = tmp / "out"
    head = Head(tmp)
    head.start()
    seen: dict = {"metrics": set(), "samples": {}}
    try:
        # killed once Ray Train has recorded the super-adapter's first checkpoint (every 3 steps in tiny.yaml)
        interrupt(head, out, head.submit(out), lambda: checkpoints(out) == ["step_000003"], "kill")
        seen["train_killed"] = {"stages": stages(out), "records": ranks(out)}

        job = head.submit(out, "--stop-after", "train")
        status = head.wait(job)
        seen["train_logs"] = head.client().get_job_logs(job)
        assert status == "SUCCEEDED", seen["train_logs"][-4000:]
        seen["after_train"] = stages(out)
        seen["adapter_mtime"] = (out / "supernet" / "adapter.safetensors").stat().st_mtime_ns

        interrupt(head, out, head.submit(out), lambda: bool(result_rows(out)), "stop")  # as soon as a row is written
        seen["killed_rows"] = result_rows(out)
        seen["after_kill"] = stages(out)

        interrupt(head, out, head.submit(out), lambda: any(r["phase"] == "cross" for r in result_rows(out)), "kill")
        seen["cross_killed"] = {"stages": stages(out), "rows": result_rows(out)}

        interrupt(head, out, head.submit(out), lambda: bool(manifests(out)), "kill")
        seen["export_killed"] = {"stages": stages(out), "models": manifests(out)}

        stop = threading.Event()

        def watch():
            while not stop.is_set():
                scraped = head.scrape()
                seen["metrics"].update(re.findall(r"^(ray_lonas_\w+)\{", scraped, re.M))
                for name, tags, value in re.findall(r"^(ray_lonas_\w+)\{([^}]*)\} (\S+)$", scraped, re.M):
                    key = (name, frozenset(re.findall(r'(\w+)="([^"]*)"', tags)))
                    seen["samples"][key] = max(float(value), seen["samples"].get(key, float("-inf")))
                stop.wait(2)

        # only the last run is watched: its search finished earlier, and its figures are published again
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        job = head.submit(out)
        status = head.wait(job)
        logs = head.client().get_job_logs(job)
        deadline = time.monotonic() + 30  # metrics reach the endpoint within about 10 s of being set
        while not metrics_settled(seen, out) and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set()
        watcher.join(10)
        assert status == "SUCCEEDED", logs[-4000:]
        seen["logs"] = logs
        seen["out"] = out
        seen["gcs"] = f"127.0.0.1:{head.gcs}"
        yield seen
    finally:
        head.stop()


def test_a_driver_killed_mid_training_resumes_from_the_checkpoint_to_the_same_losses(run):
    """SIGKILLed past the first checkpoint, the next submission continues from it (it does not start over) and the
    steps it computes again give the losses the killed run had computed: the state was restored exactly."""
    killed = run["train_killed"]
    assert "finished" in killed["stages"]["baseline"] and "finished" not in killed["stages"].get("train", {})
    before = {r["step"]: r for r in killed["records"]}
    records = ranks(run["out"])
    restarts = sorted({r["restart_from"] for r in records})
    assert restarts == [0, 3], restarts  # tiny.yaml checkpoints every 3 steps
    redone = [r for r in records if r["restart_from"] == 3]
    assert [r["step"] for r in redone] == [3, 4, 5]
    for r in redone:
        if r["step"] in before:
            assert r["subnets"] == before[r["step"]]["subnets"] and r["indices"] == before[r["step"]]["indices"]
            assert r["loss"] == pytest.approx(before[r["step"]]["loss"], rel=1e-4)
    assert {r["step"] for r in records} == set(range(6))


def test_stopping_after_training_then_resuming_does_not_retrain(run):
    out, final = run["out"], stages(run["out"])
    first = run["after_train"]["train"]
    # the baseline runs first (it is the super-adapter's teacher in tiny.yaml), so it is done too
    assert set(run["after_train"]) == {"baseline", "train"} and "finished" in first
    # two runs: the one whose driver was killed, and the one that resumed it; none after
    assert final["train"]["runs"] == 2 and final["train"]["finished"] == first["finished"]
    assert final["baseline"]["runs"] == 1
    assert (out / "supernet" / "adapter.safetensors").stat().st_mtime_ns == run["adapter_mtime"]
    assert "[1/6] baseline: finished earlier" in run["logs"] and "[2/6] train: finished earlier" in run["logs"]


NOISE = ("Reporting training result", "TrainingReport(", "PreemptionWatcher", "max_restarts", "FutureWarning",
         "UserWarning", "real_accelerator", "Setting ds_accelerator", "== Status ==", "Trial status")


def test_the_terminal_shows_the_runs_own_lines_and_says_where_the_workers_logs_are(run):
    """What `ray job logs` (the driver's terminal) shows of a run that trains, and of one that exports and
    reports: the stage lines, bars and table, none of Ray Train's per-step reports, Ray's core-worker lines,
    Tune's tables or the libraries' warnings; its first lines say where those went."""
    for logs in (run["train_logs"], run["logs"]):
        noisy = [line for line in logs.splitlines() if any(n in line for n in NOISE)]
        assert not noisy, noisy[:5]
        lines = logs.splitlines()
        where = [i for i, line in enumerate(lines) if line.startswith("workers' logs (training, evaluators, merges): ")]
        first_stage = next(i for i, line in enumerate(lines) if line.startswith("[1/6] "))
        assert where and where[0] < first_stage, lines[:first_stage + 1]  # said before any stage runs
    assert "super-adapter training" in run["train_logs"] and "[2/6] train: running" in run["train_logs"]
    assert "[5/6] export: running" in run["logs"] and "baseline (plain LoRA)" in run["logs"]  # and the table


def test_a_job_stopped_mid_search_resumes_keeping_every_evaluation(run):
    out, final = run["out"], stages(run["out"])
    killed = run["killed_rows"]
    assert killed, "the job was stopped before the search wrote a row"
    assert "finished" not in run["after_kill"]["search"] and "finished" in run["after_kill"]["baseline"]
    # stopped, killed during cross-evaluation, then finished
    assert final["baseline"]["runs"] == 1 and final["search"]["runs"] == 3
    rows = {(r["subnet_id"], r["pool"]): r for r in result_rows(out)}
    assert len(rows) == len(result_rows(out))  # no sub-network twice on a pool
    for r in killed:  # kept as they were, not evaluated again
        assert rows[(r["subnet_id"], r["pool"])]["timestamp"] == r["timestamp"]
    cfg = yaml.safe_load(TINY.read_text())
    for pool in cfg["pools"]:
        assert sum(r["pool"] == pool and r["phase"] == "search" for r in rows.values()) == cfg["search"]["budget"]


def test_a_driver_killed_during_cross_evaluation_resumes_to_what_an_uninterrupted_search_measures(run):
    """The rows written before the kill are kept, the next run evaluates only the rest, and each pool's cross rows
    are then exactly what an uninterrupted run's are: the other pool's search front less its own rows."""
    from lonas_ray.pipeline.config import PipelineConfig
    from lonas_ray.search.driver import front_members

    out, final, killed = run["out"], stages(run["out"]), run["cross_killed"]
    assert "finished" not in killed["stages"]["search"]
    assert any(r["phase"] == "cross" for r in killed["rows"])
    rows = result_rows(out)
    by_key = {(r["subnet_id"], r["pool"]): r for r in rows}
    assert len(by_key) == len(rows)
    for r in killed["rows"]:
        assert by_key[(r["subnet_id"], r["pool"])]["timestamp"] == r["timestamp"]
    assert sum(final["search"]["new_evaluations"].values()) == len(rows) - len(killed["rows"])
    cfg = PipelineConfig.from_yaml(TINY).search_config(out / "supernet", out)
    pools = list(cfg.search.pools)
    for pool in pools:
        (other,) = [p for p in pools if p != pool]
        searched = [r for r in rows if r["pool"] == other and r["phase"] == "search"]
        front = set(front_members(cfg, [dict(r, config=json.loads(r["config"])) for r in searched]))
        own = {r["subnet_id"] for r in rows if r["pool"] == pool and r["phase"] == "search"}
        assert {r["subnet_id"] for r in rows if r["pool"] == pool and r["phase"] == "cross"} == front - own
    finals = json.loads((out / "final_quality.json").read_text())
    assert set(front_members(cfg, [dict(r, config=json.loads(r["config"])) for r in rows])) <= set(finals)


def test_a_driver_killed_mid_export_redoes_only_the_models_it_had_not_finished(run):
    out, killed = run["out"], run["export_killed"]
    assert killed["models"] and "finished" not in killed["stages"]["export"]
    final = manifests(out)
    summary = json.loads((out / "summary.json").read_text())
    exported = {Path(m["path"]).name for m in [summary["baseline"], *summary["models"]]}
    assert set(final) == exported and set(killed["models"]) <= exported
    for name, mtime in killed["models"].items():  # whole before the kill: kept, not merged again
        assert final[name] == mtime, name
    assert not list((out / "models").glob("*.partial"))  # the killed merges' leftovers are gone
    assert stages(out)["export"]["runs"] == 2


def test_the_output_directory_holds_the_whole_contract(run):
    out = run["out"]
    assert (out / "supernet" / "adapter.safetensors").is_file()
    assert set(SCHEMA.names) <= set(pq.read_table(out / "results.parquet").schema.names)  # read as one table
    pareto = pq.read_table(out / "pareto.parquet").to_pylist()
    assert {"front", "member", "picked"} <= set(pareto[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] and summary["models"]
    ref_samples = {pool: reference_samples(out, pool, summary["search"]["maximal"]) for pool in summary["pools"]}
    picks = {r["subnet_id"] for r in pareto if r["picked"]}
    assert picks <= {m["subnet_id"] for m in summary["models"]}  # every pick is exported
    report = (out / "report.md").read_text()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "baseline (plain LoRA)" in report
    assert not (out / "models" / "baseline" / "recovery.json").exists()  # plain LoRA is not recovered
    zero = summary["zero_shot"]  # the untouched base model, scored like the baseline on every pool
    assert (zero["eval_examples"] == summary["baseline"]["eval_examples"]
            and set(zero["latency"]) == set(summary["pools"]))
    assert zero["params"] == summary["baseline"]["params"] and zero["path"] is None
    assert f"| base model (zero-shot) | base model, zero-shot (no fine-tuning) | {zero['quality']:.4f} |" in report
    assert summary["verdict"]["text"] in report and summary["verdict"]["text"] in run["logs"]
    # and whether any compressed model is worth deploying against plain LoRA, said plainly either way
    assert summary["deployment"]["text"] in report and summary["deployment"]["text"] in run["logs"]
    assert read_results(out / "zero_shot" / "results.parquet").num_rows and "zero_shot" in stages(out)
    # both pools were searched at once, and how busy each one's evaluators were is in the report
    assert summary["search"]["concurrent_pools"] is True and set(summary["search"]["utilisation"]) == {"cpu_a", "cpu_b"}
    for pool, use in summary["search"]["utilisation"].items():
        assert 0 <= use["fraction"] <= 1 and use["evaluators"] >= 1
        assert re.search(rf"^\| {pool} \|.* \| {use['fraction']:.0%} \|$", report, re.M), pool
    assert "Evaluators busy: the share of the search stage's last run's wall time" in report
    for m in [summary["baseline"], *summary["models"]]:
        d = out / m["path"]
        for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
            assert (d / name).is_file(), d / name
        assert set(m["latency"]) == set(summary["pools"])  # a latency on every pool
        card = (d / "README.md").read_text()
        assert f"{m['quality']:.4f}" in card and f"{m['params']:,}" in card
        judge = json.loads((d / "lm_eval.json").read_text())  # lm-eval on the exported checkpoint
        assert judge == m["lm_eval"] and judge["examples"] == m["eval_examples"]
        assert judge["lonas_quality"] == pytest.approx(m["quality"], abs=1e-9)
        # social_iqa's prompts often exceed the tiny config's cutoff_len, and only those may differ
        assert judge["agree"] >= judge["examples"] - judge["truncated"]
        assert f"{judge['lm_eval_quality']:.4f} ({judge['agree']}/{judge['examples']}" in report
        if m is not summary["baseline"]:
            # recovered before the merge (tiny.yaml: export.recover_steps 3): its own checkpoint's figures
            recovery = json.loads((d / "recovery.json").read_text())
            assert recovery["steps"] == m["recovery"]["steps"] == 3 and recovery["quality"] == m["quality"]
            # taught by the frozen baseline, as the super-adapter was (tiny.yaml: train.distill)
            assert recovery["distill"] == {"teacher": str(out / "baseline" / "supernet"), "weight": 0.5,
                                           "temperature": 2.0}
            assert f"`{m['subnet_id']}`: after a recovery fine-tune of 3 steps" in report
            assert f"`{m['subnet_id']}`" in report and f"{m['quality']:.4f}" in report
            assert f"{summary['baseline']['quality']:.4f}" in card  # the baseline's figures beside its own
            for pool, lat in m["latency"].items():  # against the run's reference: the maximal as the search timed it
                ref = summary["references"][pool]
                assert lat["speedup_reference"] == "maximal" and lat["speedup"] == pytest.approx(
                    statistics.median(ref_samples[pool]) / statistics.median(lat["samples_ms"]))
                assert lat["speedup_ci95"][0] <= lat["speedup"] <= lat["speedup_ci95"][1]
                assert speedup_text(lat) in report
    # the reference: the maximal's search row and its re-timings on each pool, and the same-shape rows beside it
    for pool, ref in summary["references"].items():
        assert ref["timings"] >= 2 and ref["subnet_id"] == summary["search"]["maximal"]
        assert set(summary["same_shape"][pool]["latency_ms"]) == {"maximal", "baseline", "zero_shot"}
        assert f"`{pool}`: the maximal (`{ref['subnet_id']}`), timed {ref['timings']} times" in report
    assert summary["deployment"]["outcome"] in ("met", "missed", "undecided")
    # every row scored on the final examples kept which were right: the verdict pairs them
    assert len(summary["baseline"]["outcomes"]) == summary["baseline"]["eval_examples"]
    assert all(len(m["outcomes"]) == m["eval_examples"] for m in summary["models"])
    # where the evaluators' time went, per pool, and every stage's peak memory (issue 40: what a user sizes by)
    for pool in summary["pools"]:
        prof, rows = summary["evaluators"][pool], read_results(out / "results.parquet").to_pylist()
        assert prof["evaluations"] == sum(r["pool"] == pool for r in rows) and prof["per_minute"] > 0
        assert prof["seconds"]["load_s"] > 0 and prof["seconds"]["score_s"] > 0 and prof["seconds"]["time_s"] > 0
        assert prof["peak_rss_mib"] > 100 and prof["peak_gpu_mib"] is None  # a CPU pool: no GPU figure
    for stage in ("baseline", "train", "zero_shot", "search", "export"):  # export: the merges that recovered
        assert summary["stages"][stage]["memory"]["peak_rss_mib"] > 100, stage
    assert "## Evaluators" in report and "## Stages" in report


def test_the_frozen_baseline_teaches_the_super_adapter_with_one_forward_per_micro_batch(run):
    cfg = yaml.safe_load(TINY.read_text())["train"]
    optim, workers = cfg["optim"], cfg["scaling"]["num_workers"]
    micro = optim["batch_size"] // (optim["micro_batch_size"] * workers)  # micro-batches per rank per step
    subnets = 2 + cfg["sampling"]["sandwich_random"]
    for rank in range(workers):
        records = [json.loads(line) for line in (run["out"] / "ranks" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert records and all(r["teacher_passes"] == micro and len(r["subnets"]) == subnets for r in records)
    baseline_ranks = run["out"] / "baseline" / "ranks" / "rank0.jsonl"
    assert all(json.loads(line)["teacher_passes"] == 0 for line in baseline_ranks.read_text().splitlines())


def test_every_exported_model_loads_and_reproduces_the_reported_params_and_quality(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lonas_ray.config_io import from_dict
    from lonas_ray.data.load import load_examples
    from lonas_ray.data.spec import DataSpec
    from lonas_ray.search.config import QualitySpec
    from lonas_ray.search.quality import build_eval_set, evaluate_quality, subset, subset_indices

    out = run["out"]
    cfg = yaml.safe_load(TINY.read_text())
    data = from_dict(DataSpec, cfg["data"])
    quality = from_dict(QualitySpec, cfg["quality"])
    summary = json.loads((out / "summary.json").read_text())
    for m in [summary["baseline"], *summary["models"]]:
        model = AutoModelForCausalLM.from_pretrained(out / m["path"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(out / m["path"])
        assert sum(p.numel() for p in model.parameters()) == m["params"]
        full = build_eval_set(load_examples(data, "eval"), tokenizer, data.cutoff_len)
        evalset = subset(full, subset_indices(len(full), quality.final_examples, quality.seed))
        with torch.no_grad():
            q = evaluate_quality(model, evalset)
        assert q.examples == m["eval_examples"] == quality.final_examples
        assert q.quality == pytest.approx(m["quality"], abs=1e-9), m["path"]
        assert q.loss == pytest.approx(m["loss"], rel=1e-5), m["path"]


def test_the_custom_metrics_reach_the_nodes_metrics_endpoint(run):
    assert METRICS <= run["metrics"], run["metrics"]


def test_the_custom_metrics_carry_the_runs_figures_and_its_tag(run):
    """Not only the names: every ``ray_lonas_*`` series is tagged with the run (the output directory's name), each
    pool's evaluations gauge reached the pool's rows in results.parquet, and the other gauges hold sane values."""
    samples = run["samples"]

    def peak(name: str, **tags: str) -> float:
        values = [v for (n, t), v in samples.items() if n == name and tags.items() <= dict(t).items()]
        assert values, (name, tags, sorted({n for n, _ in samples}))
        return max(values)

    # Ray's OpenTelemetry recorder also exports each gauge once without the user's tags, at 0 (its registration)
    untagged = {k: v for k, v in samples.items() if "run" not in dict(k[1])}
    assert all(v == 0 for v in untagged.values()), untagged
    tagged = {k: v for k, v in samples.items() if k not in untagged}
    assert tagged and {dict(t)["run"] for _, t in tagged} == {"out"}
    samples = tagged
    rows = read_results(run["out"] / "results.parquet").to_pylist()
    for pool in ("cpu_a", "cpu_b"):
        n = len([r for r in rows if r["pool"] == pool])
        assert peak("ray_lonas_search_evaluations_done", pool=pool) == n
        assert peak("ray_lonas_search_evaluations_total", pool=pool) >= n
        assert 1 <= peak("ray_lonas_pareto_size", pool=pool) <= n
        assert 0 <= peak("ray_lonas_search_best_quality", pool=pool) <= 1
    assert 4 <= peak("ray_lonas_pipeline_stage") <= 6  # the search done (4 of 6) at least, as the run went on


def test_a_changed_training_config_is_refused_before_any_work(run, tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["train"]["optim"]["steps"] = 7
    cfg = tmp_path / "changed.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    before = (run["out"] / "stages.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "lonas_ray.cli", "run", "--config", str(cfg), "--output",
                           str(run["out"])], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **ENV})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stage 'baseline' finished" in proc.stderr and "different config" in proc.stderr  # the first strict stage
    assert (run["out"] / "stages.json").read_text() == before


def test_recover_then_rank_exports_each_targets_best_candidate_after_recovery(run, tmp_path):
    """The finished run again with export.select: targets: only export and report run; every candidate is
    recovered into candidates/, and each target's model is its best candidate on the recovered score."""
    from safetensors.torch import load_file

    raw = yaml.safe_load(TINY.read_text())
    raw["export"] = {**raw["export"], "select": "targets", "candidates": 2, "latency_targets": [1.0, 0.95]}
    cfg = tmp_path / "targets.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out, before = run["out"], stages(run["out"])
    proc = subprocess.run([sys.executable, "-m", "lonas_ray.cli", "run", "--config", str(cfg), "--output", str(out),
                           "--address", run["gcs"]], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = stages(out)
    for stage in ("baseline", "train", "search"):  # nothing before the export ran again
        assert after[stage]["runs"] == before[stage]["runs"] and after[stage]["finished"] == before[stage]["finished"]
    assert after["export"]["runs"] == before["export"]["runs"] + 1
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["objective"] == raw["search"]["objective"] == "task_loss"
    assert any(role.startswith("100% of the maximal's latency") for role in ranking["targets"])
    winners = set()
    for role, target in ranking["targets"].items():
        assert 1 <= len(target["candidates"]) <= 2
        recovered = {}
        for c in target["candidates"]:
            rec = json.loads((out / "candidates" / c["subnet_id"] / "recovery.json").read_text())
            assert rec["steps"] == 3 and rec["seconds"] > 0 and rec["distill"]["teacher"].endswith("baseline/supernet")
            assert rec["selection"]["examples"] == raw["quality"]["examples"]  # ranked on the search's examples
            assert rec["examples"] == raw["quality"]["final_examples"]  # reported on the final ones
            assert c["recovered"]["objective"] == pytest.approx(-rec["selection"]["task_loss"])
            recovered[c["subnet_id"]] = -rec["selection"]["task_loss"]
        best = max(recovered.values())
        assert target["chosen"] == next(sid for sid, v in recovered.items() if v == best)
        winners.add(target["chosen"])
    summary = json.loads((out / "summary.json").read_text())
    assert {m["subnet_id"] for m in summary["models"]} == winners
    for sid in winners:  # the exported model is the recovered candidate itself, not a second recovery
        got = load_file(out / "models" / sid / "model.safetensors")
        want = load_file(out / "candidates" / sid / "model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        assert (out / "models" / sid / "lm_eval.json").is_file() and (out / "models" / sid / "README.md").is_file()
    report = (out / "report.md").read_text()
    assert "## Recover-then-rank" in report and all(f"`{sid}`" in report for sid in winners)
