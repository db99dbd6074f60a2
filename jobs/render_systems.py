"""Tables of the systems benchmarks: bench_scale (decode cost by shape and format), bench_train, bench_search,
bench_load, bench_serving and bench_lease."""

from __future__ import annotations

from render_common import Row, Run, fixed, millions, pct, section, short, span, table, times

# --- bench_scale ---

SUBNET_WORDS = {"mlp": "MLP", "heads": "heads", "depth": "depth"}


def subnet_label(name: str) -> str:
    parts = [p.partition("_") for p in name.split("+")]
    return " + ".join(f"{SUBNET_WORDS.get(k, k)} {v}".strip() for k, _, v in parts)


def scale_pairs(run: Run) -> list[tuple[Row, Row]]:
    """Batch-1 and batch-16 rows of one (shape, sub-network, format), in the JSON's order."""
    rows = run.data["rows"]
    key = lambda r: (r["shape"], r["subnet"], r.get("format", "bf16"))  # noqa: E731
    b16 = {key(r): r for r in rows if r["batch"] != 1}
    return [(r, b16[key(r)]) for r in rows if r["batch"] == 1]


def layer_cost_us(row: Row) -> float:
    """What a decode step costs beyond reading the weights at the copy bandwidth, per decoder layer."""
    return 1000 * (row["decode_ms"] - row["floor_decode_ms"]) / row["layers"]


def scale_decode(runs: list[Run]) -> str:
    """Every sub-network of every shape: decode at batch 1 and 16 against the params ratio and the read floor."""
    (run,) = runs
    header = ["shape", "sub-network", "layers", "params", "params ratio", "decode ms/token b1", "speed-up b1",
              "decode b16", "speed-up b16", "floor b1", "beyond floor per layer, us b1 / b16", "prefill ms b1"]
    body = []
    pairs = scale_pairs(run)
    for b1, b16 in pairs:
        body.append([b1["shape"], subnet_label(b1["subnet"]), str(b1["layers"]), f"{b1['params'] / 1e9:.2f}B",
                     times(b1["params_ratio"]), fixed(b1["decode_ms"], 2), times(b1["decode_speedup"]),
                     fixed(b16["decode_ms"], 2), times(b16["decode_speedup"]), fixed(b1["floor_decode_ms"], 2),
                     f"{layer_cost_us(b1):.0f} / {layer_cost_us(b16):.0f}", fixed(b1["prefill_ms"])])
    rows = run.data["rows"]
    bw = run.data["bandwidth"]
    notes = [f"Copy bandwidth (read + write) {bw['gb_per_s_median'] / 1000:.2f} TB/s, median of {bw['repeats']};",
             "\"params ratio\" is the full model's params over the sub-network's; \"floor\" is the bytes a decode",
             "step reads over that bandwidth; \"beyond floor per layer\" is (decode - floor) / layers.",
             f"Beyond the floor per layer: {span([layer_cost_us(a) for a, _ in pairs], lambda x: f'{x:.0f}')} us",
             f"in all {len(pairs)} batch-1 rows, {span([layer_cost_us(b) for _, b in pairs], lambda x: f'{x:.0f}')}",
             "us at batch 16. Largest decode p90 - median:",
             f"{max(r['decode_p90_ms'] - r['decode_ms'] for r in rows):.3f} ms;",
             f"{rows[0]['repeats']} timed requests a row."]
    return section(runs, table(header, body), notes)


FORMAT_WORDS = {"bf16": "bf16", "int4_tinygemm": "INT4 kernel", "sparse24": "2:4 kernel",
                "int4_hf": "INT4 export, transformers"}


