"""Load benchmark: a search of many sub-network evaluations on a tiny model, with the driver's and the evaluators'
resident memory, the cost of one results append, and a resume, at growing sizes. JSON out, written as it goes.

    python jobs/bench_load.py --evaluations 1000 --out jobs/results/bench_load_cpu.json

What it measures (one embedded Ray, the config ``jobs/configs/search_tiny.yaml`` cut to cheap evaluations:
random search, 8 quality examples, a 2-token latency request):

* ``samples``: every ``--every`` seconds while the search runs, the rows written so far, the driver's RSS and the
  summed RSS of the evaluator processes (Tune's trainable actors);
* ``at``: the sample nearest each of ``--marks`` rows (100 and 1,000 by default): memory there, so "flat" is a
  comparison of two numbers;
* ``append_ms``: the median time of appending one row to a table of each mark's size, appended one row at a time as
  the driver does (each append writes one part: it should not grow with the table); ``rewrite_ms`` beside it, the
  same with the table one file read and written again on each append (what appends did before parts);
* ``resume``: the same search run again on the finished output: new evaluations (must be 0) and its wall time.

A run that is stopped can be continued with the same ``--out`` and output directory: the search resumes from its
results file and the samples are appended.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.ray_env import prefer_loopback  # noqa: E402

prefer_loopback()

ROOT = Path(__file__).resolve().parents[1]


def config(out: Path, evaluations: int, evaluators: int, trials_per_run: int | None = None) -> dict:
    raw = yaml.safe_load((ROOT / "jobs/configs/search_tiny.yaml").read_text())
    raw["output_dir"] = str(out)
    raw["pools"]["local"].update(evaluators=evaluators)
    raw["pools"]["local"]["latency"].update(batch_size=1, prompt_len=8, new_tokens=2, warmup=0, repeats=1)
    raw["search"] = {"strategy": "random", "budget": evaluations, "seed": 0}
    if trials_per_run is not None:
        raw["search"]["trials_per_run"] = trials_per_run
    raw["quality"] = {"examples": 8, "final_examples": 8, "batch_size": 8}  # no final scoring: the search alone
    return raw


def rss_mb(pids) -> tuple[float, int]:
    """Summed resident memory of the processes that are alive when read, and how many were."""
    import psutil

    total, alive = 0, 0
    for pid in pids:
        try:
            rss = psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:  # an evaluator whose Tune run ended between listing and reading
            continue
        if rss:  # an exited process not yet reaped (a zombie) reads as 0
            total, alive = total + rss, alive + 1
    return round(total / 2**20, 1), alive


# an evaluator's process title: the trainable's name while idle, Tune's resource wrapper's while it evaluates
TRAINABLE_TITLES = ("SubnetTrainable", "ResourceTrainable")  # (tests/test_search.py kills one by these too)


def evaluator_pids() -> list[int]:
    """Tune's trainable actors on this machine (their process titles name the trainable)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["name", "cmdline"]) if any(
        t in (p.info["name"] or "") + " ".join(p.info["cmdline"] or []) for t in TRAINABLE_TITLES)]


def ray_process_names() -> dict[str, int]:
    """How many processes of each Ray title run (what the evaluators are called, should the match above miss)."""
    import collections

    import psutil

    names = (" ".join(p.info["cmdline"] or [])[:40] for p in psutil.process_iter(["cmdline"]))
    return dict(collections.Counter(n for n in names if n.startswith("ray::")))


_PART_ROWS: dict[str, int] = {}  # a part never changes once written: its row count read once


def rows(path: Path) -> int:
    """Rows in the results table (a directory of parts; a one-file table from before), from the parts' footers."""
    import pyarrow.parquet as pq

    from lonas_ray.search.results import PART_GLOB

    parts = sorted(path.glob(PART_GLOB)) if path.is_dir() else [path]
    total = 0
    for part in parts:
        try:
            if str(part) not in _PART_ROWS or not path.is_dir():
                _PART_ROWS[str(part)] = pq.read_metadata(part).num_rows
            total += _PART_ROWS[str(part)]
        except (OSError, ValueError):  # not written yet, or compacted away
            pass
    return total


