"""Equal-cost comparisons that can decide: jobs/bench_quality.py over tasks x seeds, pooled with paired intervals.

    python jobs/bench_robust.py --dir jobs/results/robust_gpu --tasks T1,T2,T3,T4,T5 --seeds 0,1,2 \\
        --time-limit 500 -- --device cuda --parts zero_shot,peft_lora,supernet,recover,prune_lora,minitron \\
        --teacher peft_lora --target-by latency --targets 0.9,0.8,0.7 --budget-share 0.3333
    python jobs/bench_robust.py --dir jobs/results/robust_gpu --summarize-only

Each (task, seed) is one cell: one ``bench_quality.py --tasks T --seed S`` run into ``DIR/cells/T.seedS.json``
(the arguments after ``--`` go to every cell). A cell whose file says ``complete`` is never run again, so a sweep
longer than one GPU call is the same command repeated: ``--time-limit`` stops before a cell that would not end in
time (the longest finished cell is the estimate) and cuts one that runs over; the cut cell runs again next time.
``DIR/sweep.json`` records the tasks, seeds and cell arguments. A resume with other cell arguments is refused (its
cells would not compare); one with the same arguments may name more tasks or seeds, which join the sweep (a sweep
grows from two seeds to three, or from the first tasks to the rest, without running a finished cell again), and the
summary pools every recorded cell.

``DIR/summary.json`` (rewritten after every cell) pools the finished cells with
``lonas_ray.stats.pooled_paired_difference``: per pick (``pick_0.90``, ...), lonas-ray's model (``recover:`` when
the sweep recovers, else ``supernet:``) minus each baseline of the same shape (``prune_lora@share:``,
``minitron@share:``), per task and pooled over tasks and seeds; the maximal minus plain LoRA; plain LoRA minus
zero-shot (a task's *signal*). A ``win`` is a difference whose 95 % interval lies above 0.

    python jobs/bench_robust.py --dir jobs/results/robust_levers --against jobs/results/robust_base

A lever is kept or dropped by its own paired difference, not by comparing two verdicts: ``--against REF`` pairs
this sweep's rows with another sweep's of the same model, task and seed (same seed, same report examples: the
outcomes must line up one for one), pools ``this - REF`` per model as above and writes ``DIR/against_<REF>.json``
with the settings the two sweeps' cells differ in. It runs no cell.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robust_targets import judge, line  # noqa: E402

from lonas_ray.atomic import write_json  # noqa: E402
from lonas_ray.stats import pooled_paired_difference  # noqa: E402

BENCH = Path(__file__).resolve().parent / "bench_quality.py"
OWN = ("--tasks", "--seed", "--out")  # set per cell by this job
BASELINES = ("prune_lora", "minitron")


def cell_path(directory: Path, task: str, seed: int) -> Path:
    return directory / "cells" / f"{task}.seed{seed}.json"


def read_run(path: Path) -> dict | None:
    """A finished cell's whole JSON (header: machine, date, settings; its one task), or None when the cell is
    missing or was cut short."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("complete") and data.get("tasks") else None


def read_sweep(directory: Path) -> dict | None:
    """The sweep ``directory`` records (sweep.json: tasks, seeds, cell arguments), or None when it holds none."""
    record = directory / "sweep.json"
    return json.loads(record.read_text()) if record.is_file() else None


def scored_rows(entry: dict) -> dict[str, dict]:
    """A cell's rows that carry per-example outcomes (what pairs), by model."""
    return {r["model"]: r for r in entry["rows"] if "outcomes" in r}


def read_cell(path: Path) -> dict | None:
    """A finished cell's one task entry (its rows), or None."""
    data = read_run(path)
    return data["tasks"][0] if data else None