def scale_formats(runs: list[Run]) -> str:
    """Compressed formats beside bf16: decode against the bf16 full model and against bf16 of the same shape."""
    names = short(runs)
    header = ["run", "shape", "sub-network", "format", "weights read b1 (GB)", "floor b1 ms", "decode ms/token b1",
              "vs bf16 full", "vs bf16 same shape", "decode b16", "vs bf16 full", "vs bf16 same shape",
              "prefill ms b1", "prefill b16"]
    body, same_shape = [], []
    for run in runs:
        pairs = scale_pairs(run)
        bf16 = {(a["shape"], a["subnet"]): (a, b) for a, b in pairs if a["format"] == "bf16"}
        for b1, b16 in pairs:
            ref1, ref16 = bf16[(b1["shape"], b1["subnet"])]
            vs1, vs16 = ref1["decode_ms"] / b1["decode_ms"], ref16["decode_ms"] / b16["decode_ms"]
            same_shape.append((b1["format"], vs1, vs16, ref1["prefill_ms"] / b1["prefill_ms"],
                               ref16["prefill_ms"] / b16["prefill_ms"]))
            body.append([names[run.stem], b1["shape"], subnet_label(b1["subnet"]), FORMAT_WORDS[b1["format"]],
                         fixed(b1["decode_read_bytes"] / 1e9), fixed(b1["floor_decode_ms"], 2),
                         fixed(b1["decode_ms"], 2),
                         times(b1["decode_speedup_vs_bf16_full"]), times(vs1), fixed(b16["decode_ms"], 2),
                         times(b16["decode_speedup_vs_bf16_full"]), times(vs16), fixed(b1["prefill_ms"]),
                         fixed(b16["prefill_ms"])])
    notes = ["\"vs bf16\" columns are speed-ups (bf16 ms over this row's ms) within the same JSON."]
    for fmt in ("int4_tinygemm", "sparse24"):
        got = [s for s in same_shape if s[0] == fmt]
        if got:
            notes.append(f"{FORMAT_WORDS[fmt]} against bf16 of the same shape: decode b1 "
                         f"{span([s[1] for s in got], times)}, b16 {span([s[2] for s in got], times)};"
                         f" prefill b1 {span([s[3] for s in got], times)}, b16 {span([s[4] for s in got], times)}.")
    conversions = [(r, r.get("conversion") or {}) for run in runs for r in run.data["rows"] if r["batch"] == 1]
    errs = [c["probe_rel_err"] for _, c in conversions if "probe_rel_err" in c]
    if errs:
        notes.append(f"Each kernel was checked against the dense weight on a probe: relative error "
                     f"{span(errs, lambda x: f'{x:.4f}')}.")
    for row, conv in conversions:
        if "safetensors_bytes" in conv:
            notes.append(f"{FORMAT_WORDS[row['format']]} {subnet_label(row['subnet'])}: "
                         f"{conv['safetensors_bytes'] / 1e9:.2f} GB of safetensors, run as {conv['runs_as']}"
                         f" ({row['params'] * 2 / 1e9:.2f} GB as bf16 params).")
    return section(runs, table(header, body), notes)


# --- bench_train ---


def train_variants(runs: list[Run]) -> str:
    """Optimizer-step time, tokens/s and peak memory of plain PEFT LoRA and the super-adapter's modes."""
    names = short(runs)
    header = ["run", "shape, dtype, batch x tokens", "variant", "step s, median (p90)", "forward tokens/s",
              "tokens/s vs PEFT", "peak memory MiB"]
    body = []
    for run in runs:
        data = run.data
        shape = data["model_shape"]
        variants = data["single_process"]["variants"]
        peft = variants["peft_lora"]["tokens_per_s"]
        what = (f"{shape['num_hidden_layers']} x {shape['hidden_size']}, {data['dtype'].removeprefix('torch.')},"
                f" {data['batch']} x {data['seq_len']}")
        for i, (name, v) in enumerate(variants.items()):
            body.append([names[run.stem] if i == 0 else "", what if i == 0 else "", name,
                         f"{v['step_s_median']:.3f} ({v['step_s_p90']:.3f})", f"{v['tokens_per_s']:.0f}",
                         times(v["tokens_per_s"] / peft), fixed(v.get("peak_memory_mib"), 0)])
    notes = sorted({v for run in runs for k, v in run.data["single_process"].items() if k.endswith("note")})
    return section(runs, table(header, body), [n[0].upper() + n[1:] + "." for n in notes])


