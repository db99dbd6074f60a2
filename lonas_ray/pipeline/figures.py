"""The pipeline's figures, gathered from the stage outputs into one dict (``summary.json``).

Pure functions over the output directory's tables: which sub-networks become
models (``select_models``), and per model its quality, counts and latency on
every pool next to the plain-LoRA baseline's and the base model's zero-shot
(``collect``), whether any fine-tuned model beats that zero-shot row beyond
noise (``fine_tuning_verdict``) and whether any compressed model is worth deploying
against plain LoRA (``deployment_verdict``). The report, the model cards, the run's printed
table and ``summary.json`` are all rendered from this one dict, so they agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lonas_ray.crosscheck import JUDGE_FILE
from lonas_ray.merge.save import MANIFEST
from lonas_ray.pipeline.config import BASELINE_DIR as BASELINE
from lonas_ray.pipeline.export import RECOVERY
from lonas_ray.pipeline.ranking import RANKING
from lonas_ray.search.driver import FINAL, RESULTS, SUMMARY, read_finals, rows_by_pool
from lonas_ray.search.metric import accuracy_interval

ZERO_SHOT = "zero_shot"
LATENCY_KEYS = ("latency_ms", "latency_p90_ms", "latency_runtime", "prefill_ms", "decode_ms")
COUNT_KEYS = ("params", "nonzero_params", "macs", "weight_bytes")


def select_models(pareto_rows: Sequence[Mapping[str, Any]], pools_summary: Mapping[str, Any], pools: Sequence[str],
                  select: str) -> dict[str, dict]:
    """subnet id -> {config, roles}: each pool's picks, or every member of every pool's latency front."""
    by_id = {r["subnet_id"]: r for r in pareto_rows}
    chosen: dict[str, dict] = {}

    def add(sid: str | None, role: str) -> None:
        if sid is None or sid not in by_id:
            return
        entry = chosen.setdefault(sid, {"config": row_config(by_id[sid]), "roles": []})
        if role not in entry["roles"]:
            entry["roles"].append(role)

    for pool in pools:
        info = pools_summary.get(pool, {})
        for front in ("latency", "params"):
            add(info.get(front, {}).get("pick"), f"{front} pick on {pool}")
        if select == "front":
            for r in pareto_rows:
                if r["pool"] == pool and r["front"] == "latency" and r["member"]:
                    add(r["subnet_id"], f"latency front on {pool}")
    return chosen


def ranked_models(ranking: Mapping[str, Any], pareto_rows: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """subnet id -> {config, roles} of recover-then-rank's winners (``ranking.json``, ``pipeline.ranking``)."""
    by_id = {r["subnet_id"]: r for r in pareto_rows}
    chosen: dict[str, dict] = {}
    for role, target in ranking["targets"].items():
        if target["chosen"] is not None:
            chosen.setdefault(target["chosen"], {"config": row_config(by_id[target["chosen"]]), "roles": []})
            chosen[target["chosen"]]["roles"].append(f"best after recovery of {len(target['candidates'])} at {role}")
    return chosen


def row_config(row: Mapping[str, Any]) -> dict:
    c = row["config"]
    return json.loads(c) if isinstance(c, str) else dict(c)


def latency_by_pool(rows: Mapping[str, Mapping[str, dict]], sid: str) -> dict[str, dict]:
    """pool -> the latency figures of ``sid``'s row on that pool (pools without a row are left out)."""
    return {pool: {k: by_id[sid].get(k) for k in LATENCY_KEYS} for pool, by_id in rows.items() if sid in by_id}


def model_figures(sid: str, rows: Mapping[str, Mapping[str, dict]], finals: Mapping[str, Mapping[str, Any]],
                  pools: Sequence[str]) -> dict[str, Any]:
    """Quality (final, full-set figure when there is one), counts and latency per pool of one sub-network."""
    first = next(by_id[sid] for pool, by_id in rows.items() if sid in by_id)
    final = finals.get(sid)
    figures = {
        "subnet_id": sid,
        "config": first["config"] if isinstance(first["config"], dict) else json.loads(first["config"]),
        "quality": final["quality"] if final else first["quality"],
        "quality_metric": first["quality_metric"],
        "loss": final["loss"] if final else first["loss"],
        "task_loss": final.get("task_loss") if final else first.get("task_loss"),
        "eval_examples": final["examples"] if final else first["eval_examples"],
        **{k: first[k] for k in COUNT_KEYS},
        "latency": latency_by_pool(rows, sid),
    }
    interval = accuracy_interval(figures["quality_metric"], figures["quality"], figures["eval_examples"])
    figures["quality_ci95"] = list(interval) if interval else None
    figures["missing_pools"] = [p for p in pools if p not in figures["latency"]]
    return figures


