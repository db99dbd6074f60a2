"""Benchmark of the elastic core on this machine; every figure is measured, none is typed in.

    python jobs/bench_core.py --out jobs/results/bench_core_cpu.json     # full run, about 10 min on 2 cores
    python jobs/bench_core.py --quick --out /tmp/bench.json              # small model, few repeats (tests)
    ray job submit --working-dir . -- python jobs/bench_core.py --out /abs/path/bench.json   # needs no Ray

Under ``ray job submit`` the job runs in a copy of the working directory: give ``--out`` an
absolute path. Run it on an otherwise idle machine: ``other_load`` in the JSON says how much
CPU other processes took during the run.

Three parts, each a section of the JSON:

* ``switch``: ``SuperNetwork.activate`` on a Llama-7B-shaped model built on the meta
  device (activation only writes integers, it never touches a tensor, so meta is honest).
* ``subnets``: on a SmolLM2-135M-shaped model with random weights: ``extract`` (+ merge)
  time, and prefill latency of the base, the super-network at the maximal config, and
  three smaller sub-networks both activated (slicing views) and extracted (merged).
* ``overhead``: the elastic wrapper at its maximal config against plain PEFT LoRA of the
  same rank, alpha and targets on the same weights, inference and a training step,
  measured interleaved (A/B, B/A, ...) so that drift on a shared machine hits both alike.

Timings are summarised as median, p90, min, max and the repeat count. Latency does not
depend on weight values, so random weights are used throughout; the JSON says so.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import peft
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

import lonas_ray  # noqa: F401  (registers the lonas_<family> export classes)
from lonas_ray.counting import count_model, count_subnet
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.families import decoder_layers, get_submodule
from lonas_ray.merge.extract import extract
from lonas_ray.space import SearchSpace, SpaceSpec, SubnetConfig

log = logging.getLogger("bench_core")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How big and how long: ``FULL`` for the report, ``QUICK`` for tests."""

    switch_configs: int  # distinct sampled sub-networks the switch loop cycles through
    switches: int  # timed activations
    model: dict  # LlamaConfig fields of the CPU-sized model (random weights)
    skippable: int  # skippable blocks of the CPU-sized model: the ones just before the last two
    prefill_tokens: int  # batch 1 x this many tokens for inference latency
    train_batch: int  # training step: train_batch x prefill_tokens
    extract_repeats: int
    forward_repeats: int
    train_repeats: int
    warmup: int
    r_max: int = 16
    alpha: float = 32.0
    rank_choices: tuple[int, ...] = (16, 12, 8)
    mlp_choices: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625, 0.5)
    heads_choices: tuple[float, ...] = (1.0, 0.75, 0.5)
    switch_skippable: int = 8  # skippable blocks of the 7B-shaped model
    seed: int = 0


SMOLLM2_SHAPE = dict(  # SmolLM2-135M's architecture
    hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
    intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
)
QUICK_SHAPE = dict(
    hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    intermediate_size=384, vocab_size=2048, max_position_embeddings=256, tie_word_embeddings=True,
)
FULL = Settings(switch_configs=100, switches=2000, model=SMOLLM2_SHAPE, skippable=8, prefill_tokens=128,
                train_batch=4, extract_repeats=5, forward_repeats=40, train_repeats=30, warmup=2)
QUICK = Settings(switch_configs=20, switches=200, model=QUICK_SHAPE, skippable=2, prefill_tokens=64,
                 train_batch=2, extract_repeats=2, forward_repeats=3, train_repeats=3, warmup=1)


def space_spec(s: Settings, num_layers: int, skippable: int) -> SpaceSpec:
    """LoRA on all 7 linears with elastic rank, MLP width, heads and ``skippable`` skippable blocks."""
    last = num_layers - 2  # the final two blocks always stay
    return SpaceSpec.from_dict({
        "lora": {"target_modules": TARGETS, "r_max": s.r_max, "alpha": s.alpha, "rank_choices": list(s.rank_choices)},
        "mlp": {"choices": list(s.mlp_choices)},
        "heads": {"choices": list(s.heads_choices)},
        "depth": {"skippable": list(range(last - skippable, last))},
    })


# --------------------------------------------------------------------------- measuring


