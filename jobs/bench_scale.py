"""Serving speed of extracted sub-networks at real sizes (Llama-7B / 13B shapes) against the ideal, on one GPU.

    python jobs/bench_scale.py --out jobs/results/bench_scale_gpu_h200.json          (a GPU machine)
    python jobs/bench_scale.py --shapes tiny --device cpu --out /tmp/scale.json      (a smoke run anywhere)

For each shape the full model is wrapped as a super-network, and sub-networks at
several MLP widths, head counts and depths are *extracted* (sliced and merged,
exactly what the export stage writes), then timed the way a GPU pool serves them
(``cuda_graph``: static KV cache, decode step replayed from a CUDA graph): prefill
and per-token decode at each batch size, median and p90 over repeats.

Against the ideal: decode at small batch is bound by reading the weights once per
token, so the ideal speed-up is the ratio of the bytes a decode step reads (every
weight but the input embedding, whose rows are gathered, plus the KV cache) and the
floor is those bytes over the GPU's copy bandwidth, measured here with large
device-to-device copies. The params ratio is given too.

Weights are random bf16 (latency does not depend on their values; the JSON says so).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.elastic.supernet import SuperNetwork  # noqa: E402
from lonas_ray.merge.extract import extract  # noqa: E402
from lonas_ray.search.latency import measure, percentile, sync  # noqa: E402
from lonas_ray.space import SpaceSpec  # noqa: E402

SHAPES = {
    # Llama-2-7B / 13B: multi-head attention (kv heads = heads), 32k vocabulary, untied head
    "llama7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32000),
    "llama13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                     num_key_value_heads=40, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=256),
}
MLP = (1.0, 0.75, 0.5)
HEADS = (1.0, 0.75, 0.5)


def subnets(space) -> dict[str, dict]:
    """Uniform sub-networks along each dimension (the space's own choices: 1.0, 0.75, 0.5), and two combined."""
    skippable = sorted(d.layer for d in space.dims.values() if d.kind == "keep")
    eighth, quarter = len(skippable) // 2, len(skippable)

    def with_(mlp: int = 0, heads: int = 0, drop: int = 0) -> dict:
        """Choice index ``mlp`` / ``heads`` (0 = full) in every block, the last ``drop`` skippable blocks off."""
        cfg = space.maximal()
        for name, d in space.dims.items():
            if d.kind == "mlp":
                cfg[name] = d.choices[mlp]
            elif d.kind == "heads":
                cfg[name] = d.choices[heads]
        for i in skippable[quarter - drop:]:
            cfg[f"keep.{i}"] = False
        return space.validate(cfg)

    return {
        "full": with_(),
        "mlp_0.75": with_(mlp=1), "mlp_0.5": with_(mlp=2),
        "heads_0.75": with_(heads=1), "heads_0.5": with_(heads=2),
        "depth_-1/8": with_(drop=eighth), "depth_-1/4": with_(drop=quarter),
        "mlp_0.75+heads_0.75+depth_-1/8": with_(mlp=1, heads=1, drop=eighth),
        "mlp_0.5+heads_0.5+depth_-1/4": with_(mlp=2, heads=2, drop=quarter),
    }


def space_spec(shape: dict) -> SpaceSpec:
    layers = shape["num_hidden_layers"]
    quarter = layers // 4
    return SpaceSpec.from_dict({
        "lora": {"r_max": 8, "alpha": 16, "rank_choices": [8]},
        "mlp": {"choices": list(MLP), "align": 64 if shape["intermediate_size"] >= 1024 else 8},
        "heads": {"choices": list(HEADS)},
        "depth": {"skippable": list(range(layers - 1 - quarter, layers - 1))},
    })


def copy_bandwidth(device: torch.device, gib: float, repeats: int) -> dict:
    """Device memory bandwidth from large copies: each copy reads and writes ``gib`` GiB."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    times = []
    for r in range(repeats + 3):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if r >= 3:
            times.append(time.perf_counter() - t0)
    del src, dst
    gbs = [2 * n * 2 / t / 1e9 for t in times]
    return {"copy_gib": gib, "repeats": repeats, "gb_per_s_median": statistics.median(gbs),
            "gb_per_s_max": max(gbs), "gb_per_s_p10": percentile(gbs, 0.1)}


def decode_bytes(model, batch: int, context: int) -> int:
    """Bytes one decode step must read: every weight but the gathered input embedding, plus the KV cache."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    tied = emb is model.get_output_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not tied:
        weights -= emb.numel() * emb.element_size()
    heads = getattr(cfg, "layer_num_heads", None) or [cfg.num_attention_heads] * cfg.num_hidden_layers
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    kv = sum(2 * (h // group) * cfg.head_dim for h in heads) * context * batch * emb.element_size()
    return weights + kv


def bench_shape(name: str, shape: dict, args, device: torch.device, bandwidth: float) -> list[dict]:
    config = LlamaConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(config).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    supernet = SuperNetwork(base, space_spec(shape))
    rows = []
    for label, cfg in subnets(supernet.space).items():
        t0 = time.perf_counter()
        model = extract(supernet, cfg)
        sync(device)
        extract_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        for batch in args.batches:
            stats = measure(model, args.runtime, batch_size=batch, prompt_len=args.prompt_len,
                            new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats)
            read = decode_bytes(model, batch, args.prompt_len + args.new_tokens)
            rows.append({
                "shape": name, "subnet": label, "batch": batch, "params": params,
                "layers": model.config.num_hidden_layers, "extract_s": round(extract_s, 2),
                "decode_read_bytes": read, "floor_decode_ms": read / (bandwidth * 1e9) * 1e3,
                **{k: getattr(stats, k) for k in ("runtime", "prefill_ms", "prefill_p90_ms", "decode_ms",
                                                  "decode_p90_ms", "latency_ms", "latency_p90_ms", "repeats")},
            })
            print(json.dumps(rows[-1]), flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del supernet, base
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Speed-ups against the full model of the same shape and batch, next to the ideal ones."""
    full = {(r["shape"], r["batch"]): r for r in rows if r["subnet"] == "full"}
    for r in rows:
        f = full[(r["shape"], r["batch"])]
        r["params_ratio"] = f["params"] / r["params"]
        r["read_ratio"] = f["decode_read_bytes"] / r["decode_read_bytes"]
        r["decode_speedup"] = f["decode_ms"] / r["decode_ms"]
        r["prefill_speedup"] = f["prefill_ms"] / r["prefill_ms"]
        r["decode_speedup_vs_params_ratio"] = r["decode_speedup"] / r["params_ratio"]
        r["decode_vs_floor"] = r["decode_ms"] / r["floor_decode_ms"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="llama7b,llama13b")
    p.add_argument("--batches", default="1,16", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--runtime", default=None, help="default: cuda_graph on GPU, static on CPU")
    p.add_argument("--copy-gib", type=float, default=4.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    args.runtime = args.runtime or ("cuda_graph" if device.type == "cuda" else "static")
    out = {
        "what": "extracted sub-networks of Llama-shaped models with random weights (bf16 on GPU): serving latency",
        "weights": "random (latency does not depend on weight values)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.date.today().isoformat(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "bandwidth": copy_bandwidth(device, args.copy_gib if device.type == "cuda" else 0.25, 20),
        "rows": [],
    }
    bandwidth = out["bandwidth"]["gb_per_s_median"]
    for name in args.shapes.split(","):
        out["rows"] += bench_shape(name, SHAPES[name], args, device, bandwidth)
        add_ratios(out["rows"])
        Path(args.out).write_text(json.dumps(out, indent=1))  # after every shape: a later failure keeps these
    return 0


if __name__ == "__main__":
    sys.exit(main())