def check_sweep(directory: Path, earlier: dict | None, tasks: list[str], seeds: list[int],
                cell_args: list[str]) -> dict:
    """The sweep these arguments make: the recorded one (``earlier``, read from sweep.json) with any new tasks and
    seeds added (recorded), or a new one. A resume with other cell arguments is refused (its cells would not pair up
    with the finished ones)."""
    record = directory / "sweep.json"
    if earlier is not None and earlier["cell_args"] != cell_args:
        raise SystemExit(f"error: {directory} holds a sweep with other cell arguments ({' '.join(earlier['cell_args'])}"
                         f"; {record}); give the same arguments after -- to resume or extend it, or another --dir "
                         "for a new sweep")
    sweep = {"tasks": list(dict.fromkeys([*(earlier or {}).get("tasks", []), *tasks])),
             "seeds": list(dict.fromkeys([*(earlier or {}).get("seeds", []), *seeds])), "cell_args": cell_args}
    if sweep != earlier:
        directory.mkdir(parents=True, exist_ok=True)
        write_json(record, sweep)
    return sweep


def run_cells(directory: Path, tasks: list[str], seeds: list[int], cell_args: list[str], limit_s: float | None) -> int:
    """Run every unfinished cell in order within ``limit_s``; returns how many remain unfinished."""
    t0, longest = time.monotonic(), 0.0
    todo = []
    for task in tasks:
        for seed in seeds:
            cell = read_cell(cell_path(directory, task, seed))
            if cell is None:
                todo.append((task, seed))
            else:
                longest = max(longest, cell.get("wall_s", 0.0))
    for i, (task, seed) in enumerate(todo):
        left = None if limit_s is None else limit_s - (time.monotonic() - t0)
        if left is not None and (left <= 0 or longest > left):
            print(f"stopping with {len(todo) - i} cell(s) left: {left:.0f} s remain and the longest cell took "
                  f"{longest:.0f} s; run the same command again to go on", flush=True)
            return len(todo) - i
        out = cell_path(directory, task, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"cell {task} seed {seed} -> {out}", flush=True)
        cmd = [sys.executable, str(BENCH), *cell_args, "--tasks", task, "--seed", str(seed), "--out", str(out)]
        try:
            proc = subprocess.run(cmd, timeout=left)
        except subprocess.TimeoutExpired:
            print(f"cell {task} seed {seed} ran past the time limit: it runs again next time", flush=True)
            return len(todo) - i
        if proc.returncode != 0:
            raise SystemExit(f"error: cell {task} seed {seed} failed (exit {proc.returncode}); its log is above")
        cell = read_cell(out)
        longest = max(longest, cell.get("wall_s", 0.0) if cell else 0.0)
        summarize(directory, tasks, seeds)
    return 0


def outcomes(row: dict) -> list[int]:
    return [int(c) for c in row["outcomes"]]


def comparisons(cells: dict[tuple[str, int], dict]) -> dict[str, list[tuple[str, dict, dict]]]:
    """The rows to pair, in every finished cell that has both: ``{name: [(task, model_row, reference_row)]}``."""
    pairs: dict[str, list] = {}
    for (task, _), cell in sorted(cells.items()):
        rows = scored_rows(cell)

        def add(name: str, model: str, reference: str) -> None:
            if model in rows and reference in rows:
                pairs.setdefault(name, []).append((task, rows[model], rows[reference]))

        add("plain LoRA - zero-shot", "peft_lora", "zero_shot")
        add("maximal - plain LoRA", "supernet:maximal", "peft_lora")
        picks = sorted({n.partition(":")[2] for n in rows if n.startswith(("supernet:", "recover:"))} - {"maximal"})
        for pick in picks:  # lonas-ray's model of each pick: recovered when the run recovers, else as sliced
            ours = "recover" if f"recover:{pick}" in rows else "supernet"
            add(f"{ours} - plain LoRA @ {pick}", f"{ours}:{pick}", "peft_lora")
            for name in sorted(rows):  # every baseline of the same shape, at each share of lonas-ray's cost
                base, _, of = name.partition(":")
                if of == pick and base.split("@")[0] in BASELINES:
                    add(f"{ours} - {base} @ {pick}", f"{ours}:{pick}", name)
    return pairs


def finished_runs(directory: Path, tasks: list[str], seeds: list[int]) -> dict[tuple[str, int], dict]:
    """Every finished cell's whole JSON, by (task, seed)."""
    return {(t, s): r for t in tasks for s in seeds if (r := read_run(cell_path(directory, t, s))) is not None}