def summary(samples: list[float], scale: float = 1.0) -> dict:
    """Median, p90 (linear interpolation), min, max, mean and count of ``samples`` times ``scale``."""
    xs = sorted(x * scale for x in samples)
    pos = 0.9 * (len(xs) - 1)
    lo = math.floor(pos)
    p90 = xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)
    return {"median": statistics.median(xs), "p90": p90, "min": xs[0], "max": xs[-1],
            "mean": statistics.fmean(xs), "repeats": len(xs)}


def interleaved(variants: dict[str, tuple[Callable[[], None], Callable[[], None]]], repeats: int,
                warmup: int) -> dict[str, list[float]]:
    """Seconds per ``run()`` of each variant ``(prepare, run)``, the variants taking turns.

    Each repeat runs every variant once, in the listed order on even repeats and reversed on
    odd ones, so slow drift and "who goes first" effects fall on all variants alike.
    ``prepare`` (e.g. activating a sub-network) is not timed.
    """
    names = list(variants)
    for name in names:
        prepare, run = variants[name]
        prepare()
        for _ in range(warmup):
            run()
    out: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            prepare, run = variants[name]
            prepare()
            t0 = time.perf_counter()
            run()
            out[name].append(time.perf_counter() - t0)
    return out


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_model": cpu,
        "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
    }


def load() -> list[float]:
    """1, 5 and 15-minute load averages (they include this benchmark's own threads)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds this process has used) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    own = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


# --------------------------------------------------------------------------- 1. switch time


def bench_switch(s: Settings) -> dict:
    config = LlamaConfig()  # Llama-7B's shape: hidden 4096, 32 layers, MLP 11008, 32 heads
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    spec = space_spec(s, config.num_hidden_layers, s.switch_skippable)
    supernet = SuperNetwork(model, spec)
    space = supernet.space
    configs = [space.sample(s.seed + i) for i in range(s.switch_configs)]
    for c in configs:  # warm-up: one pass over every config
        supernet.activate(c)
    gc.collect()
    switch_ns, validate_ns = [], []
    for i in range(s.switches):
        c = configs[i % len(configs)]
        t0 = time.perf_counter_ns()
        supernet.activate(c)
        switch_ns.append(time.perf_counter_ns() - t0)
    for i in range(s.switches):  # the validation part alone, for a breakdown
        c = configs[i % len(configs)]
        t0 = time.perf_counter_ns()
        space.validate(c)
        validate_ns.append(time.perf_counter_ns() - t0)
    return {
        "model": {"config": "LlamaConfig() defaults (Llama-7B shape)", "hidden_size": config.hidden_size,
                  "num_layers": config.num_hidden_layers, "intermediate_size": config.intermediate_size,
                  "num_heads": config.num_attention_heads, "num_kv_heads": config.num_key_value_heads,
                  "params": sum(p.numel() for p in model.parameters()), "device": "meta"},
        "note": "built on the meta device: activate() writes integers into the wrappers and never touches a "
                "tensor, so the switch time does not depend on where (or whether) the weights live",
        "space": spec.to_dict(),
        "dimensions": len(space.dims),
        "dimensions_by_kind": {k: sum(d.kind == k for d in space.dims.values())
                               for k in ("rank", "mlp", "heads", "keep")},
        "space_size_log10": round(sum(math.log10(len(d.choices)) for d in space.dims.values()), 2),
        "elastic_linears": len(supernet.elastic),
        "skippable_blocks": len(supernet.skippable),
        "distinct_configs": len(configs),
        "switch_us": summary(switch_ns, 1e-3),
        "validate_us": summary(validate_ns, 1e-3),
    }


# --------------------------------------------------------------------------- 2. sub-networks


def between(space: SearchSpace) -> SubnetConfig:
    """A sub-network between the heuristic and the minimal one.

    Every rank, width and head dimension takes the choice halfway (rounded towards the
    minimal) between the heuristic's and the minimal's; every other skippable block is skipped.
    """
    cfg, keeps = {}, 0
    for name, d in space.dims.items():
        if d.kind == "keep":
            cfg[name] = keeps % 2 == 1
            keeps += 1
        else:
            cfg[name] = d.choices[math.ceil((len(d.choices) // 2 + len(d.choices) - 1) / 2)]
    return space.validate(cfg)


SUBNET_RULES = {
    "maximal": "largest choice of every dimension",
    "heuristic": "median choice of every dimension, all blocks kept",
    "between": "halfway between heuristic and minimal, every other skippable block skipped",
    "minimal": "smallest choice of every dimension, all skippable blocks skipped",
}


def describe(cfg: SubnetConfig) -> dict:
    """The distinct choices a sub-network makes, per kind of dimension."""
    def values(kind: str) -> list:
        return sorted({v for k, v in cfg.items() if k.split(".")[0] == kind})
    skipped = sorted(int(k.split(".")[1]) for k, v in cfg.items() if k.startswith("keep.") and not v)
    return {"mlp_widths": values("mlp"), "heads": values("heads"), "ranks": values("rank"), "skipped_blocks": skipped}


def random_model(shape: dict, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=torch.float32)
    return model.eval()


def randomize_adapters(supernet: SuperNetwork, seed: int, std: float = 0.02) -> None:
    """Non-zero adapters, so merging changes the weights and the logit check means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in supernet.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def model_info(shape: dict) -> dict:
    return {"family": "llama", "weights": "random (seeded); latency does not depend on weight values",
            "dtype": "float32", **shape}