def train_scaling(runs: list[Run]) -> str:
    """The real Ray Train + DeepSpeed job with 1 and 2 workers."""
    names = short(runs)
    header = ["run", "workers", "global batch (micro)", "reports every", "tokens/s, median",
              "wall tokens/s, median", "wall s/step, median", "steps measured", "scaling efficiency"]
    body = []
    for run in runs:
        rtd = run.data["ray_train_deepspeed"]
        workers = sorted((k for k in rtd if k.startswith("workers_")), key=lambda k: int(k.split("_")[1]))
        for k in workers:
            w = rtd[k]
            wall = w.get("wall_tokens_per_s_median")  # recorded since the ranks' records carry their end times
            every = rtd.get("log_every")
            reports = "not recorded" if every is None else "step" if every == 1 else f"{every} steps"
            body.append([names[run.stem], k.split("_")[1],
                         f"{w['config']['batch_size']} ({w['config']['micro_batch_size']})",
                         reports,
                         f"{w['tokens_per_s_median']:.0f}", f"{wall:.0f}" if wall is not None else "-",
                         fixed(w["wall_step_s_median"], 2) if wall is not None else "-", str(w["steps_measured"]),
                         fixed(rtd["scaling_efficiency"], 2) if k == workers[-1] else ""])
    return section(runs, table(header, body))


# --- bench_search ---


def search_runtimes(runs: list[Run]) -> str:
    """Decode and request latency of the maximal, heuristic and minimal sub-networks under each runtime."""
    (run,) = runs
    rt = run.data["runtimes"]
    names = rt["runtimes"]
    header = ["sub-network", "params"] + [f"decode ms/token, {n}" for n in names]
    header += [f"request ms, {n}" for n in names]
    body = []
    for subnet, info in rt["subnets"].items():
        lat = info["latencies"]
        body.append([subnet, millions(info["params"])] + [fixed(lat[n]["decode_ms"], 2) for n in names]
                    + [fixed(lat[n]["latency_ms"]) for n in names])
    return section(runs, table(header, body), [f"Device: {rt.get('device_name', 'not recorded')}."])


def search_scaling(runs: list[Run]) -> str:
    """Evaluations per minute with more evaluators on the pool's GPUs."""
    (run,) = runs
    sc = run.data["scaling"]
    header = ["evaluators", "GPUs each", "evaluations / min, steady", "wall s", "median evaluation s", "efficiency"]
    body = [[str(r["workers"]), str(r["gpus_per_worker"]), fixed(r["evals_per_min_steady"]), fixed(r["wall_s"]),
             fixed(r["median_eval_s"], 2), fixed(r["efficiency"], 2)] for r in sc["runs"]]
    return section(runs, table(header, body), [f"Pool `{sc['pool']}`, {sc['evaluations']} evaluations a run."])


def search_strategies(runs: list[Run]) -> str:
    """Final hypervolume per strategy and seed, and the evaluations each needed to reach random search's."""
    names = short(runs)
    header = ["run (budget, population, objective)", "strategy", "mean final hypervolume", "median", "final per seed",
              "evaluations to reach random's final, per seed"]
    body = []
    for run in runs:
        st = run.data["strategies"]
        label = f"{names[run.stem]} ({st['budget']}, {st['population']}, {st['objective']})"
        for i, strategy in enumerate(st["mean_final_hypervolume"]):
            mine = [r for r in st["runs"] if r["strategy"] == strategy]
            reach = [r.get("evals_to_reach_random_final") for r in mine]
            median = st.get("median_final_hypervolume", {}).get(strategy)
            body.append([label if i == 0 else "", strategy, fixed(st["mean_final_hypervolume"][strategy]),
                         fixed(median),
                         ", ".join(f"{r['seed']}: {r['final']:.1f}" for r in mine),
                         "-" if strategy == "random" else
                         ", ".join(f"{r['seed']}: {'not within the budget' if n is None else n}"
                                   for r, n in zip(mine, reach))])
    return section(runs, table(header, body), ["Seeds share one hypervolume reference per run."])


