"""Load benchmark: a search of many sub-network evaluations on a tiny model, with the driver's and the evaluators'
resident memory, the cost of one results append, and a resume, at growing sizes. JSON out, written as it goes.

    python jobs/bench_load.py --evaluations 1000 --out jobs/results/bench_load_cpu.json

What it measures (one embedded Ray, the config ``jobs/configs/search_tiny.yaml`` cut to cheap evaluations:
random search, 8 quality examples, a 2-token latency request):

* ``samples``: every ``--every`` seconds while the search runs, the rows written so far, the driver's RSS and the
  summed RSS of the evaluator processes (Tune's trainable actors);
* ``at``: the sample nearest each of ``--marks`` rows (100 and 1,000 by default): memory there, so "flat" is a
  comparison of two numbers;
* ``append_ms``: the median time of appending one row to a copy of the results file cut to each mark (the driver
  rewrites the file atomically on every append: this says what that costs as the file grows);
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


def config(out: Path, evaluations: int, evaluators: int) -> dict:
    raw = yaml.safe_load((ROOT / "jobs/configs/search_tiny.yaml").read_text())
    raw["output_dir"] = str(out)
    raw["pools"]["local"].update(evaluators=evaluators)
    raw["pools"]["local"]["latency"].update(batch_size=1, prompt_len=8, new_tokens=2, warmup=0, repeats=1)
    raw["search"] = {"strategy": "random", "budget": evaluations, "seed": 0}
    raw["quality"] = {"examples": 8, "final_examples": 8, "batch_size": 8}  # no final scoring: the search alone
    return raw


def rss_mb(pids) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20, 1)


# an evaluator's process title: the trainable's name while idle, Tune's resource wrapper's while it evaluates
TRAINABLE_TITLES = ("SubnetTrainable", "ResourceTrainable")


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


def rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (OSError, ValueError):  # not written yet, or being replaced
        return 0


def append_ms(results: Path, n: int, work: Path, repeats: int = 20) -> float | None:
    """Median ms of appending one row to a copy of ``results`` cut to its first ``n`` rows (the rows appended are
    copies of its first ones under new ids)."""
    import pyarrow.parquet as pq

    from lonas_ray.search.results import append_results

    table = pq.read_table(results)
    if table.num_rows < n:
        return None
    cut = table.slice(0, n)
    extra = [dict(r, subnet_id=f"appended{i:04d}") for i, r in enumerate(table.slice(0, repeats).to_pylist())]
    times = []
    for row in extra:
        path = work / "append.parquet"
        pq.write_table(cut, path)
        t0 = time.perf_counter()
        append_results(path, [row])
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evaluations", type=int, default=1000)
    p.add_argument("--evaluators", type=int, default=2)
    p.add_argument("--marks", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    p.add_argument("--workdir", default="out/bench_load")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from lonas_ray.search.config import SearchConfig
    from lonas_ray.search.driver import run_search

    work = Path(args.workdir).resolve()
    out, scratch = work / "search", work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig.from_dict(config(out, args.evaluations, args.evaluators))
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(config=config(out, args.evaluations, args.evaluators), evaluations=args.evaluations,
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
            evaluators = [pid for pid in seen if psutil.pid_exists(pid)]
            result["samples"].append({"s": round(time.monotonic() - t0, 1), "rows": rows(out / "results.parquet"),
                                      "driver_mb": rss_mb([os.getpid()]), "evaluators": len(evaluators),
                                      "evaluators_mb": rss_mb(evaluators), "ray": ray_process_names()})
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
    save()
    t_resume = time.monotonic()
    again = run_search(cfg)
    result["resume"] = {"new_evaluations": again.evaluated, "wall_s": round(time.monotonic() - t_resume, 1)}
    save()
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "config")}, indent=1))


if __name__ == "__main__":
    main()
