"""The pipeline's figures, gathered from the stage outputs into one dict (``summary.json``).

Pure functions over the output directory's tables: which sub-networks become
models (``select_models``), and per model its quality, counts and latency on
every pool next to the plain-LoRA baseline's and the base model's zero-shot
(``collect``), whether any fine-tuned model beats that zero-shot row beyond
noise (``fine_tuning_verdict``) and whether any compressed model is worth deploying
against plain LoRA (``deployment_verdict``). The report, the model cards, the run's printed
table and ``summary.json`` are all rendered from this one dict, so they agree.

Speed-ups are taken against the same run's **reference**: the maximal sub-network as the search
timed it, its own row and every re-timing (``reference_latency``), under the same conditions as the
candidates (the hardware lease, ``lonas_ray.lease``); the baseline and the zero-shot model share its
shape, and how far their own stage's timings lie from it is reported (``same_shape``). Each speed-up
carries a 95 % interval from the timed repeats, and the deployment verdict compares each model with
plain LoRA example by example (paired intervals), so it says met, missed, or undecided.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lonas_ray.crosscheck import JUDGE_FILE
from lonas_ray.memory import largest
from lonas_ray.merge.save import MANIFEST
from lonas_ray.pipeline.config import BASELINE_DIR as BASELINE
from lonas_ray.pipeline.export import RECOVERY
from lonas_ray.pipeline.ranking import RANKING
from lonas_ray.search.driver import FINAL, REFERENCES, RESULTS, SUMMARY, read_finals, read_references, rows_by_pool
from lonas_ray.search.latency import percentile
from lonas_ray.search.metric import accuracy_interval
from lonas_ray.stats import paired_bootstrap, ratio_of_medians

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


def _primary(row: Mapping[str, Any]) -> dict:
    """The row's first runtime's full figures (``latencies``: samples, p10), {} for rows without them."""
    lat = row.get("latencies")
    lat = json.loads(lat) if isinstance(lat, str) and lat else (lat or {})
    return lat.get(row.get("latency_runtime")) or {}


def latency_by_pool(rows: Mapping[str, Mapping[str, dict]], sid: str) -> dict[str, dict]:
    """pool -> the latency figures of ``sid``'s row on that pool (pools without a row are left out)."""
    out = {}
    for pool, by_id in rows.items():
        if sid in by_id:
            row, primary = by_id[sid], _primary(by_id[sid])
            out[pool] = {**{k: row.get(k) for k in LATENCY_KEYS}, "latency_p10_ms": primary.get("latency_p10_ms"),
                         "samples_ms": list(primary.get("samples_ms") or [])}
    return out


def reference_latency(rows: Mapping[str, Mapping[str, dict]], references: Mapping[str, Sequence[dict]],
                      maximal_id: str) -> dict[str, dict]:
    """Per pool, the maximal sub-network as this run's search timed it: its own row and every re-timing
    (``latency_reference.json``), pooled. ``drift``: how far the timings' medians lie apart (max / min - 1)."""
    out = {}
    for pool, by_id in rows.items():
        row = by_id.get(maximal_id)
        if row is None or row.get("latency_runtime") is None:
            continue
        runtime = row["latency_runtime"]
        timings = [(row["timestamp"], _primary(row).get("samples_ms") or [])]
        timings += [(e["timestamp"], (e["latencies"].get(runtime) or {}).get("samples_ms") or [])
                    for e in references.get(pool, ())]
        timings = sorted((t, list(s)) for t, s in timings if s)
        if not timings:
            continue
        samples = [x for _, s in timings for x in s]
        medians = [statistics.median(s) for _, s in timings]
        out[pool] = {"subnet_id": maximal_id, "runtime": runtime, "timings": len(timings), "samples_ms": samples,
                     "latency_ms": statistics.median(samples), "latency_p10_ms": percentile(samples, 0.1),
                     "latency_p90_ms": percentile(samples, 0.9), "timing_medians_ms": medians,
                     "drift": max(medians) / min(medians) - 1}
    return out


# The baseline and the zero-shot model have the maximal's shape: their stages' timings should agree with the
# search's within this share (the lease's promise; issue 38's check).
SAME_SHAPE_TOLERANCE = 0.10


