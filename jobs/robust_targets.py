"""Issue 41's targets judged on a bench_robust sweep's summary, so a sweep's verdict is computed, not read off a table.

The targets, as the issue states them and as judged here:
- scope: every equal-cost table over at least 5 shipped tasks and 3 seeds;
- maximal: the super-adapter's maximal within plain LoRA's interval on every task, judged by its paired difference
  (``maximal - plain LoRA``): no task whose interval lies below 0;
- wins: lonas-ray's model (recovered when the sweep recovers) minus each baseline of the same shape (prune-then-LoRA,
  the Minitron-style row) wins beyond the pooled interval at every target and loses on no task; each baseline row
  the sweep has counts, each share of lonas-ray's cost as its own (the issue's recipe has one, a third: equal total
  cost over three targets);
- keeps: on at least 4 of 5 tasks (4/5 of the tasks) some pick keeps >= 97 % of plain LoRA's accuracy (mean over
  seeds) at >= 1.3x plain LoRA's measured speed (mean over seeds); a task where no pick does names the pick that
  keeps the most.
Each target says ``met`` (true, false, or null when the sweep has no rows to judge it by) and why.
"""

from __future__ import annotations

import math
import statistics

from lonas_ray.stats import verdict

MIN_TASKS, MIN_SEEDS = 5, 3
KEEP, SPEEDUP, TASK_SHARE = 0.97, 1.3, 0.8
MAXIMAL = "maximal - plain LoRA"
OURS = ("recover", "supernet")


def lost_tasks(comparison: dict) -> list[str]:
    """The tasks whose own interval of the difference lies below 0 (the pooled comparison's ``loss``, per task)."""
    return sorted(t for t, v in comparison["per_task"].items() if verdict(*v["difference_ci95"]) == "loss")


def scope(summary: dict) -> dict:
    seeds = [len(models["peft_lora"]["quality"]) for models in summary["quality_by_seed"].values()
             if "peft_lora" in models]
    tasks, fewest = len(seeds), min(seeds, default=0)
    return {"met": tasks >= MIN_TASKS and fewest >= MIN_SEEDS, "tasks": tasks, "fewest_seeds": fewest,
            "needs": f">= {MIN_TASKS} tasks x >= {MIN_SEEDS} seeds"}


def maximal(summary: dict) -> dict:
    c = summary["comparisons"].get(MAXIMAL)
    if c is None:
        return {"met": None, "why": "no maximal and plain LoRA rows in this sweep"}
    lost = lost_tasks(c)
    return {"met": not lost, "tasks_lost": lost, "tasks": c["tasks"]}


def split(name: str) -> tuple[str, str, str] | None:
    """``recover - prune_lora@0.333 @ pick_0.90`` -> (``recover``, ``prune_lora@0.333``, ``pick_0.90``); None for
    comparisons that are not lonas-ray's model against a baseline."""
    left, sep, pick = name.rpartition(" @ ")
    ours, dash, baseline = left.partition(" - ")
    if not sep or not dash or ours not in OURS or baseline == "plain LoRA":
        return None
    return ours, baseline, pick


def wins(summary: dict) -> dict:
    by_baseline: dict[str, dict] = {}
    for name, c in summary["comparisons"].items():
        parts = split(name)
        if parts is None:
            continue
        _, baseline, pick = parts
        entry = by_baseline.setdefault(baseline, {"picks": {}, "tasks_lost": {}})
        entry["picks"][pick] = c["verdict"]
        if lost := lost_tasks(c):
            entry["tasks_lost"][pick] = lost
    for entry in by_baseline.values():
        entry["met"] = all(v == "win" for v in entry["picks"].values()) and not entry["tasks_lost"]
    if not by_baseline:
        return {"met": None, "why": "no baseline rows (prune_lora, minitron) in this sweep"}
    return {"met": all(e["met"] for e in by_baseline.values()), "baselines": by_baseline}


def keeps(summary: dict) -> dict:
    tasks: dict[str, dict] = {}
    timed = False
    for task, models in summary["quality_by_seed"].items():
        lora = models.get("peft_lora")
        if not lora or not statistics.mean(lora["quality"]):
            continue
        best = None
        for model, v in models.items():
            kind, _, pick = model.partition(":")
            if kind not in OURS or pick in ("", "maximal") or (kind == "supernet" and f"recover:{pick}" in models):
                continue
            kept = statistics.mean(v["quality"]) / statistics.mean(lora["quality"])
            speedup = statistics.mean(v["speedup_vs_peft_lora"]) if v.get("speedup_vs_peft_lora") else None
            timed = timed or speedup is not None
            ok = kept >= KEEP and speedup is not None and speedup >= SPEEDUP
            row = {"model": model, "kept": round(kept, 4), "speedup": round(speedup, 3) if speedup else None, "met": ok}
            if best is None or (ok, kept) > (best["met"], best["kept"]):
                best = row
        if best is not None:
            tasks[task] = best
    needed = max(1, math.ceil(TASK_SHARE * len(tasks)))
    if not tasks:
        return {"met": None, "why": "no picks with plain LoRA rows in this sweep"}
    if not timed:
        return {"met": None, "why": "no speed-up measured (the cells ran with --latency-repeats 0)", "tasks": tasks}
    count = sum(t["met"] for t in tasks.values())
    return {"met": count >= needed, "tasks_met": count, "needed": needed, "tasks": tasks}


def judge(summary: dict) -> dict:
    """Every target judged on ``summary`` (bench_robust's summary.json), and ``met``: all of them met."""
    result = {"scope": scope(summary), "maximal": maximal(summary), "wins": wins(summary), "keeps": keeps(summary),
              "device": summary.get("device")}
    result["met"] = all(result[k]["met"] is True for k in ("scope", "maximal", "wins", "keeps"))
    return result


def line(targets: dict) -> str:
    """One sentence per target, for the terminal and the rendered docs."""
    def state(t: dict) -> str:
        return "met" if t["met"] else "not judged" if t["met"] is None else "missed"

    s, m, w, k = (targets[x] for x in ("scope", "maximal", "wins", "keeps"))
    parts = [f"scope {state(s)} ({s['tasks']} task(s), fewest seeds {s['fewest_seeds']}; {s['needs']})",
             f"maximal {state(m)}" + (f" (lost on {', '.join(m['tasks_lost'])})" if m.get("tasks_lost") else
                                       f" ({m['why']})" if "why" in m else "")]
    if "baselines" in w:
        parts.append("wins " + state(w) + " (" + "; ".join(
            f"vs {b}: " + ", ".join(f"{p} {v}" for p, v in sorted(e["picks"].items()))
            + (f", lost on {sorted({t for ts in e['tasks_lost'].values() for t in ts})}" if e["tasks_lost"] else "")
            for b, e in sorted(w["baselines"].items())) + ")")
    else:
        parts.append(f"wins {state(w)} ({w['why']})")
    parts.append(f"keeps >= {KEEP:.0%} at >= {SPEEDUP}x {state(k)}" + (
        f" ({k['tasks_met']} of {len(k['tasks'])} task(s), {k['needed']} needed)" if "tasks_met" in k
        else f" ({k['why']})"))
    return "; ".join(parts) + "."
