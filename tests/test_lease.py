"""The hardware lease: a timing holds the device alone, scorings share it, and an evaluator uses it that way.

Threads stand in for evaluators where only the locking is tested (flock locks belong to open files, so two
threads conflict exactly as two processes do); a real child process shows a killed holder leaves no lease, and a
real ``Evaluator`` on a tiny model shows a held timing lease blocks its timing and not its scoring.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lonas_ray.lease import CPU, ENV_TRACE, HardwareLease, hardware_key, read_trace

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]


def _in_thread(fn) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run():
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


def test_a_timing_blocks_another_timing_until_it_ends(tmp_path):
    lease = HardwareLease(CPU, tmp_path)
    with lease.exclusive():
        _, done = _in_thread(lambda: _enter_exit(HardwareLease(CPU, tmp_path).exclusive()))
        assert not done.wait(0.5), "a second timing ran while the first held the device"
    assert done.wait(5), "the second timing never got the device once the first ended"


def test_scorings_share_the_device_with_each_other(tmp_path):
    with HardwareLease(CPU, tmp_path).shared():
        _, done = _in_thread(lambda: HardwareLease(CPU, tmp_path).shared().__enter__())
        assert done.wait(5), "a scoring waited for another scoring"


def test_a_scoring_waits_while_a_timing_runs_and_a_timing_waits_for_running_scorings(tmp_path):
    with HardwareLease(CPU, tmp_path).exclusive():
        _, scored = _in_thread(lambda: _enter_exit(HardwareLease(CPU, tmp_path).shared()))
        assert not scored.wait(0.5), "a scoring ran beside a timing"
    assert scored.wait(5)
    with HardwareLease(CPU, tmp_path).shared():
        _, timed = _in_thread(lambda: _enter_exit(HardwareLease(CPU, tmp_path).exclusive()))
        assert not timed.wait(0.5), "a timing ran beside a scoring"
    assert timed.wait(5)


def _enter_exit(cm) -> None:
    with cm:
        pass


def test_a_waiting_timing_is_not_starved_by_scorings_that_keep_starting(tmp_path):
    """A scoring that arrives after a timing asked waits behind it (the turnstile)."""
    order: list[str] = []
    first = HardwareLease(CPU, tmp_path).shared()
    first.__enter__()

    def timing():
        with HardwareLease(CPU, tmp_path).exclusive():
            order.append("timing")

    def late_scoring():
        with HardwareLease(CPU, tmp_path).shared():
            order.append("late scoring")

    t1, timed = _in_thread(timing)
    time.sleep(0.3)  # the timing now waits at the lock, holding the turnstile
    t2, scored = _in_thread(late_scoring)
    time.sleep(0.3)
    assert order == [], "the late scoring overtook the waiting timing"
    first.__exit__(None, None, None)
    assert timed.wait(5) and scored.wait(5)
    assert order == ["timing", "late scoring"]


def test_the_hold_reports_how_long_it_waited(tmp_path):
    with HardwareLease(CPU, tmp_path).shared() as free:
        assert free.mode == "shared" and free.key == CPU and free.waited_s < 0.5
    holder = HardwareLease(CPU, tmp_path).exclusive()
    holder.__enter__()
    threading.Timer(0.6, lambda: holder.__exit__(None, None, None)).start()
    with HardwareLease(CPU, tmp_path).exclusive() as hold:
        assert hold.waited_s >= 0.5


def test_a_trace_records_every_hold_with_its_span_and_a_timing_overlaps_no_other_hold(tmp_path, monkeypatch):
    trace = tmp_path / "holds.jsonl"
    monkeypatch.setenv(ENV_TRACE, str(trace))
    lease = HardwareLease(CPU, tmp_path)
    with lease.shared():
        _, timed = _in_thread(lambda: _enter_exit(HardwareLease(CPU, tmp_path).exclusive()))
        time.sleep(0.3)  # the timing waits for this scoring
    assert timed.wait(5)
    with lease.shared(), HardwareLease(CPU, tmp_path).shared():
        pass
    holds = read_trace(trace)
    assert [h["mode"] for h in holds] == ["shared", "exclusive", "shared", "shared"]
    assert all(h["pid"] == os.getpid() and h["key"] == CPU and h["start"] <= h["end"] for h in holds)
    scoring, timing = holds[0], holds[1]
    assert scoring["end"] - scoring["start"] >= 0.3 and timing["start"] >= scoring["end"]
    assert holds[3]["start"] <= holds[2]["end"], "two shared holds at once were traced as one after the other"
    assert holds[2]["end"] >= holds[3]["end"], "the outer shared hold ended before the inner one"


def test_a_killed_holder_leaves_no_lease(tmp_path):
    """The kernel releases a SIGKILLed evaluator's hold: nothing is left to clean up."""
    # lease.py needs the standard library alone: loaded by path, not through the package (torch, transformers)
    code = ("import importlib.util as u, sys, time\n"
            f"spec = u.spec_from_file_location('lease', {str(ROOT / 'lonas_ray' / 'lease.py')!r})\n"
            "lease = sys.modules['lease'] = u.module_from_spec(spec); spec.loader.exec_module(lease)\n"
            "HardwareLease = lease.HardwareLease\n"
            f"with HardwareLease('cpu', {str(tmp_path)!r}).exclusive():\n"
            "    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
        _, done = _in_thread(lambda: _enter_exit(HardwareLease(CPU, tmp_path).exclusive()))
        assert not done.wait(0.5), "the child's timing lease did not hold"
        os.kill(proc.pid, signal.SIGKILL)
        assert done.wait(5), "a killed process's lease was never released"
    finally:
        proc.kill()
        proc.wait(10)


def test_gpus_have_leases_of_their_own_and_the_cpu_one():
    assert hardware_key("cpu") == CPU


def test_leases_of_different_hardware_do_not_block_each_other(tmp_path):
    with HardwareLease("cuda-aaa", tmp_path).exclusive():
        _, done = _in_thread(lambda: _enter_exit(HardwareLease("cuda-bbb", tmp_path).exclusive()))
        assert done.wait(5), "two GPUs' timings waited for each other"
        _, cpu = _in_thread(lambda: _enter_exit(HardwareLease(CPU, tmp_path).shared()))
        assert cpu.wait(5), "a CPU scoring waited for a GPU's timing"


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    """A real ``Evaluator`` of the tiny pipeline's prepared super-network (no Ray: it runs in this process)."""
    from lonas_ray.build import prepare_once
    from lonas_ray.pipeline.config import PipelineConfig
    from lonas_ray.search.evaluator import EvalJob, Evaluator

    tmp = tmp_path_factory.mktemp("lease-eval")
    cfg = PipelineConfig.from_yaml(ROOT / "jobs" / "configs" / "tiny.yaml")
    prepared = prepare_once(cfg.supernet, tmp / "prepared", cfg.data)
    search = cfg.search_config(prepared, tmp)
    pool = search.search.pools[0]
    search.pools[pool].latency.repeats, search.pools[pool].latency.warmup = 2, 0
    return Evaluator(EvalJob.from_config(search, pool, prepared))


def test_an_evaluators_timing_waits_for_a_held_timing_lease_and_its_scoring_does_not(evaluator, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("LONAS_RAY_LEASE_DIR", str(tmp_path))
    from lonas_ray.lease import lease_for

    evaluator.lease = lease_for(evaluator.device)  # the lease in this test's directory
    maximal = evaluator.space.maximal()
    model = evaluator._model(maximal)
    with HardwareLease(CPU, tmp_path).shared():  # another evaluator scoring: this one scores beside it
        _, scored = _in_thread(lambda: evaluator.evaluate(maximal, examples=4, with_latency=False))
        assert scored.wait(60), "scoring waited for another evaluator's scoring"
    holder = HardwareLease(CPU, tmp_path).exclusive()
    holder.__enter__()  # another evaluator timing
    try:
        results: list = []
        _, timed = _in_thread(lambda: results.append(evaluator._time(model)))
        assert not timed.wait(1.0), "this evaluator timed while another held the device"
    finally:
        holder.__exit__(None, None, None)
    assert timed.wait(60)
    (lat,) = results
    first = lat[evaluator.runtimes[0]]
    assert first["lease"] == CPU and first["lease_wait_s"] >= 0.5
    assert len(first["samples_ms"]) == 2 and first["latency_p10_ms"] <= first["latency_ms"]


def test_the_reference_is_timed_after_the_first_evaluation_then_every_n(evaluator):
    every = evaluator.latency.reference_every
    assert every >= 2
    space = evaluator.space
    other, maximal = space.subnet_id(space.minimal()), space.subnet_id(space.maximal())
    evaluator.references, evaluator.since_reference = 0, 0
    assert not evaluator.reference_due(other), "nothing timed yet"
    evaluator.since_reference = 1
    assert not evaluator.reference_due(maximal), "the maximal's own row is a timing of it"
    evaluator.since_reference = 2  # the maximal first, then another: the first reference is due now
    assert evaluator.reference_due(other)
    ref = evaluator.reference()
    assert ref["subnet_id"] == maximal and set(ref["latencies"]) == set(evaluator.runtimes)
    assert all(v["samples_ms"] for v in ref["latencies"].values())
    assert (evaluator.references, evaluator.since_reference) == (1, 0)
    due = []
    for _ in range(2 * every):
        evaluator.since_reference += 1  # one more timed evaluation
        due.append(evaluator.reference_due(other))
        if due[-1]:
            evaluator.references, evaluator.since_reference = evaluator.references + 1, 0
    assert due == ([False] * (every - 1) + [True]) * 2