def append_ms(results: Path, n: int, work: Path, repeats: int = 20) -> float | None:
    """Median ms of appending one row to a table of ``n`` rows that this process appended one by one, as the
    search driver does (the rows appended are copies of its first ones under new ids)."""
    from lonas_ray.search.results import append_results, read_results

    table = read_results(results)
    if table.num_rows < n:
        return None
    path = work / f"append-{n}.parquet"
    shutil.rmtree(path, ignore_errors=True)
    for row in table.slice(0, n).to_pylist():
        append_results(path, [row])
    times = []
    for i, row in enumerate(table.slice(0, repeats).to_pylist()):
        t0 = time.perf_counter()
        append_results(path, [dict(row, subnet_id=f"appended{i:04d}")])
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def rewrite_ms(results: Path, n: int, work: Path, repeats: int = 20) -> float | None:
    """The alternative an append replaced, side by side: median ms of adding one row to a one-file table of ``n``
    rows by reading it, adding the row and writing the file again atomically (what appends did before parts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lonas_ray.atomic import atomic_file, read_parquet
    from lonas_ray.search.results import read_results

    table = read_results(results)
    if table.num_rows < n:
        return None
    path, times = work / f"rewrite-{n}.parquet", []
    for i, row in enumerate(table.slice(0, repeats).to_pylist()):
        pq.write_table(table.slice(0, n), path)
        t0 = time.perf_counter()
        new = pa.Table.from_pylist([dict(row, subnet_id=f"appended{i:04d}")], schema=table.schema)
        with atomic_file(path) as tmp:
            pq.write_table(pa.concat_tables([read_parquet(path), new]), tmp)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evaluations", type=int, default=1000)
    p.add_argument("--evaluators", type=int, default=2)
    p.add_argument("--marks", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    p.add_argument("--trials-per-run", type=int, default=None,
                   help="search.trials_per_run (default: the config's); the evaluations: one Tune run for all")
    p.add_argument("--workdir", default="out/bench_load")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from lonas_ray.search.config import SearchConfig
    from lonas_ray.search.driver import run_search

    work = Path(args.workdir).resolve()
    out, scratch = work / "search", work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    raw = config(out, args.evaluations, args.evaluators, args.trials_per_run)
    cfg = SearchConfig.from_dict(raw)
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(config=raw, evaluations=args.evaluations, trials_per_run=cfg.search.trials_per_run,
                  machine={"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
                  date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv))
    result.setdefault("samples", [])

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    stop, t0 = threading.Event(), time.monotonic()

    seen: set[int] = set()  # every evaluator process seen so far (a title changes as an actor works)

    def sample() -> None:
        import psutil

        while not stop.wait(args.every):
            seen.update(evaluator_pids())
            evaluators_mb, evaluators = rss_mb([pid for pid in seen if psutil.pid_exists(pid)])
            result["samples"].append({"s": round(time.monotonic() - t0, 1), "rows": rows(out / "results.parquet"),
                                      "driver_mb": rss_mb([os.getpid()])[0], "evaluators": evaluators,
                                      "evaluators_mb": evaluators_mb, "ray": ray_process_names()})
            save()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_search = time.monotonic()
    searched = run_search(cfg)
    result["search"] = {"new_evaluations": searched.evaluated, "wall_s": round(time.monotonic() - t_search, 1),
                        "rows": rows(out / "results.parquet")}
    stop.set()
    sampler.join()
    result["search"]["evaluator_processes_seen"] = len(seen)  # more than evaluators: Tune replaced actors
    live = [s for s in result["samples"] if s["evaluators"]]
    result["at"] = {str(m): min(live, key=lambda s: abs(s["rows"] - m)) if live else None for m in args.marks}
    result["append_ms"] = {str(m): append_ms(out / "results.parquet", m, scratch) for m in args.marks}
    result["rewrite_ms"] = {str(m): rewrite_ms(out / "results.parquet", m, scratch) for m in args.marks}
    save()
    t_resume = time.monotonic()
    again = run_search(cfg)
    result["resume"] = {"new_evaluations": again.evaluated, "wall_s": round(time.monotonic() - t_resume, 1)}
    save()
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "config")}, indent=1))


if __name__ == "__main__":
    main()
