"""Tables of jobs/bench_quality.py, bench_sparse.py and bench_dims.py runs: accuracy per model, pick and compression."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from render_common import Row, Run, accuracy, fixed, mib, millions, pct, section, short, span, table, times

# --- bench_quality / bench_sparse / bench_dims rows ---

PICK = re.compile(r"pick_(\d+(?:\.\d+)?)")


def pick_label(pick: str, by: str = "params") -> str:
    match = PICK.fullmatch(pick)
    return f"pick at <= {100 * float(match.group(1)):.0f} % of the {by}" if match else pick


def model_label(row: Row, by: str) -> str:
    """A quality row's model, in words, from its ``kind:pick`` name and its recorded steps."""
    kind, _, pick = row["model"].rpartition(":")
    kind, pick = (kind, pick) if kind else (pick, "")
    steps = row.get("steps")
    words = {"zero_shot": "zero-shot", "peft_lora": f"plain PEFT LoRA, {steps} steps",
             "supernet": f"super-network {pick_label(pick, by)}" + (", as sliced" if pick != "maximal" else ""),
             "recover": f"{pick_label(pick, by)} + {steps} recovery steps",
             "prune_lora": f"prune-then-LoRA, {steps} steps, on the shape of the {pick_label(pick, by)}",
             "minitron": f"Minitron-style (distilled), {steps} steps, on the shape of the {pick_label(pick, by)}"}
    return words.get(kind, row["model"])


def params(row: Row) -> str:
    ratio = row.get("params_ratio")
    return millions(row["params"]) + (f" ({pct(ratio)})" if ratio not in (None, 1.0) else "")


def tasks(run: Run) -> list[dict[str, Any]]:
    return run.data["tasks"]


def by_model(task: dict[str, Any]) -> dict[str, Row]:
    return {row["model"]: row for row in task["rows"]}


def of_lora(row: Row, lora: Row | None) -> str:
    if "quality_vs_peft_lora" in row:
        return pct(row["quality_vs_peft_lora"])
    return pct(row["quality"] / lora["quality"]) if lora and lora["quality"] else "-"


def trained(row: Row, supernet: dict[str, Any] | None) -> str:
    """Training seconds: a recovery's ``train_s`` includes the super-adapter's, so the table shows what it added."""
    kind = row["model"].partition(":")[0]
    if kind == "recover" and supernet:
        return f"+{row['train_s'] - supernet['train_s']:.1f}"
    if kind == "supernet" and not row["model"].endswith(":maximal"):
        return ""
    return fixed(row.get("train_s")) if row.get("train_s") else "-"


def quality_rows(runs: list[Run]) -> str:
    """Every row of each run, as recorded: quality with interval, loss, latency, speed-up, training time."""
    names = short(runs)
    header = ["model", "params", "quality [95 %] (hits/n)", "of plain LoRA", "task loss", "latency ms (p90)",
              "speed-up vs plain LoRA", "trained s"]
    several = len(runs) > 1 or any(len(tasks(run)) > 1 for run in runs)
    body = []
    for run in runs:
        by = run.data["settings"].get("target_by", "params")
        for task in tasks(run):
            lora = by_model(task).get("peft_lora")
            for row in task["rows"]:
                cells = [model_label(row, by), params(row), accuracy(row), of_lora(row, lora),
                         fixed(row["task_loss"], 3),
                         f"{fixed(row['latency_ms'])} ({fixed(row['latency_p90_ms'])})",
                         times(row.get("speedup_vs_peft_lora")), trained(row, task.get("supernet"))]
                body.append(([f"{names[run.stem]}, {task['task']}"] if several else []) + cells)
    header = (["run, task"] if several else []) + header
    metrics = sorted({row["metric"] for run in runs for task in tasks(run) for row in task["rows"]})
    notes = [f"Quality is {' / '.join(metrics)} on each task's report examples (n), with its 95 % Wilson interval;",
             "latency is one request on the run's runtime "
             f"({', '.join(sorted({r['latency_runtime'] for run in runs for t in tasks(run) for r in t['rows']}))}).",
             "\"trained s\" is `train_s`: the super-network's picks share its training (shown on its maximal), a",
             "recovery shows the seconds it added to the super-adapter's `train_s`."]
    for run in runs:
        for task in tasks(run):
            notes.append(task_note(run, task, names if several else {}))
    return section(runs, table(header, body), notes)


