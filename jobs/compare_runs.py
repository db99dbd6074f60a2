"""Two `lonas-ray run` outputs side by side, paired example by example.

Whether a training recipe that wins in the benchmarks holds through the whole pipeline (search, recovery, export)
is a question about two runs on the same test split: run the pipeline once per recipe, then

    python jobs/compare_runs.py OUT_A OUT_B [--json PATH]

prints, per run, plain LoRA's quality, the maximal's full-set quality and each exported model's quality, kept share,
speed-up and deployment outcome (as its summary.json has them), then B minus A paired over the examples both were
scored on (``stats.paired_bootstrap``): plain LoRA, the maximal, and the models each picked for the same
ranking target (a target one run met and the other did not has no pair). A difference
is a win or a loss only beyond its 95 % interval (``stats.verdict``); one run of each is one seed, so a tie says the
recipes are not told apart by this pair of runs, not that they are equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lonas_ray.stats import paired_bootstrap, verdict

# what the deployment verdict says of each export (summary.json "deployment" "models")
JUDGED = ("pool", "kept", "kept_ci95", "speedup", "speedup_ci95", "outcome")


class RunError(Exception):
    """An output directory that is not a finished run."""


def load_run(out: Path) -> dict:
    """A finished run's summary.json and final_quality.json (the maximal's full-set outcomes live there)."""
    summary = out / "summary.json"
    if not summary.is_file():
        raise RunError(f"{out} holds no summary.json: give the output directory of a finished `lonas-ray run`")
    finals = out / "final_quality.json"
    return {"dir": str(out), "summary": json.loads(summary.read_text()),
            "finals": json.loads(finals.read_text()) if finals.is_file() else {}}


def _scored(quality, examples, outcomes) -> dict:
    return {"quality": quality, "examples": examples, "outcomes": outcomes}


def run_figures(run: dict) -> dict:
    """What one run gave: plain LoRA, the maximal and the exported models, each with its outcomes. An export chosen
    for a ranking target (``export.select: targets``) is named by that target, so two runs' picks for the same
    target pair up; any other export by its subnet id."""
    s = run["summary"]
    base = s.get("baseline") or {}
    maximal_id = (s.get("search") or {}).get("maximal")
    final = run["finals"].get(maximal_id) or {}
    judged = {m["subnet_id"]: m for m in (s.get("deployment") or {}).get("models", [])}
    models = {m["subnet_id"]: m for m in s.get("models", [])}
    names = {t: v["chosen"] for t, v in ((s.get("ranking") or {}).get("targets") or {}).items() if v.get("chosen")}
    names |= {sid: sid for sid in models if sid not in names.values()}
    exported = {}
    for name, sid in names.items():
        if sid not in models:
            continue
        m, d = models[sid], judged.get(sid, {})
        exported[name] = {"subnet_id": sid, **_scored(m["quality"], m["eval_examples"], m.get("outcomes")),
                          "quality_ci95": m.get("quality_ci95"), **{k: d.get(k) for k in JUDGED}}
    return {"dir": run["dir"],
            "baseline": _scored(base.get("quality"), base.get("eval_examples"), base.get("outcomes")),
            "maximal": {"subnet_id": maximal_id, **_scored(final.get("quality"), final.get("examples"),
                                                           final.get("outcomes"))},
            "exported": exported,
            "deployment": (s.get("deployment") or {}).get("outcome")}


def _difference(a: dict, b: dict) -> dict | None:
    """B minus A on the same examples; None where either has no outcomes or they were scored on different sets."""
    if not a.get("outcomes") or not b.get("outcomes") or len(a["outcomes"]) != len(b["outcomes"]):
        return None
    p = paired_bootstrap(b["outcomes"], a["outcomes"])
    return {"examples": p["examples"], "difference": p["difference"], "difference_ci95": p["difference_ci95"],
            "verdict": verdict(*p["difference_ci95"])}


def _public(figures):
    """The figures without their per-example outcomes (what is printed and written)."""
    if isinstance(figures, dict):
        return {k: _public(v) for k, v in figures.items() if k != "outcomes"}
    return figures


def compare(a: dict, b: dict) -> dict:
    """Both runs' figures (``run_figures``) and B minus A for plain LoRA, the maximal and each target's pick."""
    fa, fb = run_figures(a), run_figures(b)
    diffs = {"baseline": _difference(fa["baseline"], fb["baseline"]),
             "maximal": _difference(fa["maximal"], fb["maximal"])}
    for name in sorted(set(fa["exported"]) & set(fb["exported"])):  # the same target's picks
        diffs[name] = _difference(fa["exported"][name], fb["exported"][name])
    return {"a": _public(fa), "b": _public(fb), "b_minus_a": diffs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="output directory of the reference run")
    ap.add_argument("b", type=Path, help="output directory of the run compared with it")
    ap.add_argument("--json", type=Path, help="also write the comparison here (refused if the file exists)")
    args = ap.parse_args(argv)
    if args.json is not None and args.json.exists():
        print(f"error: {args.json} exists; give a new path (nothing is overwritten)", file=sys.stderr)
        return 2
    try:
        result = compare(load_run(args.a), load_run(args.b))
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