def summarize(directory: Path, tasks: list[str], seeds: list[int]) -> dict:
    """Pool every finished cell into ``DIR/summary.json`` (see the module doc) and return it."""
    runs = finished_runs(directory, tasks, seeds)
    cells = {key: run["tasks"][0] for key, run in runs.items()}  # each file read once, for rows and header
    pooled = {name: pooled_paired_difference([(task, outcomes(m), outcomes(r)) for task, m, r in pairs])
              for name, pairs in comparisons(cells).items()}
    quality: dict[str, dict] = {}
    for (task, _), cell in sorted(cells.items()):
        for row in cell["rows"]:
            entry = quality.setdefault(task, {}).setdefault(row["model"], {"quality": [], "task_loss": [],
                                                                           "speedup_vs_peft_lora": []})
            entry["quality"].append(row["quality"])
            entry["task_loss"].append(row["task_loss"])
            if row.get("speedup_vs_peft_lora"):
                entry["speedup_vs_peft_lora"].append(row["speedup_vs_peft_lora"])
    first = next(iter(runs.values()), {})  # the machine and model of the sweep's cells
    sweep = read_sweep(directory) or {}
    summary = {"what": "jobs/bench_robust.py: paired differences pooled over tasks and seeds",
               "date": max((r["date"] for r in runs.values()), default=None),
               "device": first.get("device"), "machine": first.get("machine"), "model": first.get("model"),
               "settings": {"tasks": tasks, "seeds": seeds, "cell_args": " ".join(sweep.get("cell_args", []))},
               "tasks": tasks, "seeds": seeds, "cells_done": [f"{t}.seed{s}" for t, s in sorted(cells)],
               "cells_left": [f"{t}.seed{s}" for t in tasks for s in seeds if (t, s) not in cells],
               "comparisons": pooled, "quality_by_seed": quality}
    summary["targets"] = judge(summary)
    write_json(directory / "summary.json", summary)
    return summary


def recorded_runs(directory: Path) -> dict[tuple[str, int], dict]:
    """The finished cells of the sweep ``directory`` records (its sweep.json's tasks and seeds)."""
    sweep = read_sweep(directory)
    if sweep is None:
        raise SystemExit(f"error: {directory} holds no sweep (no sweep.json): give the folder of a bench_robust sweep")
    return finished_runs(directory, sweep["tasks"], sweep["seeds"])