def task_note(run: Run, task: dict[str, Any], names: dict[str, str]) -> str:
    """What a quality task records beside its rows: split sizes, epochs, the space and its training, wall time."""
    where = f"{names[run.stem]}, {task['task']}: " if names else f"{task['task']}: "
    bits = [f"{task.get('train_examples', '?')} training examples", f"{task.get('epochs', '?')} epochs"]
    supernet = task.get("supernet")
    if supernet:
        if supernet.get("space_size"):
            bits.append(f"space of {supernet['space_size']:.1e} sub-networks")
        bits.append(f"{supernet['passes']} sub-network passes in training, {supernet['train_s']} s")
        if supernet.get("teacher"):
            bits.append(f"teacher {supernet['teacher']}, distillation weight {supernet.get('distill')}")
    teacher = task.get("teacher")
    if isinstance(teacher, dict):
        bits.append(f"the {teacher['model']} teacher trained in {teacher['train_s']} s")
    if task.get("wall_s"):
        bits.append(f"task wall time {task['wall_s']} s")
    return where + ", ".join(bits) + "."


def run_settings(run: Run) -> str:
    s = run.data["settings"]
    space = Path(s["space_config"]).name if s.get("space_config") else "-"
    return f"`{space}`, distillation {s.get('distill')}, {s.get('steps')} steps"


def quality_variants(runs: list[Run]) -> str:
    """Runs that differ in one setting: each sub-network's quality beside the run's space and training."""
    names = short(runs)
    header = ["run (space, distillation, steps)", "space size", "model", "params", "quality [95 %] (hits/n)"]
    body = []
    for run in runs:
        for task in tasks(run):
            shown = [row for row in task["rows"] if row["model"] != "zero_shot"]
            for i, row in enumerate(shown):
                body.append([f"{names[run.stem]}: {run_settings(run)}" if i == 0 else "",
                             f"{task['supernet']['space_size']:.1e}" if i == 0 else "",
                             model_label(row, "params"), params(row), accuracy(row)])
    return section(runs, table(header, body))


def sliced_recovered(runs: list[Run]) -> str:
    """One row per run: plain LoRA, the maximal, and each pick as sliced and after its recovery."""
    names = short(runs)
    first = tasks(runs[0])[0]
    picks = [p for p in first["supernet"]["picks"] if p != "maximal"]
    header = ["run", "teacher, weight", "plain LoRA", "maximal"]
    header += [f"{p} ({pct(first['supernet']['picks'][p]['params_ratio'])}), sliced -> recovered" for p in picks]
    header += ["super-adapter trained s", "teacher trained s"]
    body = []
    for run in runs:
        task = tasks(run)[0]
        rows, supernet = by_model(task), task["supernet"]
        cells = [names[run.stem], f"{supernet.get('teacher', '-')}, {supernet.get('distill')}",
                 accuracy(rows["peft_lora"]) if "peft_lora" in rows else "not in this run",
                 accuracy(rows["supernet:maximal"])]
        for p in picks:
            sliced, recovered = rows[f"supernet:{p}"], rows.get(f"recover:{p}")
            cells.append(f"{sliced['quality']:.3f} -> {accuracy(recovered)}" if recovered else accuracy(sliced))
        teacher = task.get("teacher")
        cells += [fixed(supernet["train_s"]), fixed(teacher["train_s"]) if isinstance(teacher, dict) else "-"]
        body.append(cells)
    return section(runs, table(header, body))