def bench_subnets(s: Settings, base: torch.nn.Module, supernet: SuperNetwork) -> dict:
    space = supernet.space
    subnets = {"maximal": space.maximal(), "heuristic": space.heuristic(), "between": between(space),
               "minimal": space.minimal()}
    ids = torch.randint(0, s.model["vocab_size"], (1, s.prefill_tokens), generator=torch.Generator().manual_seed(1))

    # extraction + merge, the subnets taking turns
    extract_s: dict[str, list[float]] = {n: [] for n in subnets}
    extracted: dict[str, torch.nn.Module] = {}
    for r in range(s.extract_repeats):
        for name, cfg in subnets.items():
            extracted.pop(name, None)
            gc.collect()
            t0 = time.perf_counter()
            extracted[name] = extract(supernet, cfg, merge=True)
            extract_s[name].append(time.perf_counter() - t0)
        log.info("extraction repeat %d/%d done", r + 1, s.extract_repeats)

    # forward latency: prefill, last-position logits only (what generate() asks for)
    def forward(model):
        def run():
            with torch.inference_mode():
                model(input_ids=ids, logits_to_keep=1)
        return run

    def activate(cfg):
        return lambda: supernet.activate(cfg)

    nothing = lambda: None  # noqa: E731
    variants = {"base": (nothing, forward(base)),
                "supernet.maximal": (activate(subnets["maximal"]), forward(supernet))}
    for name in ("heuristic", "between", "minimal"):
        variants[f"supernet.{name}"] = (activate(subnets[name]), forward(supernet))
        variants[f"extracted.{name}"] = (nothing, forward(extracted[name]))
    latencies = interleaved(variants, s.forward_repeats, s.warmup)

    # counts and a correctness check of each extraction (same logits as the activated sub-network)
    with torch.inference_mode():
        errors = {}
        for name, cfg in subnets.items():
            supernet.activate(cfg)
            ref = supernet(input_ids=ids).logits
            got = extracted[name](input_ids=ids).logits
            errors[name] = float((got - ref).abs().max() / ref.abs().max())
    supernet.activate(subnets["maximal"])

    base_counts = count_model(base)
    base_ms = statistics.median(latencies["base"]) * 1e3
    rows = {}
    for vname, samples in latencies.items():
        kind, _, sub = vname.partition(".")
        if kind == "base":
            counts = base_counts.to_dict()
        elif kind == "supernet":
            counts = count_subnet(supernet, subnets[sub]).to_dict()
        else:
            counts = {**count_model(extracted[sub]).to_dict(), "counted_by": "count_model(extracted model)"}
        lat = summary(samples, 1e3)
        rows[vname] = {"latency_ms": lat, "speedup_vs_base": base_ms / lat["median"], **counts,
                       "params_vs_base": counts["params"] / base_counts.params,
                       "macs_vs_base": counts["macs_per_token"] / base_counts.macs_per_token}
        if kind == "supernet":
            rows[vname]["counted_by"] = "count_subnet(supernet, cfg): as once extracted and merged"
    return {
        "model": model_info(s.model),
        "space": space_spec(s, s.model["num_hidden_layers"], s.skippable).to_dict(),
        "dimensions": len(space.dims),
        "resolved_choices": {k: next(list(d.choices) for d in space.dims.values() if d.kind == k)
                             for k in ("rank", "mlp", "heads", "keep")},
        "subnets": {n: {"rule": SUBNET_RULES[n], **describe(c)} for n, c in subnets.items()},
        "extract_s": {n: summary(v) for n, v in extract_s.items()},
        "extract_note": "lonas_ray.merge.extract.extract(supernet, cfg, merge=True): builds the model from its "
                        "config, slices and merges every tensor (fp32), loads the state dict",
        "extract_max_rel_err": errors,
        "latency_setup": {"input": f"batch 1 x {s.prefill_tokens} tokens, prefill", "logits": "last position only "
                          "(logits_to_keep=1, as generate() prefills)", "mode": "torch.inference_mode, eval, fp32",
                          "warmup": s.warmup, "order": "variants interleaved, order reversed every other repeat",
                          "supernet": "activated super-network: slicing views, LoRA unmerged at the active rank",
                          "extracted": "extracted model: physically smaller tensors, LoRA merged"},
        "variants": rows,
    }


