"""Serving benchmark: exported sub-networks in vLLM and in transformers, and each one's speed-up over the maximal.

    bash jobs/make_vllm_env.sh /tmp/vllm-env
    python jobs/bench_serving.py --vllm-python /tmp/vllm-env/bin/python \
        --models out/quickstart/models/baseline,out/quickstart/models/<id>,... --out jobs/results/bench_serving_cpu.json

``--models``: export directories, the first being the maximal (the quick start's ``models/baseline`` is the
maximal's shape). ``--run DIR --subnets ID,...``: a finished pipeline run's maximal and searched sub-networks
(rows of its ``results.parquet``), sliced from its trained super-adapter and merged as its export merges them
(no recovery: latency is the shape's), into ``--export-dir``:

    python jobs/bench_serving.py --vllm-python /tmp/vllm-env/bin/python --run out/quickstart_widths \
        --subnets d62ec31d70e0,a5922b4f185d,8db4857b7546 --out jobs/results/bench_serving_cpu_searched.json

With neither given, the maximal and two sub-networks of SmolLM2-135M in the quick start's
space plus per-layer MLP cuts are exported first (``--export-dir``). Per model and engine, ``--repeats`` timed
requests after ``--warmup``, each ``--batch`` prompts of ``--prompt-len`` random tokens decoding exactly
``--new-tokens`` greedy tokens: transformers with a static KV cache (lonas-ray's ``static`` latency runtime) in
this process, vLLM's offline engine (``lonas_ray.serving.vllm_latency``) in vLLM's own environment. Medians,
p90 and decode tokens/s; the speed-up of each model over the first in the same engine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.search.latency import measure  # noqa: E402


def export_defaults(out: Path) -> list[Path]:
    """The maximal and two sub-networks of SmolLM2-135M: 6 blocks skipped (uniform, a stock Llama) and 6 blocks
    skipped with every other layer's MLP at 75 % (per-layer, ``LonasLlamaForCausalLM``)."""
    from lonas_ray.build import SupernetSpec, build_supernet
    from lonas_ray.config_io import from_dict
    from lonas_ray.merge.save import save_subnetwork

    spec = from_dict(SupernetSpec, {"model": {"kind": "smollm2"}, "space": {
        "lora": {"target_modules": ["q_proj", "v_proj"], "r_max": 8, "rank_choices": [8]},
        "mlp": {"choices": [1.0, 0.75], "align": 64}, "depth": {"auto": 6}},
        "importance": {"method": "activation"}}, where="supernet")
    built = build_supernet(spec)
    space = built.supernet.space
    skip = {k: False for k in space.dims if k.startswith("keep.")}
    depth = {**space.maximal(), **skip}
    mixed = {**depth, **{f"mlp.{i}": space.dims[f"mlp.{i}"].choices[1] for i in range(0, space.shape.num_layers, 2)}}
    dirs = []
    for name, cfg in (("maximal", space.maximal()), ("skip6", depth), ("skip6_mlp75_half", mixed)):
        save_subnetwork(built.supernet, cfg, out / name, tokenizer=built.tokenizer)
        dirs.append(out / name)
    return dirs


def export_searched(run: Path, ids: list[str], out: Path) -> list[Path]:
    """The run's maximal, then its searched sub-networks ``ids``, exported from its trained ``supernet/``."""
    from lonas_ray.merge.save import save_subnetwork
    from lonas_ray.search.evaluator import load_supernet

    supernet, tokenizer = load_supernet(run / "supernet")
    searched = searched_configs(run)
    dirs = []
    for name, cfg in [("maximal", supernet.space.maximal()), *((i, searched[i]) for i in ids)]:
        save_subnetwork(supernet, cfg, out / name, tokenizer=tokenizer)
        dirs.append(out / name)
    return dirs