def blocks_skipped(config: dict[str, Any]) -> int:
    return sum(1 for key, keep in config.items() if key.startswith("keep.") and keep is False)


def target_label(pick: str, info: dict[str, Any], row: Row) -> str:
    """A pick as its target and what it came to: latency ratio, params, blocks skipped (all from the JSON)."""
    bits = []
    if "latency_ratio" in info:
        bits.append(f"latency {info['latency_ratio']:.3f}")
    bits.append(f"{millions(row['params'])}, {pct(info['params_ratio'])} of the params")
    skipped = blocks_skipped(info.get("config", {}))
    if skipped:
        bits.append(f"{skipped} blocks skipped")
    return f"{pick} ({', '.join(bits)})"


def per_target(runs: list[Run]) -> str:
    """Per pick: lonas-ray's sliced and recovered model beside each baseline trained on the same shape."""
    names = short(runs)
    main = tasks(runs[0])[0]
    picks = {p: info for p, info in main["supernet"]["picks"].items() if p != "maximal"}
    rows = by_model(main)
    columns: list[tuple[Run, str, Row]] = []  # (run, method, one of its rows) for every baseline present
    for run in runs:
        seen = {row["model"].partition(":")[0]: row for row in tasks(run)[0]["rows"]}
        columns += [(run, m, seen[m]) for m in ("prune_lora", "minitron") if m in seen]
    method = {"prune_lora": "prune-then-LoRA", "minitron": "Minitron-style (distilled)"}
    steps = next((r["steps"] for r in main["rows"] if r["model"].startswith("recover:")), None)
    header = ["target", f"lonas-ray, sliced -> after {steps} recovery steps"]
    header += [f"{method[m]}, {r['steps']} steps" + (f" ({names[run.stem]})" if len(runs) > 1 else "")
               for run, m, r in columns]
    body = []
    for pick, info in picks.items():
        sliced, recovered = rows[f"supernet:{pick}"], rows.get(f"recover:{pick}")
        cells = [target_label(pick, info, sliced),
                 f"{sliced['quality']:.3f} -> {accuracy(recovered)}" if recovered else accuracy(sliced)]
        for run, m, _ in columns:
            row = by_model(tasks(run)[0]).get(f"{m}:{pick}")
            cells.append(f"{accuracy(row)}, {fixed(row['train_s'])} s" if row else "not in the JSON")
        body.append(cells)
    lora, maximal = rows.get("peft_lora"), rows["supernet:maximal"]
    supernet = main["supernet"]
    recoveries = [r["train_s"] - supernet["train_s"] for r in main["rows"] if r["model"].startswith("recover:")]
    notes = [f"Plain PEFT LoRA: {accuracy(lora)}." if lora else "",
             f"The super-adapter's maximal: {accuracy(maximal)}.",
             f"lonas-ray's cost: {supernet.get('total_passes', supernet['passes'])} sub-network passes,"
             f" {supernet['train_s']} s of super-adapter training"
             + (f", {span(recoveries, lambda s: f'{s:.1f}')} s per recovery" if recoveries else "")
             + (f" ({supernet['recover_s']} s of recovery in all)" if supernet.get("recover_s") else "")
             + (f", {supernet['search']['search_s']} s of search" if supernet.get("search") else "")
             + (f", {supernet['total_s']} s in all" if supernet.get("total_s") else "") + ".",
             f"The plain-LoRA teacher trained in {main['teacher']['train_s']} s."
             if isinstance(main.get("teacher"), dict) else "",
             "A baseline cell ends with its training seconds."]
    return section(runs, table(header, body), notes)


# --- bench_sparse ---


