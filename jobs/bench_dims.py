"""Which elastic dimension buys the most measured latency per point of quality lost? One super-adapter, three ladders.

    python jobs/bench_dims.py --tasks arithmetic_3_digit_addition --steps 100 --out jobs/results/bench_dims_cpu.json
    python jobs/bench_dims.py --device cuda --out jobs/results/bench_dims_gpu_h200.json
    python jobs/bench_dims.py --quick --out /tmp/d.json                  # tiny model, seconds

One super-adapter over a space where depth, MLP width and attention heads are all
elastic (``--space-config``, default ``jobs/configs/quality_dims.yaml``) is trained
with lonas-ray's own step (``jobs/bench_quality.py``'s data, splits, schedule and
scorer; the dense plain-LoRA model teaches, as ``train.distill.teacher: baseline``
does). Then, per dimension, a ladder of sub-networks that cut only that dimension,
every other dimension at its maximal (``dimension_ladders``):

* ``depth``: the k skippable blocks of least block influence skipped, k over
  ``--depth-levels`` (influence measured on the super-network's maximal, as
  ``depth.auto`` ranks blocks);
* ``mlp``: every elastic MLP at its i-th smaller width;
* ``heads``: every elastic layer's attention at its i-th smaller head count.

Each rung is scored as sliced and after a short recovery fine-tune
(``--recover-steps``, the teacher distilling, as the export does), and its merged
model timed with the rows' request. Per rung: the share of the maximal's latency
it saves, the quality points it loses against the maximal (as sliced and as
recovered) and ``points_per_10pct``: points lost per 10 % of latency saved (lower
is better: the cheaper dimension to cut).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from bench_quality import (  # noqa: E402
    add_arguments,
    build_for_task,
    load_task,
    run_saving,
    start,
    step_batch,
    train_peft_lora,
    train_supernet,
)

from lonas_ray.elastic.block_influence import block_influence, influence_order  # noqa: E402
from lonas_ray.merge.extract import extract  # noqa: E402
from lonas_ray.space import SearchSpace, SubnetConfig  # noqa: E402
from lonas_ray.train.recover import recover  # noqa: E402
from lonas_ray.train.teacher import TeacherLogits  # noqa: E402

DIMENSIONS = ("depth", "mlp", "heads")


def dimension_ladders(space: SearchSpace, block_order: list[int],
                      depth_levels: list[int]) -> dict[str, list[tuple[str, SubnetConfig]]]:
    """Per dimension, (rung label, sub-network) pairs that cut only that dimension, mildest first.

    ``block_order``: every decoder block, least influential first; the skippable ones are skipped in that order.
    """
    maximal = space.maximal()
    ladders: dict[str, list[tuple[str, SubnetConfig]]] = {d: [] for d in DIMENSIONS}
    skippable = [i for i in block_order if f"keep.{i}" in space.dims]
    for k in depth_levels:
        if 0 < k <= len(skippable):
            ladders["depth"].append((f"skip {k}", {**maximal, **{f"keep.{i}": False for i in skippable[:k]}}))
    for kind in ("mlp", "heads"):
        dims = [d for d in space.dims.values() if d.kind == kind]
        for level in range(1, max((len(d.choices) for d in dims), default=1)):
            cut = {d.name: d.choices[min(level, len(d.choices) - 1)] for d in dims}
            kept = sum(cut[d.name] for d in dims) / sum(d.choices[0] for d in dims)
            ladders[kind].append((f"{kept:.2f}x", {**maximal, **cut}))
    return ladders


def trade_off(rung: dict, maximal: dict, key: str) -> dict:
    """Latency saved and quality points lost by ``rung`` against ``maximal`` (rows of the scorer)."""
    saved = 1.0 - rung["latency_ms"] / maximal["latency_ms"]
    lost = 100.0 * (maximal["quality"] - rung[key])
    return {"latency_saved": saved, "points_lost": lost,
            "points_per_10pct": lost / (10 * saved) if saved > 0 else None}


def bench_task(name: str, args, source, space_spec: dict, device: torch.device, save) -> dict:
    task = load_task(name, args, source, device)
    result, scorer = task.result, task.scorer
    rows = result["rows"]
    t0 = time.perf_counter()
    tuned = train_peft_lora(task.model.to(device, task.dtype), task.dataset, task.pad_id, args.steps, args, device)
    rows.append(scorer.row("peft_lora", tuned, time.perf_counter() - t0, steps=args.steps))
    save(result)
    teacher = TeacherLogits(tuned.eval().requires_grad_(False)) if args.distill else None
    built = build_for_task(task, source, space_spec)  # importance on the task's training examples, as a run does
    result["calibration"] = built.calibration
    supernet = built.supernet.to(device, task.dtype)
    t0 = time.perf_counter()
    passes = train_supernet(supernet, task.dataset, task.pad_id, args, device, teacher)
    train_s = time.perf_counter() - t0
    space = supernet.space
    with supernet.activated(space.maximal()), torch.no_grad():
        batch = step_batch(task.dataset, 0, args, task.pad_id, device)
        order = influence_order(block_influence(supernet.model, batch))
    ladders = dimension_ladders(space, order, args.depth_levels)
    result["supernet"] = {"space_size": space.size(), "passes": passes, "train_s": round(train_s, 1),
                          "block_order": order, "ladders": {d: [label for label, _ in rungs]
                                                            for d, rungs in ladders.items()}}
    with torch.no_grad():
        maximal = scorer.row("maximal", extract(supernet, space.maximal()), train_s, subnet_id=space.subnet_id(
            space.maximal()))
    rows.append(maximal)
    save(result)
    trained = {k: v.detach().clone() for k, v in supernet.adapter_state_dict().items()}
    for dim, rungs in ladders.items():
        for label, config in rungs:
            with torch.no_grad():
                row = scorer.row(f"{dim}:{label}", extract(supernet, config), train_s, dimension=dim, rung=label,
                                 subnet_id=space.subnet_id(config))
            row["sliced"] = trade_off(row, maximal, "quality")
            if args.recover_steps:
                t0 = time.perf_counter()
                recover(supernet, config, task.dataset, task.pad_id, steps=args.recover_steps, batch_size=args.batch,
                        lr=args.lr, seed=args.seed, first_step=args.steps, teacher=teacher,
                        distill_weight=args.distill, temperature=args.distill_temperature)
                recover_s = time.perf_counter() - t0
                with torch.no_grad():
                    recovered = scorer.row(f"{dim}:{label} recovered", extract(supernet, config), recover_s,
                                           latency=False)
                supernet.load_adapter_state_dict(trained)
                supernet.eval()
                for key in ("quality", "ci95", "hits", "task_loss"):
                    if key in recovered:
                        row[f"recovered_{key}"] = recovered[key]
                row["recover_s"] = round(recover_s, 3)  # the row's train_s rounds a tiny model's to 0.0
                row["recovered"] = trade_off(row, maximal, "recovered_quality")
            rows.append(row)
            save(result)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    p.add_argument("--depth-levels", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 6],
                   help="blocks skipped on the depth ladder's rungs")
    p.add_argument("--recover-steps", type=int, default=50, help="recovery fine-tune steps per rung (0: sliced only)")
    p.add_argument("--out", required=True)
    p.set_defaults(space_config="jobs/configs/quality_dims.yaml", tasks="arithmetic_3_digit_addition")
    args = p.parse_args()
    source, space_spec, device, out = start(
        args, "per task: one super-adapter over depth, MLP and heads; per dimension, sub-networks cutting only it, "
              "scored sliced and recovered, timed; points of quality lost per 10 % of latency saved")
    for name in args.tasks.split(","):
        run_saving(args.out, out, lambda save: bench_task(name, args, source, space_spec, device, save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
