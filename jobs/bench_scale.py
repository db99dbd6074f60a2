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

``--formats`` times the compressed bases too (the issue's "same latency table for the
INT4 export"): ``int4_hf`` is the compressed-tensors INT4 export as transformers loads
and serves it (unpacked to bf16 on the first forward), ``int4_tinygemm`` the same
integers and scales on PyTorch's INT4 kernel, ``sparse24`` a 2:4-pruned base on
PyTorch's semi-structured sparse kernel (``jobs/format_kernels.py``). Their rows are
compared with the bf16 full model of the same shape and batch.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from format_kernels import to_int4_tinygemm, to_semi_structured  # noqa: E402

from lonas_ray.compress.apply import compress  # noqa: E402
from lonas_ray.compress.spec import QuantizationSpec, SparsitySpec  # noqa: E402
from lonas_ray.elastic.supernet import SuperNetwork  # noqa: E402
from lonas_ray.merge.compressed import save_int4  # noqa: E402
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
FORMATS = ("bf16", "int4_hf", "int4_tinygemm", "sparse24")


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


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies on the device; a semi-structured sparse weight is its kept values plus metadata."""
    parts = [getattr(t, a, None) for a in ("packed", "meta")]
    if any(p is not None for p in parts):
        return sum(p.numel() * p.element_size() for p in parts if p is not None)
    return t.numel() * t.element_size()


def decode_bytes(model, batch: int, context: int) -> int:
    """Bytes one decode step must read: every weight but the gathered input embedding, plus the KV cache."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    tied = emb is model.get_output_embeddings().weight
    weights = sum(stored_bytes(t) for t in [*model.parameters(), *model.buffers()] if t.dim() > 1)
    if not tied:
        weights -= emb.numel() * emb.element_size()
    heads = getattr(cfg, "layer_num_heads", None) or [cfg.num_attention_heads] * cfg.num_hidden_layers
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    kv = sum(2 * (h // group) * cfg.head_dim for h in heads) * context * batch * emb.element_size()
    return weights + kv


def compressed_base(supernet: SuperNetwork, fmt: str, group_size: int) -> None:
    """The base a format needs, compressed in place: INT4 RTN or magnitude 2:4 (random weights: no calibration)."""
    if fmt.startswith("int4"):
        compress(supernet, SparsitySpec(), QuantizationSpec(enabled=True, group_size=group_size, qa=True), None)
    elif fmt == "sparse24":
        compress(supernet, SparsitySpec(method="magnitude", pattern="2:4"), QuantizationSpec(), None)


def served(model, fmt: str, device: torch.device, workdir: Path):
    """The extracted ``model`` as ``fmt`` serves it; returns (model, facts about the conversion)."""
    if fmt == "bf16":
        return model, {}
    if fmt == "int4_tinygemm":
        return model, to_int4_tinygemm(model)
    if fmt == "sparse24":
        return model, to_semi_structured(model)
    # int4_hf: the export on disk, loaded the way a user loads it, and unpacked by its first forward
    out = workdir / "int4"
    t0 = time.perf_counter()
    facts = save_int4(model, out)
    saved_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    t0 = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                                  device_map=str(device)).eval()
    with torch.no_grad():
        loaded(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    sync(device)
    return loaded, {"save_s": round(saved_s, 1), "load_s": round(time.perf_counter() - t0, 1),
                    "safetensors_bytes": disk, "format": facts["format"], "group_size": facts["group_size"],
                    "runs_as": str(next(loaded.model.layers[0].mlp.down_proj.parameters()).dtype)}


def timed(model, batch: int, args):
    """Latency under ``args.runtime``; a kernel that a CUDA graph cannot capture is timed with ``static`` instead."""
    kw = dict(batch_size=batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens, warmup=args.warmup,
              repeats=args.repeats)
    try:
        return measure(model, args.runtime, **kw), None
    except Exception as e:
        if args.runtime != "cuda_graph":
            raise
        return measure(model, "static", **kw), f"cuda_graph failed ({type(e).__name__}: {str(e)[:200]}); static"


def bench_shape(name: str, shape: dict, fmt: str, args, device: torch.device, bandwidth: float) -> list[dict]:
    config = LlamaConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(config).to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    supernet = SuperNetwork(base, space_spec(shape))
    compressed_base(supernet, fmt, args.group_size)
    rows = []
    chosen = subnets(supernet.space)
    for label in args.subnets or list(chosen):
        cfg = chosen[label]
        t0 = time.perf_counter()
        model = extract(supernet, cfg)
        sync(device)
        extract_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        row = {"shape": name, "subnet": label, "format": fmt, "params": params, "extract_s": round(extract_s, 2)}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                model, facts = served(model, fmt, device, Path(tmp))
                row["conversion"] = facts
                for batch in args.batches:
                    stats, fallback = timed(model, batch, args)
                    if fallback:
                        row["runtime_fallback"] = fallback
                    read = decode_bytes(model, batch, args.prompt_len + args.new_tokens)
                    rows.append({
                        **row, "batch": batch, "layers": model.config.num_hidden_layers,
                        "decode_read_bytes": read, "floor_decode_ms": read / (bandwidth * 1e9) * 1e3,
                        **{k: getattr(stats, k) for k in ("runtime", "prefill_ms", "prefill_p90_ms", "decode_ms",
                                                          "decode_p90_ms", "latency_ms", "latency_p90_ms", "repeats")},
                    })
                    print(json.dumps(rows[-1]), flush=True)
        except Exception as e:  # a format a kernel refuses on this GPU: recorded, the other rows still run
            rows.append({**row, "error": f"{type(e).__name__}: {e}"[:500]})
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
    measured = [r for r in rows if "decode_ms" in r]  # error rows have no figures
    full = {(r["shape"], r["format"], r["batch"]): r for r in measured if r["subnet"] == "full"}
    for r in measured:
        dense = full.get((r["shape"], "bf16", r["batch"]))
        if dense is not None:  # what the format buys against the dense full model
            r["decode_speedup_vs_bf16_full"] = dense["decode_ms"] / r["decode_ms"]
            r["read_ratio_vs_bf16_full"] = dense["decode_read_bytes"] / r["decode_read_bytes"]
        f = full.get((r["shape"], r["format"], r["batch"]))
        if f is None:
            continue
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
    p.add_argument("--formats", default="bf16", type=lambda s: s.split(","),
                   help=f"comma-separated, of {', '.join(FORMATS)}")
    p.add_argument("--group-size", type=int, default=128, help="INT4 formats: inputs per scale")
    p.add_argument("--subnets", default=None, type=lambda s: s.split(","),
                   help="comma-separated sub-network labels (default: all); 'full' is needed for the ratios")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    for fmt in args.formats:
        if fmt not in FORMATS:
            p.error(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
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
        for fmt in args.formats:
            out["rows"] += bench_shape(name, SHAPES[name], fmt, args, device, bandwidth)
            add_ratios(out["rows"])
            Path(args.out).write_text(json.dumps(out, indent=1))  # after every format: a later failure keeps these
    return 0


if __name__ == "__main__":
    sys.exit(main())