def compression_label(row: Row) -> str:
    """A compressed base in words, from the row's recorded compression settings."""
    comp = row.get("compression") or {}
    sparsity, quant = comp.get("sparsity"), comp.get("quantization")
    bits = []
    if sparsity:
        bits.append(f"Wanda {sparsity['pattern']}" if sparsity["pattern"] != "unstructured"
                    else f"Wanda {100 * sparsity['level']:.0f} %")
    if quant:
        bits.append(f"INT4 g{quant['group_size']}" + (" (dense)" if not sparsity else ""))
    base = " + ".join(bits)
    if quant and not quant.get("qa"):
        return base + ", merged then quantized (no QA)"
    return base + (", QA" if quant else ", SparsePEFT")


def sparse(runs: list[Run]) -> str:
    """Dense plain LoRA and each compressed super-network of every run, with sizes, export error and latency."""
    names = short(runs)
    header = ["run", "task", "model", "quality [95 %] (hits/n)", "of plain LoRA", "non-zero params",
              "weights on disk (MiB)", "INT4 export error", "latency ms", "trained s"]
    body = []
    for run in runs:
        for task in tasks(run):
            for row in task["rows"]:
                pick = row["model"].rpartition(":")[2]
                label = ("plain PEFT LoRA, dense, " + f"{row['steps']} steps" if row["model"] == "peft_lora"
                         else f"{compression_label(row)}, {pick_label(pick)}")
                body.append([names[run.stem], task["task"], label, accuracy(row),
                             pct(row.get("quality_vs_peft_lora")), millions(row.get("nonzero_params")),
                             mib(row.get("weight_bytes_on_disk")), fixed(row.get("int4_rel_err"), 3),
                             fixed(row["latency_ms"]), fixed(row["train_s"])])
    notes = ["\"INT4 export error\" is `int4_rel_err`: max |diff| / max |ref| between the reloaded INT4 export's",
             "logits and the training-time super-network's. Plain LoRA's weights on disk are not recorded in these",
             "JSON files. A pick shares the super-network's training time."]
    notes += [task_note(run, task, names) for run in runs for task in tasks(run)]
    return section(runs, table(header, body), notes)


# --- bench_dims ---


def dims(runs: list[Run]) -> str:
    """Per cut: quality (first JSON, sliced and recovered) beside CPU latency (second JSON) and the GPU's."""
    quality_run, latency_run = runs
    quality_rows_ = by_model(tasks(quality_run)[0])
    latency_rows = by_model(tasks(latency_run)[0])
    header = ["cut", "params", "CPU ms (saved)", "GPU ms", "quality, sliced -> recovered [95 %] (hits/n)",
              "points lost (recovered)", "points per 10 % of CPU latency saved", "same sub-network id in both"]
    body = []
    for name, row in quality_rows_.items():
        if ":" not in name:
            continue
        cpu = latency_rows[name]
        saved = cpu["sliced"]["latency_saved"]
        lost = row["recovered"]["points_lost"]
        body.append([name, millions(row["params"]), f"{fixed(cpu['latency_ms'])} ({pct(saved, 1)})",
                     fixed(row["latency_ms"]), f"{row['quality']:.3f} -> {accuracy(row, 'recovered_')}",
                     fixed(lost), fixed(lost / (10 * saved)) if saved > 0 else "-",
                     "yes" if cpu.get("subnet_id") == row.get("subnet_id") else "no"])
    maximal, cpu_max = quality_rows_["maximal"], latency_rows["maximal"]
    notes = [f"The maximal: {accuracy(maximal)}, {fixed(cpu_max['latency_ms'])} ms on the CPU,",
             f"{fixed(maximal['latency_ms'])} ms on the GPU;",
             f"plain PEFT LoRA {accuracy(quality_rows_['peft_lora'])}." if "peft_lora" in quality_rows_ else "",
             "Points lost and points per 10 % combine the first JSON's recovered `points_lost` with the second's",
             "`latency_saved`. Where the sub-network ids differ, the two runs' block orders chose different blocks",
             "of the same count.",
             f"Recovery: {span([r['recover_s'] for r in quality_rows_.values() if 'recover_s' in r], fixed)} s a cut."]
    return section(runs, table(header, body), notes)