def load(runs: list[Run]) -> str:
    """Load runs side by side: memory and rate at every hundred rows, appends against a one-file rewrite, resume."""
    header = ["run", "rows", "s", "evaluations / s since the previous line", "driver MB", "evaluators",
              "evaluators MB"]
    body, notes = [], ["Each line is the first memory sample at or past a hundred rows; the first line's rate counts",
                       "from the first sample with a row."]
    for run in runs:
        data = run.data
        label = f"{run.stem} (at most {data.get('trials_per_run', 'all')} trials a Tune run)"
        samples = data["samples"]
        prev = next(s for s in samples if s["rows"] > 0)
        for mark in range(100, data["evaluations"] + 1, 100):
            s = next((s for s in samples if s["rows"] >= mark), None)
            if s is None:
                break
            rate = (s["rows"] - prev["rows"]) / (s["s"] - prev["s"]) if s["s"] > prev["s"] else None
            body.append([label, str(s["rows"]), fixed(s["s"]), fixed(rate), fixed(s["driver_mb"]),
                         str(s["evaluators"]), fixed(s["evaluators_mb"])])
            prev = s
        search, resume = data["search"], data["resume"]
        notes.append(f"{run.stem}: {search['rows']} rows in {search['wall_s']} s; resume on its output:"
                     f" {sum(resume['new_evaluations'].values())} new evaluations in {resume['wall_s']} s.")
        def at_marks(ms_by_rows: dict) -> str:
            return ", ".join(f"{ms} ms at {n} rows" for n, ms in ms_by_rows.items())

        rewrite = data.get("rewrite_ms")
        notes.append(f"Appending one row: {at_marks(data['append_ms'])}"
                     + (f" (the table one file read and written again instead: {at_marks(rewrite)})" if rewrite else "")
                     + ".")
        for n, at in data["at"].items():
            notes.append(f"At mark {n} ({at['rows']} rows): driver {at['driver_mb']} MB; evaluator processes"
                         f" {at['evaluators']}, {at['evaluators_mb']} MB summed.")
    return section(runs, table(header, body), notes)


def pools(runs: list[Run]) -> str:
    """Two pools at once against one after another, medians over repeats, and how busy the evaluators were."""
    names = short(runs)
    header = ["run (budget per pool, evaluators per pool, repeats)", "pool a alone s", "pool b alone s",
              "one after another s", "at once s", "at once / slower alone", "target met",
              "evaluators busy at once", "evaluators busy one after another"]
    body = []
    for run in runs:
        p = run.data["pools"]
        med = p["median_wall_s"]
        repeats = len({r["repeat"] for r in p["runs"]})

        def busy(kind: str, runs_: list[Row] = p["runs"]) -> str:
            fractions = [u["fraction"] for r in runs_ if r["run"] == kind for u in r["utilisation"].values()]
            return span(fractions, lambda x: f"{100 * x:.0f}") + " %"

        body.append([f"{names[run.stem]} ({p['budget_per_pool']}, {p['evaluators_per_pool']}, {repeats})",
                     fixed(med["pool-a alone"], 2), fixed(med["pool-b alone"], 2), fixed(med["sequential"], 2),
                     fixed(med["concurrent"], 2), fixed(p["concurrent_over_slower_alone"], 2),
                     "yes" if p["target_met"] else "no", busy("concurrent"), busy("sequential")])
    notes = []
    for run in runs:
        per = {}
        for r in run.data["pools"]["runs"]:
            per.setdefault(r["repeat"], {})[r["run"]] = r["wall_s"]
        notes.append(f"{names[run.stem]}, at once against one after another per repeat: "
                     + "; ".join(f"{w['concurrent']} s against {w['sequential']} s" for w in per.values()) + ".")
    return section(runs, table(header, body), notes)


# --- bench_serving ---


def serving(runs: list[Run]) -> str:
    """Exported models timed in transformers (static cache) and vLLM's offline engine."""
    (run,) = runs
    header = ["model", "architecture", "params", "transformers ms, median (p90)", "speed-up", "tokens/s",
              "vLLM ms, median (p90)", "speed-up", "tokens/s", "vLLM engine start s"]
    body = []
    for row in run.data["rows"]:
        hf, vl = row["transformers_static"], row["vllm"]
        body.append([row["model"], hf["architecture"], millions(hf["params"]),
                     f"{fixed(hf['latency_ms'])} ({fixed(hf['latency_p90_ms'])})", times(hf["speedup_vs_first"]),
                     fixed(hf["decode_tokens_per_s"]), f"{fixed(vl['latency_ms'])} ({fixed(vl['latency_p90_ms'])})",
                     times(vl["speedup_vs_first"]), fixed(vl["decode_tokens_per_s"]), f"{vl['load_s']:.0f}"])
    notes = ["`LonasLlamaForCausalLM` is a per-layer export (vLLM serves it through lonas-ray's plugin),",
             "`LlamaForCausalLM` a stock Llama; speed-ups are over the first model in each engine."]
    return section(runs, table(header, body), notes)