def compare(model: dict[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add the figures relative to the baseline: quality delta, params ratio, per-pool speed-up."""
    if baseline is None:
        return model
    model = dict(model, quality_delta=model["quality"] - baseline["quality"],
                 params_ratio=model["params"] / baseline["params"])
    for pool, lat in model["latency"].items():
        base = baseline["latency"].get(pool, {}).get("latency_ms")
        lat["speedup"] = base / lat["latency_ms"] if base and lat.get("latency_ms") else None
    return model


def reference_figures(results: Path, pools: Sequence[str], **extra: Any) -> dict[str, Any] | None:
    """The figures of a reference run's one sub-network (baseline, zero-shot), or None if it was not run."""
    if not results.exists():
        return None
    rows = {pool: rows_by_pool(results, pool) for pool in pools}
    sid = next((s for by_id in rows.values() for s in by_id), None)
    return None if sid is None else dict(model_figures(sid, rows, {}, pools), **extra)


def recovered(figures: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """A recovery fine-tuned export's own figures in place of the search's (kept as ``recovery.before``)."""
    path = model_dir / RECOVERY
    if not path.is_file():
        return figures
    rec = json.loads(path.read_text())
    before = {k: figures[k] for k in ("quality", "loss", "task_loss", "eval_examples", "quality_ci95")}
    out = dict(figures, quality=rec["quality"], loss=rec["loss"], task_loss=rec["task_loss"],
               eval_examples=rec["examples"], recovery={"steps": rec["steps"], "seconds": rec.get("seconds"),
                                                        "teacher": (rec.get("distill") or {}).get("teacher"),
                                                        "before": before})
    interval = accuracy_interval(rec["metric"], rec["quality"], rec["examples"])
    out["quality_ci95"] = list(interval) if interval else None
    return out


def judged(model_dir: Path) -> dict[str, Any] | None:
    """lm-eval's cross-check of an exported model (``crosscheck.Verdict`` as a dict), if the export made one."""
    path = model_dir / JUDGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _beats(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """``a`` is better than ``b`` beyond noise: their 95 % intervals do not overlap."""
    ca, cb = a.get("quality_ci95"), b.get("quality_ci95")
    return bool(ca and cb and ca[0] > cb[1])


def _name(model: Mapping[str, Any]) -> str:
    return BASELINE if model.get("path") == f"models/{BASELINE}" else model["subnet_id"]


def fine_tuning_verdict(zero_shot: Mapping[str, Any] | None, trained: Sequence[Mapping[str, Any]]) -> dict | None:
    """Did fine-tuning help? Which trained models beat (or lose to) the untouched base model beyond noise.

    Non-overlapping Wilson intervals are the test: conservative, and what a reader
    of the table can check by eye. None when there is no zero-shot row or interval.
    """
    if zero_shot is None or not zero_shot.get("quality_ci95"):
        return None
    better = [_name(m) for m in trained if _beats(m, zero_shot)]
    worse = [_name(m) for m in trained if _beats(zero_shot, m)]
    lo, hi = zero_shot["quality_ci95"]
    base = (f"the base model zero-shot ({zero_shot['quality_metric']} {zero_shot['quality']:.4f}, "
            f"[{lo:.3f}, {hi:.3f}], {zero_shot['eval_examples']} examples)")
    level = [_name(m) for m in trained if _name(m) not in better + worse]
    if better:
        text = f"{len(better)} of {len(trained)} fine-tuned models beat {base} beyond both 95 % intervals."
        if level:
            text += f" Not beyond noise: {', '.join(level)}."
    else:
        text = (f"Smoke run: no fine-tuned model beats {base} beyond the 95 % intervals, so this run shows that the "
                "pipeline works, not that its models are worth deploying. A real run trains for a few epochs "
                "(train.optim.steps, baseline.steps), on a task where fine-tuning matters (README: Data), and "
                "scores more examples (quality.final_examples).")
    if worse:
        text += f" {len(worse)} model(s) are worse than the untouched base model beyond noise: {', '.join(worse)}."
    return {"real_gain": bool(better), "better": better, "worse": worse, "level": level, "text": text}


# What "worth deploying" means in the deployment verdict: against plain LoRA, at least this share of its quality
# at this measured speed-up on some pool (the quick start's goal; README "Run").
MIN_KEPT, MIN_SPEEDUP = 0.9, 1.2


def deployment_verdict(baseline: Mapping[str, Any] | None, models: Sequence[Mapping[str, Any]]) -> dict | None:
    """Is any exported sub-network a compressed model worth deploying? Said plainly either way.

    A model counts when it is smaller than plain LoRA's, keeps at least ``MIN_KEPT`` of its quality and is at
    least ``MIN_SPEEDUP`` x faster on some pool. None without a baseline (or one that scored 0) to compare to.
    """
    if baseline is None or not baseline.get("quality"):
        return None

    def figures(m: Mapping[str, Any]) -> tuple[float, float, str | None]:
        best = max(((lat.get("speedup") or 0.0, pool) for pool, lat in m["latency"].items()), default=(0.0, None))
        return m["quality"] / baseline["quality"], best[0], best[1]

    compressed = [(m, *figures(m)) for m in models if m["params"] < baseline["params"]]  # (model, kept, x, pool)
    eps = 1e-9  # "at least 90 %" includes 0.72 / 0.80, whatever the floating-point division gives
    worthy = [c for c in compressed if c[1] >= MIN_KEPT - eps and c[2] >= MIN_SPEEDUP - eps]
    goal = f"at least {MIN_KEPT:.0%} of plain LoRA's quality at {MIN_SPEEDUP:.1f}x its latency"
    what_helps = ("Train longer, use a narrower space, or rank after recovery (export.select: targets with "
                  "export.recover_steps): docs/benchmarks.md.")
    if worthy:
        m, kept, speedup, pool = max(worthy, key=lambda c: c[2])
        text = (f"Worth deploying: {len(worthy)} compressed model(s) keep {goal}; the fastest, "
                f"{m['subnet_id']}, keeps {kept:.0%} at {speedup:.2f}x on {pool}.")
    elif not compressed:
        text = (f"No compressed model worth deploying: every exported model is the uncompressed maximal (the goal: "
                f"{goal}). {what_helps}")
    else:
        _, kept, speedup, pool = max(compressed, key=lambda c: c[1])
        text = (f"No compressed model worth deploying yet (the goal: {goal}): the best-kept compressed model keeps "
                f"{kept:.0%} at {speedup:.2f}x on {pool}. {what_helps}")
    return {"worth_deploying": [c[0]["subnet_id"] for c in worthy], "min_kept": MIN_KEPT, "min_speedup": MIN_SPEEDUP,
            "text": text}


def compression(out: Path, chosen: Mapping[str, dict]) -> dict | None:
    """What was done to the base (sparsity, quantization, export format), from an exported model's manifest."""
    for sid in chosen:
        path = out / f"models/{sid}" / MANIFEST
        if path.is_file():
            return json.loads(path.read_text()).get("compression")
    return None


def collect(out: Path, pools: Sequence[str], chosen: Mapping[str, dict], *, stages: Mapping[str, Any] = ()) -> dict:
    """Everything report.md, the model cards and summary.json show."""
    rows = {pool: rows_by_pool(out / RESULTS, pool) for pool in pools}
    finals = read_finals(out / FINAL)
    search = json.loads((out / SUMMARY).read_text())
    compressed = compression(out, chosen)
    on_base = ", on the same compressed base" if compressed else ""
    baseline = reference_figures(out / BASELINE / RESULTS, pools, path=f"models/{BASELINE}",
                                 roles=[f"plain LoRA (maximal network, fixed-maximal training{on_base})"])
    zero_shot = reference_figures(out / ZERO_SHOT / RESULTS, pools, path=None,
                                  roles=[f"base model, zero-shot (no fine-tuning{on_base})"])
    if zero_shot is not None:
        zero_shot = compare(zero_shot, baseline)
    if baseline is not None:
        baseline["lm_eval"] = judged(out / baseline["path"])
    models = []
    for sid, entry in chosen.items():
        m = recovered(model_figures(sid, rows, finals, pools), out / f"models/{sid}")
        m = compare(m, baseline)
        models.append(dict(m, roles=entry["roles"], path=f"models/{sid}", lm_eval=judged(out / f"models/{sid}")))
    return {
        "output_dir": str(out),
        "pools": list(pools),
        "zero_shot": zero_shot,
        "baseline": baseline,
        "models": models,
        "verdict": fine_tuning_verdict(zero_shot, ([baseline] if baseline else []) + models),
        "deployment": deployment_verdict(baseline, models),
        "compression": compressed,
        "search": {"strategy": search["strategy"], "space_size": search["space_size"], "maximal": search["maximal"],
                   "pools": search["pools"], "utilisation": search.get("utilisation"),
                   "concurrent_pools": search.get("concurrent_pools")},
        "stages": {k: {"seconds": v.get("seconds"), "runs": v.get("runs")} for k, v in dict(stages).items()},
        "ranking": json.loads((out / RANKING).read_text()) if (out / RANKING).is_file() else None,
    }