# --------------------------------------------------------------------------- 3. wrapper overhead


def bench_overhead(s: Settings, base: torch.nn.Module, supernet: SuperNetwork) -> dict:
    """The elastic wrapper at its maximal config against stock PEFT LoRA on a copy of the same base."""
    space = supernet.space
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=space.r_max, lora_alpha=space.alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none"))
    # the same adapter values in both, so both compute the same function (checked below)
    peft_layers = decoder_layers(peft_model.get_base_model(), supernet.family)
    with torch.no_grad():
        for (i, name), em in supernet.elastic.items():
            pm = get_submodule(peft_layers[i], f"{supernet.family.parent_of(name)}.{name}")
            pm.lora_A["default"].weight.copy_(em.lora_A)
            pm.lora_B["default"].weight.copy_(em.lora_B)
    supernet.activate(space.maximal())
    trainable = {"elastic": sum(p.numel() for p in supernet.parameters() if p.requires_grad),
                 "peft": sum(p.numel() for p in peft_model.parameters() if p.requires_grad)}

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, s.model["vocab_size"], (1, s.prefill_tokens), generator=gen)
    batch = torch.randint(0, s.model["vocab_size"], (s.train_batch, s.prefill_tokens), generator=gen)

    with torch.inference_mode():
        a, b = supernet(input_ids=ids).logits, peft_model(input_ids=ids).logits
        logit_err = float((a - b).abs().max() / b.abs().max())

    def infer(model):
        def run():
            with torch.inference_mode():
                model(input_ids=ids, logits_to_keep=1)
        return run

    def step(model):
        params = [p for p in model.parameters() if p.requires_grad]

        def run():
            model(input_ids=batch, labels=batch).loss.backward()
            for p in params:
                p.grad = None
        return run

    def mode(training: bool):
        def prepare():
            for m in (base, supernet, peft_model):
                m.train(training)
        return prepare

    log.info("overhead: inference, %d interleaved repeats", s.forward_repeats)
    inf = interleaved({"elastic": (mode(False), infer(supernet)), "peft": (mode(False), infer(peft_model)),
                       "base": (mode(False), infer(base))}, s.forward_repeats, s.warmup)
    log.info("overhead: training step, %d interleaved repeats", s.train_repeats)
    trn = interleaved({"elastic": (mode(True), step(supernet)), "peft": (mode(True), step(peft_model))},
                      s.train_repeats, 1)
    mode(False)()

    def compare(samples: dict[str, list[float]]) -> dict:
        out = {f"{n}_ms": summary(v, 1e3) for n, v in samples.items()}
        e, p = statistics.median(samples["elastic"]), statistics.median(samples["peft"])
        out["overhead_pct"] = (e / p - 1) * 100
        paired = [x / y for x, y in zip(samples["elastic"], samples["peft"])]
        out["paired_overhead_pct"] = (statistics.median(paired) - 1) * 100
        return out

    return {
        "model": model_info(s.model),
        "lora": {"r": space.r_max, "alpha": space.alpha, "dropout": 0.0, "target_modules": TARGETS},
        "trainable_params": trainable,
        "logits_max_rel_err_elastic_vs_peft": logit_err,
        "inference": {"setup": f"batch 1 x {s.prefill_tokens} tokens, inference_mode, eval, last-position logits",
                      **compare(inf)},
        "train_step": {"setup": f"batch {s.train_batch} x {s.prefill_tokens} tokens, train mode, forward + LM loss "
                                "+ backward, adapters only trainable, no optimizer step", **compare(trn)},
        "overhead_definition": "overhead_pct = median(elastic) / median(peft) - 1; paired_overhead_pct = median over "
                               "repeats of elastic/peft of the same repeat - 1 (the two ran back to back)",
    }


