"""Benchmark: super-adapter training throughput and memory against plain PEFT LoRA, and Ray Train scaling.

Part A (one process, the device at hand): optimizer steps on the same model, batch and
hardware for plain PEFT LoRA and for the elastic super-adapter under each sampling
strategy (fixed:maximal, random, sandwich), repeats interleaved so drift hits all
alike. Part B (``--scaling``): the real training job (Ray Train + DeepSpeed ZeRO-2)
with 1 and with N workers, same per-worker micro-batch; scaling efficiency is
throughput(N) / (N x throughput(1)).

    python jobs/bench_train.py --out jobs/results/bench_train_cpu.json [--quick]
    python jobs/bench_train.py --device cuda --scaling 2 --out bench_train_gpu.json
Latency and throughput do not depend on weight values, so the model is built from a
config (SmolLM2-135M's shape by default) with random weights; the figures say so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.search.latency import sync
from lonas_ray.space import SpaceSpec
from lonas_ray.train.schedule import subnets_for_step

log = logging.getLogger("bench_train")

SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                     max_position_embeddings=2048)
# Llama-3.2-1B's shape: large enough that compute, not launch overhead, dominates a GPU step
LLAMA1B_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                     max_position_embeddings=2048)
QUICK_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, vocab_size=1024, max_position_embeddings=512)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPACE = {"lora": {"target_modules": TARGETS, "r_max": 16, "alpha": 32, "rank_choices": [16, 12, 8],
                  "groups": {"qkv": ["q_proj", "k_proj", "v_proj"], "gate_up": ["gate_proj", "up_proj"]}},
         "mlp": {"choices": [1.0, 0.75, 0.5], "align": 64}, "heads": {"choices": [1.0, 0.667, 0.334]}}
SHAPES = {"smollm2": SMOLLM2_SHAPE, "llama1b": LLAMA1B_SHAPE, "quick": QUICK_SHAPE}


def machine(device: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"platform": platform.platform(), "cpu": cpu, "cores": torch.get_num_threads(),
            "torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build(shape: dict, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape)).to(device, dtype)
    return model


class Variant:
    """One way of training: a model, an optimizer, and the sub-networks of step ``s``."""

    def __init__(self, name: str, shape: dict, device: str, dtype: torch.dtype, seed: int = 0):
        self.name = name
        model = build(shape, device, dtype)
        if name == "peft_lora":
            self.model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
            self.supernet = None
            params = [p for p in self.model.parameters() if p.requires_grad]
        else:
            self.supernet = SuperNetwork(model, SpaceSpec.from_dict(SPACE)).to(device)
            self.model = self.supernet
            params = self.supernet.adapter_parameters()
        self.model.train()
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.strategy = name.removeprefix("elastic_")
        self.seed = seed

    def step(self, s: int, batch: dict) -> int:
        """One optimizer step; returns the tokens that went through a forward pass."""
        subnets = ([None] if self.supernet is None
                   else subnets_for_step(self.supernet.space, self.strategy, self.seed, s))
        for sub in subnets:
            if sub is not None:
                self.supernet.activate(sub)
            loss = self.model(**batch).loss / len(subnets)
            loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return batch["input_ids"].numel() * len(subnets)


def part_a(shape: dict, device: str, dtype: torch.dtype, batch: int, seq: int, repeats: int, warmup: int) -> dict:
    names = ["peft_lora", "elastic_fixed:maximal", "elastic_random", "elastic_sandwich"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq), generator=g).to(device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    variants = {}
    peak = {}
    for n in names:  # memory is measured one variant at a time, from a clean allocator
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        v = Variant(n, shape, device, dtype)
        for s in range(warmup):
            v.step(s, data)
        sync(device)
        if device == "cuda":
            peak[n] = (torch.cuda.max_memory_allocated() - base) / 2**20
        variants[n] = v
    times = {n: [] for n in names}
    tokens = {}
    for r in range(repeats):
        for n in names:
            sync(device)
            t = time.perf_counter()
            tokens[n] = variants[n].step(warmup + r, data)
            sync(device)
            times[n].append(time.perf_counter() - t)
    out = {}
    for n in names:
        med = statistics.median(times[n])
        out[n] = {"step_s_median": med, "step_s_p90": sorted(times[n])[int(0.9 * (len(times[n]) - 1))],
                  "step_s_min": min(times[n]), "step_s_max": max(times[n]), "repeats": repeats,
                  "forward_tokens_per_step": tokens[n], "tokens_per_s": tokens[n] / med,
                  "examples_per_s": batch / med}
        if n in peak:
            out[n]["peak_memory_mib"] = peak[n]
    ref = out["peft_lora"]["tokens_per_s"]
    mx = out["elastic_fixed:maximal"]["tokens_per_s"]
    return {"variants": out,
            "elastic_maximal_overhead_vs_peft_pct": 100 * (ref / mx - 1),
            "note": "tokens_per_s counts tokens through a forward pass: sandwich runs 3 sub-networks per step"}


def part_b(workers: int, device: str, steps: int, quick: bool, log_every: int | None = None) -> dict:
    """The real job (TorchTrainer + DeepSpeed ZeRO-2) with 1 and ``workers`` workers, reporting to Ray Train every
    ``log_every`` steps (default: the config's). Two throughputs from the ranks' records: the steps' own time (the
    slowest rank's), and the wall time from one step's record to the next, which also holds what the loop waits for
    between steps (a report Ray Train's controller has not yet taken)."""
    from lonas_ray.config_io import to_dict
    from lonas_ray.data.toy import write_toy_task
    from lonas_ray.ray_env import ensure_ray
    from lonas_ray.train.config import TrainConfig
    from lonas_ray.train.trainer import train

    ensure_ray()
    gpu = device == "cuda"
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_toy_task(Path(tmp) / "toy.jsonl", n=2048)
        shape = QUICK_SHAPE if quick else SMOLLM2_SHAPE
        for n in sorted({1, workers}):
            micro = 2 if quick else (32 if gpu else 8)
            cfg = TrainConfig.from_dict({
                "supernet": {"model": {"kind": "tiny", "overrides": shape}, "space": SPACE,
                             "importance": {"examples": 2, "max_length": 16}},
                "data": {"train": str(data), "format": "instruction", "cutoff_len": 64},
                "output_dir": str(Path(tmp) / f"w{n}"),
                "sampling": {"strategy": "random"},
                "optim": {"steps": steps, "batch_size": micro * n, "micro_batch_size": micro},
                "scaling": {"num_workers": n, "use_gpu": gpu,
                            "resources_per_worker": {"GPU": 1} if gpu else {"CPU": 1}},
                "checkpoint": {"every_steps": steps, "max_failures": 0},
                **({"log_every": log_every} if log_every else {}),
            })
            train(cfg)
            per_step, ended = {}, {}
            for r in range(n):
                for line in (Path(cfg.output_dir) / "ranks" / f"rank{r}.jsonl").read_text().splitlines():
                    rec = json.loads(line)
                    tok, s = per_step.get(rec["step"], (0, 0.0))
                    per_step[rec["step"]] = (tok + rec["tokens"], max(s, rec["step_s"]))
                    ended[rec["step"]] = max(ended.get(rec["step"], 0.0), rec["ended"])
            measured = [step for step in sorted(per_step) if step >= 2]
            rates = [per_step[step][0] / per_step[step][1] for step in measured]
            walls = [ended[step] - ended[step - 1] for step in measured]
            res[f"workers_{n}"] = {"tokens_per_s_median": statistics.median(rates), "steps_measured": len(rates),
                                   "step_s_median": statistics.median(per_step[step][1] for step in measured),
                                   "wall_step_s_median": statistics.median(walls),
                                   "wall_tokens_per_s_median": statistics.median(
                                       per_step[step][0] / w for step, w in zip(measured, walls)),
                                   "config": to_dict(cfg)["optim"]}
            res["log_every"] = cfg.log_every
    if workers > 1:
        one, many = res["workers_1"]["tokens_per_s_median"], res[f"workers_{workers}"]["tokens_per_s_median"]
        res["scaling_efficiency"] = many / (workers * one)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small model, few repeats (for tests)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--scaling", type=int, default=0, help="also run the Ray Train job with 1 and N workers")
    ap.add_argument("--log-every", type=int, default=None,
                    help="the Ray Train job's train.log_every (default: the config's)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="model shape of part A (default: smollm2, quick with --quick)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    shape = SHAPES[args.shape or ("quick" if args.quick else "smollm2")]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    batch, seq = (2, 32) if args.quick else ((16, 256) if args.device == "cuda" else (4, 128))
    repeats = args.repeats or (3 if args.quick else 10)
    result = {"date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
              "machine": machine(args.device), "model_shape": shape, "weights": "random (from config)",
              "dtype": str(dtype), "batch": batch, "seq_len": seq,
              "single_process": part_a(shape, args.device, dtype, batch, seq, repeats, warmup=2)}
    if not torch.cuda.is_available():
        result["single_process"]["peak_memory_note"] = "CPU: per-variant peak memory not measurable in one process"
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))  # part A survives a failure in part B
    if args.scaling:
        result["ray_train_deepspeed"] = part_b(args.scaling, args.device, steps=6 if args.quick else 12,
                                               quick=args.quick, log_every=args.log_every)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    sp = result["single_process"]
    for n, v in sp["variants"].items():
        log.info("%-24s %8.3f s/step  %10.0f tok/s", n, v["step_s_median"], v["tokens_per_s"])
    log.info("elastic (maximal) overhead vs PEFT LoRA: %.1f%%", sp["elastic_maximal_overhead_vs_peft_pct"])
    if "ray_train_deepspeed" in result:
        log.info("Ray Train scaling: %s", json.dumps(result["ray_train_deepspeed"].get("scaling_efficiency")))


if __name__ == "__main__":
    main()
