"""What every benchmark table shares: one JSON run, rounding, tables, and each run's provenance heading."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class Run(NamedTuple):
    """One benchmark JSON: its file stem (how tables name it) and its parsed content."""

    stem: str
    data: dict[str, Any]


Row = dict[str, Any]

# --- formatting: one place for rounding, so every table rounds alike ---


def fixed(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def pct(ratio: float | None, digits: int = 0) -> str:
    return "-" if ratio is None else f"{100 * ratio:.{digits}f} %"


def millions(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def interval(q: float, ci: list[float]) -> str:
    return f"{q:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def accuracy(row: Row, prefix: str = "") -> str:
    """Quality with its 95 % interval and hits/n, the way every accuracy in the document is shown."""
    q, ci, hits = row[f"{prefix}quality"], row[f"{prefix}ci95"], row[f"{prefix}hits"]
    return f"{interval(q, ci)} ({hits}/{row['examples']})"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def span(values: Iterable[float], fmt: Callable[[float], str]) -> str:
    """A range as the prose quotes it, from the smallest to the largest value."""
    vals = sorted(values)
    low, high = fmt(vals[0]), fmt(vals[-1])
    return low if low == high else f"{low}-{high}"


# --- provenance: what each JSON records about its run ---


def machine(data: dict[str, Any]) -> str | None:
    """The machine as the JSON describes it (device or GPUs, CPUs, torch, platform); None when it records none."""
    m = data.get("machine") or {}
    device = data.get("device")
    gpus = m.get("gpus") or ([m["gpu"]] if m.get("gpu") else [])
    parts = []
    if gpus:
        parts.append(gpus[0] + (f" x{len(gpus)}" if len(gpus) > 1 else ""))
    elif device and device != "cpu":
        parts.append(device)
    elif m:
        parts.append("CPU" + (f" ({m['cpu_model']})" if m.get("cpu_model") else ""))
    for key, unit in (("logical_cores", "logical cores"), ("cores", "cores"), ("cpus", "CPUs"), ("threads", "threads")):
        if m.get(key):
            parts.append(f"{m[key]} {unit}")
            break
    versions = {**{k: m[k] for k in ("torch", "transformers") if m.get(k)}, **data.get("versions", {})}
    parts += [f"{name} {version}" for name, version in versions.items()]
    if m.get("platform"):
        parts.append(f"`{m['platform']}`")
    return ", ".join(parts) or None


def settings(data: dict[str, Any]) -> str | None:
    """The run's recorded settings, flattened: what its prose may quote about how it ran."""
    found = dict(data.get("settings") or {})
    found.update({k: data[k] for k in ("weights", "dtype", "batch", "seq_len", "evaluations") if k in data})
    if isinstance(data.get("config"), dict) and isinstance(data["config"].get("search"), dict):
        found.update({f"search.{k}": v for k, v in data["config"]["search"].items()})
    if isinstance(data.get("model_shape"), dict):
        shape = data["model_shape"]
        found["model_shape"] = f"{shape['num_hidden_layers']} layers x {shape['hidden_size']}"
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, list | dict) else v}" for k, v in found.items()) or None


def provenance(run: Run) -> str:
    """One line per JSON, saying what it records and what it does not (nothing is filled in from elsewhere)."""
    data = run.data
    date = data.get("date") or (f"{data['created'][:10]} (`created`)" if data.get("created") else None)
    described = machine(data)
    recorded = settings(data)
    parts = [f"date {date}" if date else "date not recorded in the JSON",
             f"machine: {described}" if described else "machine not recorded in the JSON",
             f"command: `{data['command']}`" if data.get("command") else "command not recorded in the JSON"]
    if recorded:
        parts.append(f"settings: {recorded}")
    where = f"{run.stem}/summary.json" if "cells_done" in data else f"{run.stem}.json"  # a sweep is a folder
    return f"- `jobs/results/{where}`: " + "; ".join(parts) + "."


def heading(runs: list[Run]) -> str:
    return "Rendered from:\n\n" + "\n".join(provenance(run) for run in runs)


def short(runs: list[Run]) -> dict[str, str]:
    """Each run's stem less the prefix all share, to label rows of a table drawn from several JSON files."""
    if len(runs) == 1:
        return {runs[0].stem: runs[0].stem}
    parts = [run.stem.split("_") for run in runs]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return {run.stem: "_".join(p[common:]) for run, p in zip(runs, parts)}


def section(runs: list[Run], body: str, notes: Iterable[str] = ()) -> str:
    notes = [n for n in notes if n]
    return heading(runs) + "\n\n" + body + ("\n\n" + " ".join(notes) if notes else "")




def interval_of(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"