def same_shape(references: Mapping[str, dict], **models: Mapping[str, Any] | None) -> dict[str, dict]:
    """Per pool, the same-shape rows' latencies (the search's maximal, and ``models``: the baseline, the zero-shot
    model, each timed in its own stage) and whether they agree within ``SAME_SHAPE_TOLERANCE``."""
    out = {}
    for pool, ref in references.items():
        figures = {"maximal": ref["latency_ms"]}
        for name, m in models.items():
            ms = ((m or {}).get("latency", {}).get(pool) or {}).get("latency_ms")
            if ms is not None:
                figures[name] = ms
        spread = max(figures.values()) / min(figures.values()) - 1
        out[pool] = {"latency_ms": figures, "spread": spread, "agree": spread <= SAME_SHAPE_TOLERANCE + 1e-9,
                     "tolerance": SAME_SHAPE_TOLERANCE}
    return out


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
        "outcomes": final.get("outcomes") if final else _outcomes(first),
        **{k: first[k] for k in COUNT_KEYS},
        "latency": latency_by_pool(rows, sid),
    }
    interval = accuracy_interval(figures["quality_metric"], figures["quality"], figures["eval_examples"])
    figures["quality_ci95"] = list(interval) if interval else None
    figures["missing_pools"] = [p for p in pools if p not in figures["latency"]]
    return figures


def _outcomes(row: Mapping[str, Any]) -> list[int] | None:
    o = row.get("outcomes")
    return json.loads(o) if isinstance(o, str) else (list(o) if o else None)


def compare(model: dict[str, Any], baseline: Mapping[str, Any] | None,
            references: Mapping[str, dict] | None = None) -> dict[str, Any]:
    """Add the figures relative to the baseline (quality delta, params ratio) and the per-pool speed-up.

    A speed-up is the pool's reference (``reference_latency``: the maximal, timed in this run's search under the
    same conditions) over the model's latency, with the 95 % bootstrap interval of that ratio of medians
    (``speedup_ci95``). A pool without a reference, or a row without timed repeats (a results table from before
    they were kept), falls back to the baseline's latency, without an interval (``speedup_reference`` says which).
    """
    if baseline is not None:
        model = dict(model, quality_delta=model["quality"] - baseline["quality"],
                     params_ratio=model["params"] / baseline["params"])
    for pool, lat in model["latency"].items():
        ref = (references or {}).get(pool)
        if ref and lat.get("samples_ms") and lat.get("latency_runtime") == ref["runtime"]:
            lat["speedup"], lat["speedup_ci95"] = ratio_of_medians(ref["samples_ms"], lat["samples_ms"])
            lat["speedup_reference"] = "maximal"
            continue
        base = (baseline or {}).get("latency", {}).get(pool, {}).get("latency_ms")
        lat["speedup"] = base / lat["latency_ms"] if base and lat.get("latency_ms") else None
        lat["speedup_ci95"], lat["speedup_reference"] = None, "baseline" if lat["speedup"] else None
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
    out["outcomes"] = rec.get("outcomes")
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
MET, MISSED, UNDECIDED = "met", "missed", "undecided"
_EPS = 1e-9  # "at least 90 %" includes 0.72 / 0.80, whatever the floating-point division gives