def changed_settings(pairs: list[tuple[dict, dict]]) -> dict[str, dict]:
    """The cell settings in which paired runs differ: ``{key: {"sweep": value, "reference": value}}``."""
    changed: dict[str, dict] = {}
    for mine, theirs in pairs:
        a, b = mine.get("settings", {}), theirs.get("settings", {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changed.setdefault(key, {"sweep": a.get(key), "reference": b.get(key)})
    return changed


def against(directory: Path, reference: Path) -> dict:
    """This sweep minus ``reference``, model by model, paired by task, seed and report example (the module doc);
    written to ``DIR/against_<reference name>.json`` and returned."""
    mine, theirs = recorded_runs(directory), recorded_runs(reference)
    keys = sorted(set(mine) & set(theirs))
    if not keys:
        raise SystemExit(f"error: {directory} and {reference} have no finished cell of the same task and seed: "
                         "run the same tasks and seeds in both")
    cells: dict[str, list] = {}
    for task, seed in keys:
        ours, refs = scored_rows(mine[(task, seed)]["tasks"][0]), scored_rows(theirs[(task, seed)]["tasks"][0])
        for model in sorted(set(ours) & set(refs)):
            if len(ours[model]["outcomes"]) != len(refs[model]["outcomes"]):
                raise SystemExit(f"error: {model} of {task} seed {seed} was scored on {len(ours[model]['outcomes'])} "
                                 f"report examples in {directory} and {len(refs[model]['outcomes'])} in {reference}: "
                                 "the sweeps' cells are not paired (run both with the same data settings)")
            cells.setdefault(model, []).append((task, outcomes(ours[model]), outcomes(refs[model])))
    first = mine[keys[0]]
    result = {"what": "jobs/bench_robust.py --against: one sweep's rows minus another's, paired by task, seed and "
                      "report example", "sweep": directory.name, "reference": reference.name,
              "command": f"python jobs/bench_robust.py --dir {directory} --against {reference}",
              "date": max(mine[k]["date"] for k in keys), "device": first.get("device"),
              "machine": first.get("machine"), "model": first.get("model"),
              "settings": {"changed": changed_settings([(mine[k], theirs[k]) for k in keys])},
              "cells": [f"{t}.seed{s}" for t, s in keys],
              "comparisons": {model: pooled_paired_difference(c) for model, c in cells.items()}}
    write_json(directory / f"against_{reference.name}.json", result)
    return result


def table(summary: dict) -> str:
    """A sweep's summary, or an ``--against`` result, as the terminal shows it."""
    done = (f"cells done {len(summary['cells_done'])}, left {len(summary['cells_left'])}" if "cells_done" in summary
            else f"{summary['sweep']} minus {summary['reference']} over {len(summary['cells'])} cell(s); settings "
                 f"changed: {json.dumps(summary['settings']['changed'])}")
    lines = [done,
             f"{'comparison':44} {'difference':>10}  {'95 % interval':>17}  verdict  tasks cells"]
    for name, c in summary["comparisons"].items():
        lo, hi = c["difference_ci95"]
        lines.append(f"{name:44} {c['difference']:+10.3f}  [{lo:+.3f}, {hi:+.3f}]  {c['verdict']:7}  "
                     f"{c['tasks']:5} {c['cells']:5}")
    if "targets" in summary:
        lines.append("issue 41's targets: " + line(summary["targets"]))
    return "\n".join(lines)


def main() -> int:
    argv = sys.argv[1:]
    cell_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, type=Path, help="the sweep's folder: sweep.json, cells/, summary.json")
    p.add_argument("--tasks", help="comma list of shipped tasks (default: the sweep's recorded ones; more join it)")
    p.add_argument("--seeds", help="comma list of seeds (default: the sweep's recorded ones; more join it)")
    p.add_argument("--time-limit", type=float, help="seconds: start no cell that would not end in time")
    p.add_argument("--summarize-only", action="store_true", help="pool the finished cells, run none")
    p.add_argument("--against", type=Path, help="another sweep's folder: pool this sweep's rows minus its rows of "
                   "the same model, task and seed into DIR/against_<name>.json (runs no cell)")
    args = p.parse_args(own)
    if args.against is not None:
        if args.tasks or args.seeds or cell_args or args.summarize_only or args.time_limit is not None:
            p.error("--against compares the finished cells of two sweeps and runs none: give only --dir and --against")
        print(table(against(args.dir, args.against)))
        return 0
    clash = [a for a in cell_args if a.split("=")[0] in OWN]
    if clash:
        p.error(f"{', '.join(clash)} after -- : this job sets --tasks, --seed and --out per cell; give tasks and "
                "seeds before --")
    earlier = read_sweep(args.dir)
    if earlier is not None:  # what is not given is the recorded sweep's
        args.tasks = args.tasks or ",".join(earlier["tasks"])
        args.seeds = args.seeds or ",".join(map(str, earlier["seeds"]))
        cell_args = cell_args or earlier["cell_args"]
    elif args.summarize_only:
        p.error(f"{args.dir} holds no sweep (no sweep.json): start one with --tasks, --seeds and -- ARGS")
    if not (args.tasks and args.seeds):
        p.error("give --tasks and --seeds (comma lists) for a new sweep")
    try:
        tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes whole numbers separated by commas, got {args.seeds!r}")
    if not args.summarize_only:
        sweep = check_sweep(args.dir, earlier, tasks, seeds, cell_args)
        tasks, seeds = sweep["tasks"], sweep["seeds"]
        run_cells(args.dir, tasks, seeds, cell_args, args.time_limit)
    print(table(summarize(args.dir, tasks, seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
