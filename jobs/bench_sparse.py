"""Sparse and INT4 bases benchmark (Shears, SQFT): what pruning and 4 bits cost in quality, at one budget.

    python jobs/bench_sparse.py --tasks arithmetic_3_digit_addition --steps 100 \
        --out jobs/results/bench_sparse_cpu_addition.json
    python jobs/bench_sparse.py --quick --variants wanda50,qa50 --out /tmp/s.json   # tiny model, seconds

Rows per task, each trained for the same ``--steps`` optimizer steps of ``--batch``
(``jobs/bench_quality.py``'s data, splits, schedule and scorer):

* ``peft_lora``: plain LoRA with ``peft`` on the dense base, the reference.
* ``<variant>:maximal`` and ``<variant>:pick_<t>``: lonas-ray's super-network over
  a base compressed as ``<variant>`` (``VARIANTS``: Wanda at 30 / 50 / 70 %
  unstructured, 2:4, and 50 % + INT4 with QA-SparsePEFT), trained with sandwich
  steps, then its maximal and the in-process search's pick at ``--targets``.

Every row: accuracy on the report part of the test split with its 95 % interval
and count, the held-out answer loss, the task loss, params and non-zero params
of the merged model, the bytes of its exported weight files (``save_subnetwork``:
safetensors with zeros stored, or one compressed-tensors INT4 file) and its CPU
latency as transformers serves it (dense kernels: sparse and INT4 weights run
as dense). INT4 rows add ``int4_rel_err``: the reloaded INT4 export's logits
against the training-time (fake-quantized) super-network's, max |diff| / max |ref|.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from bench_quality import (  # noqa: E402
    add_arguments,
    build_for_task,
    compare_to_peft_lora,
    load_task,
    run_saving,
    search_picks,
    start,
    train_peft_lora,
    train_supernet,
)

from lonas_ray.counting import count_model  # noqa: E402
from lonas_ray.merge.extract import extract  # noqa: E402
from lonas_ray.merge.save import save_subnetwork  # noqa: E402

INT4 = {"enabled": True, "bits": 4, "group_size": 32, "method": "rtn", "qa": True}
VARIANTS = {
    "dense": {},
    "wanda30": {"sparsity": {"method": "wanda", "level": 0.3}},
    "wanda50": {"sparsity": {"method": "wanda", "level": 0.5}},
    "wanda70": {"sparsity": {"method": "wanda", "level": 0.7}},
    "wanda2:4": {"sparsity": {"method": "wanda", "pattern": "2:4"}},
    "magnitude50": {"sparsity": {"method": "magnitude", "level": 0.5}},
    "qa0": {"quantization": INT4},
    "qa30": {"sparsity": {"method": "wanda", "level": 0.3}, "quantization": INT4},
    "qa50": {"sparsity": {"method": "wanda", "level": 0.5}, "quantization": INT4},
    "naive50": {"sparsity": {"method": "wanda", "level": 0.5}, "quantization": {**INT4, "qa": False}},
}


def int4_rel_err(supernet, config: dict, model_dir: Path, probe: torch.Tensor) -> float:
    """The reloaded INT4 export against the training-time super-network on ``probe``: max |diff| / max |ref|."""
    from transformers import AutoModelForCausalLM

    device = next(supernet.parameters()).device
    with torch.no_grad(), supernet.activated(config):
        ref = supernet(input_ids=probe.to(device)).logits.float().cpu()
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=next(supernet.parameters()).dtype).to(device)
    with torch.no_grad():
        got = reloaded(input_ids=probe.to(device)).logits.float().cpu()
    return float((got - ref).abs().max() / ref.abs().max())


def bench_variant(name: str, task, args, source, space_spec: dict, device: torch.device) -> list[dict]:
    """Build the super-network over the ``name`` base, train it, and score its maximal and its picks."""
    # importance and Wanda's input norms on the task's training examples, as a run calibrates them
    built = build_for_task(task, source, {**space_spec, **VARIANTS[name]}, where=f"variant {name}")
    supernet = built.supernet.to(device, task.dtype)
    t0 = time.perf_counter()
    passes = train_supernet(supernet, task.dataset, task.pad_id, args, device)
    train_s = time.perf_counter() - t0
    picks, _ = search_picks(supernet, task.select, task.tokenizer, args)
    ids = [task.dataset[i]["input_ids"] for i in range(2)]
    probe = torch.tensor([row[: min(32, *map(len, ids))] for row in ids])
    rows = []
    for pick, entry in picks.items():
        if pick == "heuristic":
            continue
        with tempfile.TemporaryDirectory(prefix="bench-sparse-") as d:
            manifest = save_subnetwork(supernet, entry["config"], Path(d) / "m")
            extra = {"weight_bytes_on_disk": manifest["weight_bytes"], "compression": manifest.get("compression")}
            if "quantization" in VARIANTS[name]:
                extra["int4_rel_err"] = int4_rel_err(supernet, entry["config"], Path(d) / "m", probe)
        with torch.no_grad():
            merged = extract(supernet, entry["config"])
        extra["nonzero_params"] = count_model(merged).nonzero_params
        rows.append(task.scorer.row(f"{name}:{pick}", merged, train_s, subnet_id=entry["subnet_id"],
                                    params_ratio=entry["params_ratio"], passes=passes, **extra))
        del merged
    return rows


def bench_task(name: str, variants: list[str], args, source, space_spec: dict, device, save) -> dict:
    task = load_task(name, args, source, device)
    rows = task.result["rows"]
    t1 = time.perf_counter()
    tuned = train_peft_lora(task.model.to(device, task.dtype), task.dataset, task.pad_id, args.steps, args, device)
    rows.append(task.scorer.row("peft_lora", tuned, time.perf_counter() - t1, steps=args.steps,
                                nonzero_params=count_model(tuned).nonzero_params))
    save(task.result)
    del tuned
    for variant in variants:
        rows.extend(bench_variant(variant, task, args, source, space_spec, device))
        compare_to_peft_lora(rows)
        save(task.result)
    return task.result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    p.add_argument("--variants", default="wanda30,wanda50,wanda70,wanda2:4,qa50",
                   help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--out", required=True)
    p.set_defaults(space_config="jobs/configs/quality_mlp_narrow.yaml", targets=[0.95])
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; use {', '.join(VARIANTS)}")
    source, space_spec, device, out = start(
        args, "per task: dense plain PEFT LoRA, and lonas-ray's super-network over sparse / INT4 bases (maximal and "
              "a searched pick), all at one training budget; lonas-ray's scorer on the report part of the test split")
    out["variants"] = {v: VARIANTS[v] for v in variants}
    for name in args.tasks.split(","):
        run_saving(args.out, out, lambda save: bench_task(name, variants, args, source, space_spec, device, save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