# --------------------------------------------------------------------------- report


def log_table(result: dict) -> None:
    sw = result["switch"]
    log.info("switch (7B shape, %d dims): median %.1f us, p90 %.1f us over %d switches",
             sw["dimensions"], sw["switch_us"]["median"], sw["switch_us"]["p90"], sw["switch_us"]["repeats"])
    sub = result["subnets"]
    for n, st in sub["extract_s"].items():
        log.info("extract %-10s median %.2f s  p90 %.2f s", n, st["median"], st["p90"])
    log.info("%-22s %12s %10s %9s %8s", "variant", "latency ms", "p90 ms", "params M", "speedup")
    for n, row in sub["variants"].items():
        log.info("%-22s %12.1f %10.1f %9.1f %8.2f", n, row["latency_ms"]["median"], row["latency_ms"]["p90"],
                 row["params"] / 1e6, row["speedup_vs_base"])
    ov = result["overhead"]
    for part in ("inference", "train_step"):
        o = ov[part]
        log.info("%-10s elastic %.1f ms  peft %.1f ms  overhead %+.1f%% (paired %+.1f%%)", part,
                 o["elastic_ms"]["median"], o["peft_ms"]["median"], o["overhead_pct"], o["paired_overhead_pct"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write the figures to")
    parser.add_argument("--quick", action="store_true", help="small model and few repeats (for tests, < 1 min)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    started = time.perf_counter()
    result: dict = {
        "benchmark": "lonas-ray bench_core",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": asdict(s),
        "machine": machine_info(),
        "load_average": {"start": load()},
        "section_seconds": {},
    }
    machine_busy0, own0 = cpu_seconds()

    t0 = time.perf_counter()
    log.info("1/3 switch time on a 7B-shaped meta model")
    result["switch"] = bench_switch(s)
    result["section_seconds"]["switch"] = time.perf_counter() - t0
    result["load_average"]["after_switch"] = load()

    t0 = time.perf_counter()
    log.info("2/3 extraction and sub-network latency")
    base = random_model(s.model, s.seed)
    supernet = SuperNetwork(copy.deepcopy(base), space_spec(s, s.model["num_hidden_layers"], s.skippable))
    randomize_adapters(supernet, s.seed)
    result["subnets"] = bench_subnets(s, base, supernet)
    result["section_seconds"]["subnets"] = time.perf_counter() - t0
    result["load_average"]["after_subnets"] = load()

    t0 = time.perf_counter()
    log.info("3/3 elastic wrapper vs PEFT LoRA")
    result["overhead"] = bench_overhead(s, base, supernet)
    result["section_seconds"]["overhead"] = time.perf_counter() - t0
    result["load_average"]["end"] = load()
    result["section_seconds"]["total"] = wall = time.perf_counter() - started
    machine_busy, own = cpu_seconds()
    others = max(0.0, (machine_busy - machine_busy0) - (own - own0))
    result["other_load"] = {
        "other_processes_cpu_s": others, "wall_s": wall, "mean_cores_busy_with_other_work": others / wall,
        "note": "machine-wide busy CPU time from /proc/stat minus this process's own, over the run; the load "
                "averages above include the benchmark itself (up to torch_threads)",
    }

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log_table(result)
    log.info("wrote %s in %.0f s", out, result["section_seconds"]["total"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