def kept_share(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The share of plain LoRA's quality ``model`` keeps, with its 95 % interval: paired over the examples both were
    scored on (``stats.paired_bootstrap``), else the point figure alone (``paired`` False: no per-example outcomes,
    or scored on different examples)."""
    mo, bo = model.get("outcomes"), baseline.get("outcomes")
    if mo and bo and len(mo) == len(bo):
        return dict(paired_bootstrap(mo, bo), paired=True)
    kept = model["quality"] / baseline["quality"]
    return {"examples": model.get("eval_examples"), "kept": kept, "kept_ci95": [kept, kept], "paired": False}


def _decide(kept: Mapping[str, Any], speedup: float, speedup_ci: Sequence[float] | None) -> tuple[str, list[str]]:
    """(met / missed / undecided, which figures leave it undecided or miss) for one model on one pool."""
    k_lo, k_hi = kept["kept_ci95"]
    s_lo, s_hi = speedup_ci or (speedup, speedup)
    missed = [what for what, hi, goal in (("quality", k_hi, MIN_KEPT), ("speed-up", s_hi, MIN_SPEEDUP))
              if hi < goal - _EPS]
    if missed:
        return MISSED, missed
    open_ = [what for what, lo, goal in (("quality", k_lo, MIN_KEPT), ("speed-up", s_lo, MIN_SPEEDUP))
             if lo < goal - _EPS]
    return (UNDECIDED, open_) if open_ else (MET, [])


def _pct(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.0%}, {ci[1]:.0%}]"


def _times(ci: Sequence[float] | None) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def deployment_verdict(baseline: Mapping[str, Any] | None, models: Sequence[Mapping[str, Any]],
                       whole_split: bool = True) -> dict | None:
    """Is any exported sub-network a compressed model worth deploying? Met, missed, or undecided, said plainly.

    A model counts when it is smaller than plain LoRA's, keeps at least ``MIN_KEPT`` of its quality and is at
    least ``MIN_SPEEDUP`` x faster on some pool, each beyond its 95 % interval (the kept share paired over the
    examples both were scored on, the speed-up from the timed repeats); an interval that straddles a goal leaves it
    undecided, and the verdict names what would decide it. ``whole_split``: whether the models were scored on the
    whole test split (then more examples need a larger split, not a setting). None without a baseline (or one that
    scored 0) to compare to.
    """
    if baseline is None or not baseline.get("quality"):
        return None
    rank = {MET: 2, UNDECIDED: 1, MISSED: 0}
    judged = []  # per compressed model, its best pool
    for m in models:
        if m["params"] >= baseline["params"]:
            continue
        kept = kept_share(m, baseline)
        per_pool = [(pool, *_decide(kept, lat["speedup"], lat.get("speedup_ci95")), lat["speedup"],
                     lat.get("speedup_ci95")) for pool, lat in m["latency"].items() if lat.get("speedup")]
        if not per_pool:
            continue
        pool, outcome, why, x, x_ci = max(per_pool, key=lambda p: (rank[p[1]], p[3]))
        judged.append({"subnet_id": m["subnet_id"], "pool": pool, "outcome": outcome, "open": why,
                       "speedup": x, "speedup_ci95": x_ci, **kept})
    goal = f"at least {MIN_KEPT:.0%} of plain LoRA's quality at {MIN_SPEEDUP:.1f}x its latency"
    what_helps = ("Train longer, use a narrower space, or rank after recovery (export.select: targets with "
                  "export.recover_steps): docs/benchmarks.md.")
    met = [j for j in judged if j["outcome"] == MET]

    def figures(j: Mapping[str, Any]) -> str:
        return (f"{j['subnet_id']} keeps {j['kept']:.0%} {_pct(j['kept_ci95'])} of plain LoRA's quality on "
                f"{'the same ' if j['paired'] else ''}{j['examples']} examples at {j['speedup']:.2f}x"
                f"{_times(j['speedup_ci95'])} on {j['pool']}")

    if met:
        best = max(met, key=lambda j: j["speedup"])
        outcome = MET
        text = (f"Met: {len(met)} compressed model(s) keep {goal} beyond the 95 % intervals; the fastest, "
                f"{figures(best)}.")
    elif not judged:
        outcome = MISSED
        text = (f"Missed: every exported model is the uncompressed maximal (the goal: {goal}). {what_helps}")
    elif undecided := [j for j in judged if j["outcome"] == UNDECIDED]:
        best = max(undecided, key=lambda j: (j["kept_ci95"][0], j["speedup"]))
        outcome = UNDECIDED
        fixes = []
        if "quality" in best["open"]:
            fixes.append(f"the whole test split ({best['examples']} examples) cannot decide the quality: a larger "
                         "test split can (data.eval)" if whole_split else
                         "raise quality.final_examples (unset: the whole test split)")
        if "speed-up" in best["open"]:
            fixes.append("raise the pool's latency.repeats")
        text = (f"Undecided at {best['examples']} examples (the goal: {goal}): {figures(best)}; the interval of its "
                f"{' and '.join(best['open'])} straddles the goal: {'; '.join(fixes)}.")
    else:
        best = max(judged, key=lambda j: (j["kept"], j["speedup"]))
        outcome = MISSED
        text = (f"Missed (the goal: {goal}): the closest, {figures(best)}: its {' and '.join(best['open'])} "
                f"below the goal beyond the interval. {what_helps}")
    return {"outcome": outcome, "worth_deploying": [j["subnet_id"] for j in met], "min_kept": MIN_KEPT,
            "min_speedup": MIN_SPEEDUP, "models": judged, "text": text}


def compression(out: Path, chosen: Mapping[str, dict]) -> dict | None:
    """What was done to the base (sparsity, quantization, export format), from an exported model's manifest."""
    for sid in chosen:
        path = out / f"models/{sid}" / MANIFEST
        if path.is_file():
            return json.loads(path.read_text()).get("compression")
    return None


PROFILE_PARTS = ("load_s", "switch_s", "score_s", "time_s")


def profiles(results: Path) -> list[dict]:
    """Every row's ``profile`` in a results file (none where it is missing or the rows predate profiles)."""
    from lonas_ray.search.results import read_results

    rows = read_results(results).to_pylist() if Path(results).exists() else []
    return [json.loads(r["profile"]) for r in rows if r.get("profile")]


def evaluator_profile(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Where a pool's evaluators spent their time (``results`` rows' ``profile``), the throughput a cluster user
    plans with, and their peak memory; None when no row has a profile (results written before it existed).

    ``per_minute``: evaluations per minute of one evaluator's busy time (load included), so a pool of N evaluators
    on N devices does about N times as many; reference timings of the maximal are not in it (``references``)."""
    profiles = [json.loads(r["profile"]) for r in rows if r.get("profile")]
    if not profiles:
        return None
    seconds = {part: round(sum(p.get(part, 0.0) for p in profiles), 2) for part in PROFILE_PARTS}
    busy = sum(seconds.values())
    return {"evaluations": len(profiles), "seconds": seconds,
            "share": {part: round(v / busy, 3) if busy else None for part, v in seconds.items()},
            "per_minute": round(60 * len(profiles) / busy, 2) if busy else None, **largest(profiles)}


def collect(out: Path, pools: Sequence[str], chosen: Mapping[str, dict], *, stages: Mapping[str, Any] = ()) -> dict:
    """Everything report.md, the model cards and summary.json show."""
    rows = {pool: rows_by_pool(out / RESULTS, pool) for pool in pools}
    finals = read_finals(out / FINAL)
    search = json.loads((out / SUMMARY).read_text())
    references = reference_latency(rows, read_references(out / REFERENCES), search["maximal"])
    whole_split = search.get("config", {}).get("quality", {}).get("final_examples") is None
    compressed = compression(out, chosen)
    on_base = ", on the same compressed base" if compressed else ""
    baseline = reference_figures(out / BASELINE / RESULTS, pools, path=f"models/{BASELINE}",
                                 roles=[f"plain LoRA (maximal network, fixed-maximal training{on_base})"])
    zero_shot = reference_figures(out / ZERO_SHOT / RESULTS, pools, path=None,
                                  roles=[f"base model, zero-shot (no fine-tuning{on_base})"])
    if zero_shot is not None:
        zero_shot = compare(zero_shot, baseline, references)
    if baseline is not None:
        baseline = compare(baseline, None, references)
        baseline["lm_eval"] = judged(out / baseline["path"])
    models = []
    for sid, entry in chosen.items():
        m = recovered(model_figures(sid, rows, finals, pools), out / f"models/{sid}")
        m = compare(m, baseline, references)
        models.append(dict(m, roles=entry["roles"], path=f"models/{sid}", lm_eval=judged(out / f"models/{sid}")))
    return {
        "output_dir": str(out),
        "pools": list(pools),
        "zero_shot": zero_shot,
        "baseline": baseline,
        "models": models,
        "verdict": fine_tuning_verdict(zero_shot, ([baseline] if baseline else []) + models),
        "deployment": deployment_verdict(baseline, models, whole_split=whole_split),
        "references": {pool: {k: v for k, v in ref.items() if k != "samples_ms"} for pool, ref in references.items()},
        "same_shape": same_shape(references, baseline=baseline, zero_shot=zero_shot),
        "compression": compressed,
        "search": {"strategy": search["strategy"], "space_size": search["space_size"], "maximal": search["maximal"],
                   "pools": search["pools"], "utilisation": search.get("utilisation"),
                   "concurrent_pools": search.get("concurrent_pools")},
        "evaluators": {pool: evaluator_profile(list(rows[pool].values())) for pool in pools},
        "stages": {k: {"seconds": v.get("seconds"), "runs": v.get("runs"), "memory": v.get("memory")}
                   for k, v in dict(stages).items()},
        "ranking": json.loads((out / RANKING).read_text()) if (out / RANKING).is_file() else None,
    }
