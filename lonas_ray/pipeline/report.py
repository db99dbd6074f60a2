"""Render the figures dict (``figures.collect``) as report.md, model cards and pareto.png."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def ranking_lines(ranking: dict | None) -> list[str]:
    """Recover-then-rank's table: every candidate of each latency target as sliced and as recovered, and what the
    ranking rested on (its objective, over how many examples)."""
    if not ranking:
        return []
    objective = ranking["objective"]
    sizes = sorted({(c["recovered"] or {}).get("examples") for t in ranking["targets"].values()
                    for c in t["candidates"]} - {None})
    over = f"{', '.join(map(str, sizes))} examples" if sizes else "the search's examples"
    why = ("a loss over every example's answer, which separates candidates that tie on exact matches"
           if objective != "quality" else "the accuracy itself: a difference of one example is a step of 1/n")
    lines = ["", "## Recover-then-rank", "",
             f"Per latency target, the best front members on the search objective were each recovered "
             f"(`export.recover_steps`) and scored again; the best after recovery was exported (`ranking.json`; "
             f"every candidate's export is in `candidates/`). Ranked on `{objective}` (higher is better as shown; "
             f"{why}) over {over} of the search's seeded subset, which lies inside the test split the table above "
             "reports on.",
             "", "| target | candidate | sliced objective | sliced quality | recovered objective | recovered quality "
             "| chosen |", "|---|---|---|---|---|---|---|"]
    for role, target in ranking["targets"].items():
        for c in target["candidates"]:
            s, r = c["sliced"] or {}, c["recovered"] or {}
            lines.append(f"| {role} | `{c['subnet_id']}` | {_num(s.get('objective'))} | {_num(s.get('quality'))} | "
                         f"{_num(r.get('objective'))} | {_num(r.get('quality'))} | "
                         f"{'yes' if c['subnet_id'] == target['chosen'] else ''} |")
    return lines


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _interval(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _judged(verdict: Mapping[str, Any] | None) -> str:
    """lm-eval's quality and its agreement with lonas-ray's scorer, example by example."""
    if not verdict or "agree" not in verdict:
        return "-"
    cut = verdict.get("truncated") or 0
    note = f"; {cut} prompts cut to data.cutoff_len" if cut else ""
    return f"{verdict['lm_eval_quality']:.4f} ({verdict['agree']}/{verdict['examples']}{note})"


def speedup_text(lat: Mapping[str, Any]) -> str:
    """``1.23x [1.15, 1.30]``; an interval that includes 1.0 says so (no faster beyond noise)."""
    x, ci = lat.get("speedup"), lat.get("speedup_ci95")
    if not x:
        return "-"
    if not ci:
        return f"{x:.2f}x"
    tie = ", includes 1.0" if ci[0] <= 1.0 <= ci[1] else ""
    return f"{x:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]{tie}"


def latency_text(lat: Mapping[str, Any]) -> str:
    """``560.12 (555.0-572.3)``: the median and its p10-p90 over the timed repeats."""
    ms, lo, hi = lat.get("latency_ms"), lat.get("latency_p10_ms"), lat.get("latency_p90_ms")
    if ms is None:
        return "-"
    return f"{ms:.2f} ({lo:.1f}-{hi:.1f})" if lo is not None and hi is not None else f"{ms:.2f}"


def _latency_cells(model: Mapping[str, Any], pools: Sequence[str]) -> list[str]:
    """Latency (median, p10-p90) and speed-up (against the same run's reference, with its interval) per pool."""
    cells = []
    for pool in pools:
        lat = model["latency"].get(pool) or {}
        cells += [latency_text(lat), speedup_text(lat)]
    return cells


def reference_lines(fig: Mapping[str, Any]) -> list[str]:
    """Where the speed-ups come from, per pool, and whether the same-shape rows agree."""
    refs, shapes = fig.get("references") or {}, fig.get("same_shape") or {}
    if not refs:
        return ["Speed-ups: baseline latency / model latency (no reference timings in this run's results)."]
    lines = []
    for pool, ref in refs.items():
        shape = shapes.get(pool, {})
        rows = ", ".join(f"{name} {ms:.1f}" for name, ms in shape.get("latency_ms", {}).items())
        agree = ("agree within {:.0%}".format(shape["tolerance"]) if shape.get("agree") else
                 "**differ by {:.0%}, more than {:.0%}**: something else ran on the hardware while one of them was "
                 "timed".format(shape["spread"], shape["tolerance"])) if shape else ""
        lines.append(f"- `{pool}`: the maximal (`{ref['subnet_id']}`), timed {ref['timings']} times in the search "
                     f"({ref['runtime']}): median {ref['latency_ms']:.1f} ms, p10-p90 {ref['latency_p10_ms']:.1f}-"
                     f"{ref['latency_p90_ms']:.1f}, drift between timings {ref['drift']:.1%}. Same-shape rows (ms): "
                     f"{rows}: {agree}.")
    return ["Speed-ups are against each pool's reference, the maximal sub-network as this run's search timed it "
            "(its own row and its re-timings, `latency.reference_every`), every timing holding the hardware alone "
            "(`lonas_ray.lease`); the interval is a 95 % bootstrap of the ratio of medians over the timed repeats:",
            "", *lines]


def compression_text(c: Mapping[str, Any] | None) -> str | None:
    """One sentence for the report: the base's compression and where it buys no speed on CPU."""
    if not c:
        return None
    parts = []
    s, q = c.get("sparsity"), c.get("quantization")
    if s:
        parts.append(f"the base pruned by {s['method']} ({s['pattern']}, {s['level']:.0%} of block weights zero)"
                     + ("; SparsePEFT merges keep exactly its zeros" if s.get("mask_adapter") else
                        "; adapters unmasked, so merges are dense"))
    if q:
        parts.append(f"INT{q['bits']} weights, group size {q['group_size']}, {q['method']} scales"
                     + (", QA-SparsePEFT (the INT4 merge is what was trained)" if q.get("qa") else
                        ", merged then rounded (not QA-trained)"))
    export = c.get("export")
    fmt = f"exports in {export['format']}" if export else "exports as ordinary safetensors with the zeros stored"
    return (f"{'; '.join(parts)}; {fmt}. The weights column is the exported tensors' size. Latency is measured "
            "on what is served: transformers runs sparse weights densely and unpacks INT4 to dense on load, so on "
            "CPU (and on GPU without sparse / INT4 kernels) these formats save bytes, not time.")


def report_markdown(fig: Mapping[str, Any]) -> str:
    pools, base, zero = fig["pools"], fig["baseline"], fig.get("zero_shot")
    models = ([zero] if zero else []) + ([base] if base else []) + fig["models"]
    metric = models[0]["quality_metric"] if models else "quality"
    examples = models[0]["eval_examples"] if models else 0
    head = ["model", "role", f"quality ({metric})", "95 % interval", "lm-eval (agrees)", "vs baseline", "params",
            "params vs baseline", "weights (MiB)"]
    for pool in pools:
        head += [f"latency {pool} (ms)", f"speed-up {pool}"]
    lines = [
        "# lonas-ray report", "",
        f"Output directory: `{fig['output_dir']}`. Quality: `{metric}` on {examples} held-out examples, with its "
        "95 % Wilson interval (a difference inside both intervals may be noise). Latency: one "
        "request (prefill + greedy decode, the pool's `latency` settings, median and p10-p90 over repeats) measured "
        "on each pool's own hardware; speed-up = reference latency / model latency on that pool (below). lm-eval: "
        "lm-evaluation-harness's score of the exported checkpoint on the same examples, and on how many of them "
        "it agrees with lonas-ray's scorer (it sees whole prompts: those lonas-ray cut to `data.cutoff_len` may "
        "differ).", "", *reference_lines(fig), "",
    ]
    if fig.get("verdict"):
        lines += [f"**Fine-tuning:** {fig['verdict']['text']}", ""]
    if fig.get("deployment"):
        lines += [f"**Compression:** {fig['deployment']['text']}", ""]
    if (text := compression_text(fig.get("compression"))) is not None:
        lines += [f"**Compression:** {text}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        is_base = m is base
        name = ("base model (zero-shot)" if m is zero else "baseline (plain LoRA)" if is_base
                else f"`{m['subnet_id']}`")
        role = "reference" if is_base else "; ".join(m["roles"])
        delta = "-" if is_base or "quality_delta" not in m else f"{m['quality_delta']:+.4f}"
        ratio = "1.00" if is_base else (f"{m['params_ratio']:.2f}" if "params_ratio" in m else "-")
        row = [name, role, _num(m["quality"]), _interval(m.get("quality_ci95")), _judged(m.get("lm_eval")), delta,
               _millions(m["params"]), ratio, _mib(m.get("weight_bytes"))]
        row += _latency_cells(m, pools)
        lines.append("| " + " | ".join(row) + " |")
    for m in fig["models"]:
        if m.get("recovery"):
            b = m["recovery"]["before"]
            r = m["recovery"]
            cost = f" in {r['seconds']:.0f} s" if r.get("seconds") is not None else ""
            taught = f", taught by `{r['teacher']}`" if r.get("teacher") else ""
            lines.append(f"\n`{m['subnet_id']}`: after a recovery fine-tune of {r['steps']} steps{cost}{taught} "
                         f"before its merge (`export.recover_steps`); the super-network's slice scored "
                         f"{_num(b['quality'])} {_interval(b.get('quality_ci95'))} on {b['eval_examples']} examples.")
    lines += ranking_lines(fig.get("ranking"))
    if not base:
        lines += ["", "No baseline was run (`baseline.enabled: false`)."]
    if not zero:
        lines += ["", "The base model was not scored zero-shot (`zero_shot.enabled: false`)."]
    lines += ["", "![quality vs latency per pool](pareto.png)", "", "## Search", "",
              f"Strategy `{fig['search']['strategy']}` over {fig['search']['space_size']:.3g} sub-networks "
              f"(maximal: `{fig['search']['maximal']}`).", "",
              "| pool | evaluated | latency front | hypervolume | latency pick | params pick | evaluators busy |",
              "|---|---|---|---|---|---|---|"]
    usage = fig["search"].get("utilisation") or {}
    for pool in pools:
        info = fig["search"]["pools"].get(pool, {})
        lat, par = info.get("latency", {}), info.get("params", {})
        busy = usage.get(pool, {}).get("fraction")
        lines.append(f"| {pool} | {info.get('evaluated', 0)} | {lat.get('members', 0)} | "
                     f"{_num(lat.get('hypervolume'), '.4g')} | `{lat.get('pick')}` | `{par.get('pick')}` | "
                     f"{'-' if busy is None else f'{busy:.0%}'} |")
    if usage:
        lines += ["", "Evaluators busy: the share of the search stage's last run's wall time that each pool's "
                  "evaluators spent evaluating ("
                  f"{'every pool at once' if fig['search'].get('concurrent_pools') else 'one pool after another'})."]
    missing = [(m["subnet_id"], m["missing_pools"]) for m in fig["models"] if m.get("missing_pools")]
    for sid, where in missing:
        lines.append(f"\n`{sid}` has no latency on {', '.join(where)} (set `search.cross_evaluate: true`).")
    lines += evaluator_lines(fig.get("evaluators") or {}) + stage_lines(fig.get("stages") or {})
    lines += ["", "Every figure is also in `summary.json`; every evaluation in `results.parquet`.", ""]
    return "\n".join(lines)


def _peak(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def evaluator_lines(evaluators: Mapping[str, Any]) -> list[str]:
    """Where each pool's evaluators spent their time, and their throughput (``figures.evaluator_profile``)."""
    pools = {pool: p for pool, p in evaluators.items() if p}
    if not pools:
        return []
    lines = ["", "## Evaluators", "",
             "| pool | evaluations | per minute | load | switch (slice + merge) | score | time | peak host MiB | "
             "peak GPU MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for pool, p in pools.items():
        parts = " | ".join(f"{p['seconds'][k]:.1f} s ({p['share'][k]:.0%})" if p["share"][k] is not None else "-"
                           for k in ("load_s", "switch_s", "score_s", "time_s"))
        lines.append(f"| {pool} | {p['evaluations']} | {_num(p['per_minute'], '.2f')} | {parts} | "
                     f"{_peak(p.get('peak_rss_mib'))} | {_peak(p.get('peak_gpu_mib'))} |")
    return lines + ["", "Per minute: evaluations per minute of one evaluator's busy time (its load included); a "
                    "pool of N evaluators on N devices does about N times as many. Peak GPU memory: what PyTorch "
                    "allocated at most in one evaluator (not the CUDA context)."]


def stage_lines(stages: Mapping[str, Any]) -> list[str]:
    """Each stage's wall time and the largest peak memory of its workers (``lonas_ray.memory``)."""
    if not stages:
        return []
    lines = ["", "## Stages", "", "| stage | seconds | runs | peak host MiB | peak GPU MiB |", "|---|---|---|---|---|"]
    for stage, e in stages.items():
        mem = e.get("memory") or {}
        seconds = "-" if e.get("seconds") is None else f"{e['seconds']:.1f}"
        lines.append(f"| {stage} | {seconds} | {e.get('runs') or '-'} | {_peak(mem.get('peak_rss_mib'))} | "
                     f"{_peak(mem.get('peak_gpu_mib'))} |")
    return lines + ["", "Peak memory: the largest of the stage's workers (a training rank, an evaluator, a merge "
                    "task that recovered a model); the driver's own is not counted."]


def model_card(model: Mapping[str, Any], baseline: Mapping[str, Any] | None, pools: Sequence[str],
               architecture: str, compression: Mapping[str, Any] | None = None,
               gguf: Mapping[str, Any] | None = None) -> str:
    """README.md of one exported model: what it is, its figures next to the baseline's, how to load it."""
    custom = architecture.startswith("Lonas")
    lines = [
        "---", "library_name: transformers", "tags:",
        "- lonas-ray", "- neural-architecture-search", "- lora", "---", "",
        f"# {model['subnet_id']}", "",
        "A sub-network found by lonas-ray's search over elastic LoRA adapters: sliced out of the super-network "
        "(heads, MLP width, depth, LoRA ranks as configured below) with its adapters merged into the base weights. "
        "A plain Hugging Face causal LM: no adapter or lonas-ray code runs at inference"
        + (" (its per-layer shapes need `import lonas_ray` once, which registers the architecture "
           f"`{architecture}` with the Auto classes)." if custom else "."),
        "", f"Role: {'; '.join(model.get('roles', [])) or 'baseline'}."
        + (f" Recovery fine-tune: {model['recovery']['steps']} steps of this sub-network alone before the merge "
           f"(the super-network's slice scored {_num(model['recovery']['before']['quality'])})."
           if model.get("recovery") else ""), "",
        "| | this model | baseline (plain LoRA) |", "|---|---|---|",
    ]
    b = baseline or {}

    def row(label: str, key: str, fmt) -> None:
        lines.append(f"| {label} | {fmt(model.get(key))} | {fmt(b.get(key)) if b else '-'} |")

    row(f"quality ({model['quality_metric']}, {model['eval_examples']} examples)", "quality", _num)
    row("95 % interval (Wilson)", "quality_ci95", _interval)
    row("lm-eval on the same examples (agrees with the above on)", "lm_eval", _judged)
    row("task loss (choice cross-entropy for multiple choice)", "task_loss", _num)
    row("answer loss (held-out, per token)", "loss", _num)
    row("params", "params", lambda v: "-" if v is None else f"{v:,}")
    row("non-zero params", "nonzero_params", lambda v: "-" if v is None else f"{v:,}")
    row("MACs per token", "macs", lambda v: "-" if v is None else f"{v:,}")
    row("weights as exported (MiB)", "weight_bytes", _mib)
    for pool in pools:
        lat = model["latency"].get(pool, {})
        base_lat = b.get("latency", {}).get(pool, {}) if b else {}
        speed = f" ({speedup_text(lat)})" if lat.get("speedup") else ""
        lines.append(f"| latency on {pool} (ms, {lat.get('latency_runtime') or '-'}; p10-p90) | "
                     f"{latency_text(lat)}{speed} | {latency_text(base_lat)} |")
    if compression:
        lines += ["", "## Compression", "", compression_text(compression), "",
                  "Recorded in `lonas_subnet.json` (`compression`): " + ", ".join(
                      f"{k} {json.dumps(v, sort_keys=True)}" for k, v in compression.items() if k != "export")
                  + "."]
    int4 = bool(compression and compression.get("export"))
    lines += ["", "## Sub-network configuration", "", "```json", json.dumps(model["config"], indent=1, sort_keys=True),
              "```", "", "## Use", "",
              *(["Loading this INT4 checkpoint needs the `compressed-tensors` package (`pip install "
                 "compressed-tensors`); transformers unpacks it to dense weights on the first forward.", ""]
                if int4 else []),
              "```python",
              *(["import lonas_ray  # registers the per-layer architecture"] if custom else []),
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(PATH)",
              "tokenizer = AutoTokenizer.from_pretrained(PATH)", "```", ""]
    lines += ["vLLM serves it" + (" with lonas-ray's plugin, which registers the per-layer architecture in vLLM "
                                  "(an environment from lonas-ray's `jobs/make_vllm_env.sh`: vLLM pins an older "
                                  "transformers than lonas-ray)" if custom else " as it is (a stock architecture)")
              + ":", "", "```bash", f"vllm serve PATH --dtype {'float16' if int4 else 'float32'}", "```", ""]
    if int4:  # measured in tests/test_vllm_serving.py
        lines += ["vLLM's CPU INT4 kernel takes 16-bit activations: in float16 it computes what transformers "
                  "does from this file, in bfloat16 it strays (log-probabilities off by about 0.5).", ""]
    if gguf:
        lines += [f"llama.cpp loads `{gguf['file']}` ({gguf.get('dtype', 'f16')}, "
                  + ("its per-layer shapes as llama.cpp's `deci` architecture" if custom else "as `llama`")
                  + "; no lonas-ray code):", "", "```bash", f"llama-server -m PATH/{gguf['file']}",
                  f"llama-cli -m PATH/{gguf['file']} -p 'your prompt' -n 32 --temp 0", "```", ""]
    return "\n".join(lines)


def plot_pareto(fig: Mapping[str, Any], pool_rows: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> None:
    """quality vs latency per pool: every evaluation, the front, the exported models, baseline and zero-shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lonas_ray.search.front import front_rows

    pools = fig["pools"]
    figure, axes = plt.subplots(1, len(pools), figsize=(5.5 * len(pools), 4.2), squeeze=False)
    exported = {m["subnet_id"]: m for m in fig["models"]}
    for ax, pool in zip(axes[0], pools):
        rows = [r for r in pool_rows.get(pool, []) if r.get("latency_ms") is not None]
        ax.scatter([r["latency_ms"] for r in rows], [r["quality"] for r in rows], s=14, c="0.7",
                   label="evaluated (search subset)")
        front = front_rows(rows, "latency_ms")
        ax.step([r["latency_ms"] for r in front], [r["quality"] for r in front], where="post", c="tab:blue")
        ax.scatter([r["latency_ms"] for r in front], [r["quality"] for r in front], s=26, c="tab:blue",
                   label="Pareto front")
        pts = [(m["latency"][pool]["latency_ms"], m["quality"], sid) for sid, m in exported.items()
               if m["latency"].get(pool, {}).get("latency_ms") is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="D", s=50, facecolors="none",
                       edgecolors="tab:green", label="exported (full-set quality)")
            for x, y, sid in pts:
                ax.annotate(sid[:8], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        base = fig.get("baseline")
        if base and base["latency"].get(pool, {}).get("latency_ms") is not None:
            ax.scatter([base["latency"][pool]["latency_ms"]], [base["quality"]], marker="*", s=160, c="tab:red",
                       label="baseline: plain LoRA (full set)")
        zero = fig.get("zero_shot")
        if zero and zero["latency"].get(pool, {}).get("latency_ms") is not None:
            ax.scatter([zero["latency"][pool]["latency_ms"]], [zero["quality"]], marker="X", s=90, c="k",
                       label="base model zero-shot (full set)")
        ref = (fig.get("references") or {}).get(pool)
        if ref:  # what every speed-up on this pool is taken against
            ax.axvspan(ref["latency_p10_ms"], ref["latency_p90_ms"], color="tab:orange", alpha=0.15, lw=0)
            ax.axvline(ref["latency_ms"], color="tab:orange", lw=1,
                       label=f"reference: maximal, {ref['timings']} timings (p10-p90)")
        ax.set_title(f"pool {pool}")
        ax.set_xlabel("latency per request (ms)")
        ax.set_ylabel("quality")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