# --- bench_lease ---


def lease(runs: list[Run]) -> str:
    """One architecture timed alone and beside busy evaluators, without and with the hardware lease."""
    names = short(runs)
    header = ["run", "condition", "latency ms, median (p10-p90)", "vs alone", "lease wait s, median",
              "timed beside busy work", "busy evaluators' scorings / timings meanwhile", "other processes, cores"]
    body = []
    for run in runs:
        for row in run.data["conditions"]:
            words = "alone" if not row["busy"] else \
                f"{row['busy']} busy, {'lease' if row['lease'] else 'no lease'}"
            work = ", ".join(f"{w['scorings']} / {w['timings']}" for w in row["busy_work"]) or "-"
            body.append([names[run.stem], words,
                         f"{fixed(row['latency_ms'])} ({fixed(row['latency_p10_ms'])}-{fixed(row['latency_p90_ms'])})",
                         times(row["ratio_to_alone"]), fixed(row["lease_wait_s_median"], 2),
                         pct(row["overlap"]["share"], 1), work,
                         fixed(row["other_load"]["mean_cores_busy_with_other_work"], 2)])
    notes = ["\"latency ms\" is the median over a condition's measurements of each one's median request, p10-p90",
             "of all its requests together; \"vs alone\" is `ratio_to_alone`, that median over the alone one's.",
             "\"timed beside busy work\" is `overlap.share`: the share of the measured timings' seconds during which a",
             "busy evaluator scored or timed (the lease's own check: none under it). \"Other processes\" is the mean",
             "number of cores the host's other processes kept busy meanwhile, which no lease holds back."]
    for run in runs:
        s = run.data["settings"]
        notes.append(f"{names[run.stem]}: {millions(run.data['params'])} params, {s['measurements']} measurements of"
                     f" {s['warmup']} + {s['repeats']} requests ({s['batch_size']} x {s['prompt_len']} prompt tokens"
                     f" + {s['new_tokens']} new, `{s['runtime']}`) per condition, one thread per evaluator; a busy"
                     f" evaluator scores {s['busy_batch']} x {s['busy_tokens']} tokens, then times"
                     f" {s['busy_repeats']} requests, over and over.")
    return section(runs, table(header, body), notes)


def pipeline_stages(runs: list[Run]) -> str:
    """A `lonas-ray run`'s stages (seconds, peak memory) and its evaluators' throughput, from stages.json and the
    evaluators' profiles the run kept."""
    names = short(runs)
    header = ["run", "stage", "seconds", "calls", "peak host MiB", "peak GPU MiB"]
    body = []
    for run in runs:
        for stage, rec in run.data["stages"].items():
            memory = rec.get("memory") or {}
            done = "finished" in rec
            body.append([names[run.stem], stage, fixed(rec["seconds"]) if done else "did not finish",
                         str(rec.get("runs", 1)), fixed(memory.get("peak_rss_mib"), 0),
                         fixed(memory.get("peak_gpu_mib"), 0)])
    stages = table(header, body)
    header = ["run", "pool", "evaluations", "per minute", "load", "switch", "score", "time"]
    body = []
    for run in runs:
        evaluators = run.data.get("evaluators") or run.data["summary"]["evaluators"]
        for pool, e in sorted(evaluators.items()):
            body.append([names[run.stem], pool, str(e["evaluations"]), fixed(e["per_minute"], 2),
                         *(f"{fixed(e['seconds'][k])} s ({pct(e['share'][k])})"
                           for k in ("load_s", "switch_s", "score_s", "time_s"))])
    notes = ["\"seconds\" is stages.json's: a stage run over several calls (\"calls\") counts its last call alone.",
             "Peak memory: the stage's largest process (host) and what PyTorch allocated at most on the GPU (not the",
             "CUDA context). Evaluators: evaluations a minute of one evaluator's busy time, and where that time went",
             "(load the super-network, switch = slice + merge, score, time: the timed runs and the wait for the",
             "GPU's lease while the other pool times)."]
    return section(runs, stages + "\n\n" + table(header, body), notes)
