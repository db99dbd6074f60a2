"""Tables of jobs/bench_robust.py sweeps and of their --against results."""

from __future__ import annotations

import json
import statistics

from render_common import Run, fixed, interval_of, section, short, table
from robust_targets import line as targets_line


def robust(runs: list[Run]) -> str:
    """jobs/bench_robust.py sweeps: every pooled comparison with its interval, verdict, tasks, cells and examples;
    several sweeps side by side (a lever per sweep), labelled by what their names do not share."""
    names = short(runs)
    rows = []
    for run in runs:
        for name, c in run.data["comparisons"].items():
            per_task = "; ".join(f"{t} {v['difference']:+.3f}" for t, v in c["per_task"].items())
            rows.append([names[run.stem], name, f"{c['difference']:+.3f}", interval_of(c["difference_ci95"]),
                         c["verdict"], str(c["tasks"]), str(c["cells"]), str(c["examples"]), per_task])
    header = ["sweep", "comparison", "difference", "95 % interval", "verdict", "tasks", "cells", "examples",
              "per task"]
    means = [[names[run.stem], task, model, fixed(statistics.mean(v["quality"]), 3),
              fixed(statistics.mean(v["task_loss"]), 3), str(len(v["quality"]))]
             for run in runs for task, models in run.data["quality_by_seed"].items() for model, v in models.items()]
    by_row = table(["sweep", "task", "model", "accuracy, mean over seeds", "task loss, mean", "seeds"], means)
    left = [f"{names[r.stem]}: {len(r.data['cells_left'])} cell(s) not run yet" for r in runs if r.data["cells_left"]]
    judged = [[names[r.stem], "met" if r.data["targets"]["met"] else "not met", targets_line(r.data["targets"])]
              for r in runs if "targets" in r.data]
    header_t = ["sweep", "issue 41's targets", "each (`jobs/robust_targets.py`)"]
    targets = "\n\n" + table(header_t, judged) if judged else ""
    return section(runs, table(header, rows) + "\n\n" + by_row + targets, [". ".join(left) + "." if left else ""])


def recipes(runs: list[Run]) -> str:
    """jobs/bench_robust.py --against results: one sweep's rows minus another's (a lever's own effect), model by
    model, with the settings the two sweeps differ in."""
    rows = []
    for run in runs:
        d = run.data
        label = " - ".join(short([Run(d["sweep"], {}), Run(d["reference"], {})]).values())
        changed = "; ".join(f"{k} {json.dumps(v['reference'])} -> {json.dumps(v['sweep'])}"
                            for k, v in d["settings"]["changed"].items())
        for model, c in d["comparisons"].items():
            rows.append([label, model, f"{c['difference']:+.3f}", interval_of(c["difference_ci95"]), c["verdict"],
                         str(c["tasks"]), str(c["cells"]), str(c["examples"]), changed])
    header = ["sweeps", "model", "difference", "95 % interval", "verdict", "tasks", "cells", "examples",
              "settings changed"]
    return section(runs, table(header, rows))