def searched_configs(run: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    from lonas_ray.pipeline.figures import row_config

    rows = pq.read_table(run / "results.parquet", columns=["subnet_id", "config"]).to_pylist()
    return {r["subnet_id"]: row_config(r) for r in rows}


def check_run(p: argparse.ArgumentParser, run: Path, ids: list[str]) -> None:
    """A finished run's directory and ids it searched, before anything is built."""
    missing = [f for f in ("supernet", "results.parquet") if not (run / f).exists()]
    if missing:
        p.error(f"--run {run} has no {' or '.join(missing)}: give the output directory of a run whose search "
                "finished (`lonas-ray run --stop-after search` at least)")
    searched = searched_configs(run)
    unknown = sorted(set(ids) - set(searched))
    if not ids or unknown:
        p.error(f"--subnets: {', '.join(unknown) or '(none given)'} not among the sub-networks {run} searched; "
                f"pick from {', '.join(sorted(searched))}")


def transformers_row(model_dir: Path, args) -> dict:
    from transformers import AutoModelForCausalLM

    import lonas_ray  # noqa: F401  (per-layer exports)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stats = measure(model, "static", batch_size=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                    warmup=args.warmup, repeats=args.repeats)
    return {"latency_ms": stats.latency_ms, "latency_p90_ms": stats.latency_p90_ms,
            "decode_tokens_per_s": args.batch * args.new_tokens / (stats.latency_ms / 1e3),
            "params": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vllm-python", required=True, help="python of an environment made by jobs/make_vllm_env.sh")
    p.add_argument("--models", help="comma list of export directories, the maximal first")
    p.add_argument("--run", help="a finished pipeline run's output directory, to export --subnets from")
    p.add_argument("--subnets", default="", help="with --run: comma list of searched sub-network ids")
    p.add_argument("--export-dir", help="where exports are written (default: a temporary directory)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not Path(args.vllm_python).is_file():
        p.error(f"--vllm-python {args.vllm_python} does not exist: build vLLM's environment with "
                "`bash jobs/make_vllm_env.sh DIR` and pass DIR/bin/python")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        if args.run and args.models:
            p.error("--run and --models exclude each other: time a run's searched sub-networks or given exports")
        if args.run:
            ids = [i for i in args.subnets.split(",") if i]
            check_run(p, Path(args.run), ids)
            dirs = export_searched(Path(args.run), ids, Path(args.export_dir or tmp))
        elif args.models:
            dirs = [Path(d) for d in args.models.split(",")]
            missing = [str(d) for d in dirs if not (d / "config.json").is_file()]
            if missing:
                p.error(f"--models: {', '.join(missing)} hold no exported model (config.json)")
        else:
            dirs = export_defaults(Path(args.export_dir or tmp))
        request = {"models": [str(d) for d in dirs], "batch_size": args.batch, "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens, "warmup": args.warmup, "repeats": args.repeats,
                   "dtype": "float32"}
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        cmd = [args.vllm_python, "-m", "lonas_ray.serving.vllm_latency", str(Path(tmp) / "request.json"),
               str(Path(tmp) / "vllm.json")]
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              timeout=3000)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            return 1
        served = json.loads((Path(tmp) / "vllm.json").read_text())
        rows = []
        for d, v in zip(dirs, served):
            rows.append({"model": d.name, "path": str(d), "transformers_static": transformers_row(d, args),
                         "vllm": {k: v[k] for k in ("latency_ms", "latency_p90_ms", "decode_tokens_per_s",
                                                    "repeats_ms", "load_s")}})
    for engine in ("transformers_static", "vllm"):
        for r in rows:
            r[engine]["speedup_vs_first"] = rows[0][engine]["latency_ms"] / r[engine]["latency_ms"]
    out = {"what": "request latency of exported sub-networks in transformers (static cache) and vLLM (offline "
                   "engine), speed-up over the first model in each engine",
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
           "date": datetime.date.today().isoformat(), "settings": vars(args), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    for r in rows:
        print(f"{r['model']:<24} transformers {r['transformers_static']['latency_ms']:8.1f} ms "
              f"({r['transformers_static']['speedup_vs_first']:.2f}x)   vLLM {r['vllm']['latency_ms']:8.1f} ms "
              f"({r['vllm']['speedup_vs_first']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
