"""Quality benchmark: does fine-tuning matter on a task, and do compressed models keep it? Side by side, one run.

    python jobs/bench_quality.py --out jobs/results/bench_quality_cpu.json                  # every shipped task
    python jobs/bench_quality.py --tasks arithmetic_3_digit_addition --steps 200 --out ...
    python jobs/bench_quality.py --quick --out /tmp/q.json                                # tiny model, seconds

Rows per task, each scored by lonas-ray's own scorer (``lonas_ray.search.quality``)
on the task's recorded test split, with the 95 % Wilson interval and the number
of examples:

* ``zero_shot``: the base model as it is.
* ``peft_lora``: plain LoRA with the ``peft`` library itself (not lonas-ray's
  training loop): same data, template, steps, batch and learning rate as the
  rows that follow will get.

(The super-network's picks and prune-then-LoRA at the picks' shapes are the
next rows this job grows; see the README's benchmark section.) Training runs in
this process on this machine's CPU threads; ``wall_s`` says how long each row took.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.data import shipped  # noqa: E402
from lonas_ray.data.byte_tokenizer import byte_tokenizer  # noqa: E402
from lonas_ray.data.load import load_examples  # noqa: E402
from lonas_ray.data.spec import DataSpec  # noqa: E402
from lonas_ray.data.tokenize import build_train_dataset, collate  # noqa: E402
from lonas_ray.model_source import ModelSource, load_model  # noqa: E402
from lonas_ray.search.quality import Quality, build_eval_set, evaluate_quality  # noqa: E402
from lonas_ray.stats import wilson_interval  # noqa: E402

log = logging.getLogger("bench_quality")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def data_spec(task: str, cutoff_len: int) -> DataSpec:
    source = shipped.PREFIX + task
    return DataSpec(train=source, eval=source, format=shipped.FORMATS[task], cutoff_len=cutoff_len)


def row(name: str, q: Quality, wall_s: float, **extra) -> dict:
    out = {"model": name, **asdict(q), "wall_s": round(wall_s, 1), **extra}
    if q.hits is not None:
        out["ci95"] = list(wilson_interval(q.hits, q.examples))
    log.info("%-12s %s %.3f  %s  task loss %.3f  answer loss %.3f  (%d examples, %.0f s)", name, q.metric, q.quality,
             out.get("ci95"), q.task_loss, q.loss, q.examples, wall_s)
    return out


def train_peft_lora(model, dataset, pad_id: int, steps: int, batch: int, lr: float, rank: int, seed: int):
    """Plain LoRA on every linear with peft, AdamW, constant learning rate after a 10 % warm-up."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                                  lora_dropout=0.0))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    order = random.Random(seed)
    indices: list[int] = []
    peft_model.train()
    losses = []
    for step in range(steps):
        while len(indices) < batch:  # epochs of seeded shuffles
            epoch = list(range(len(dataset)))
            order.shuffle(epoch)
            indices += epoch
        take, indices = indices[:batch], indices[batch:]
        loss = peft_model(**collate(dataset.select(take), pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == steps - 1:
            log.info("peft lora step %d/%d loss %.3f", step + 1, steps, losses[-1])
    peft_model.eval()
    return peft_model, losses


def bench_task(task: str, args, source: ModelSource) -> dict:
    spec = data_spec(task, args.cutoff_len)
    model, tokenizer = load_model(source)
    tokenizer = tokenizer or byte_tokenizer()
    model.eval()
    examples = load_examples(spec, "eval")
    evalset = build_eval_set(examples, tokenizer, spec.cutoff_len)
    pad_id = evalset.pad_id
    rows = []
    t0 = time.perf_counter()
    rows.append(row("zero_shot", evaluate_quality(model, evalset, args.eval_batch, decode=tokenizer.decode),
                    time.perf_counter() - t0))
    if "peft_lora" in args.parts:
        dataset = build_train_dataset(spec, tokenizer)
        t0 = time.perf_counter()
        tuned, losses = train_peft_lora(model, dataset, pad_id, args.steps, args.batch, args.lr, args.rank, args.seed)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        q = evaluate_quality(tuned, evalset, args.eval_batch, decode=tokenizer.decode)
        rows.append(row("peft_lora", q, time.perf_counter() - t0, train_s=round(train_s, 1),
                        train_examples=len(dataset), epochs=round(args.steps * args.batch / len(dataset), 2),
                        final_train_loss=sum(losses[-10:]) / len(losses[-10:])))
    return {"task": task, "format": spec.format, "test_examples": len(evalset), "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(t for t in shipped.TASKS if t != "social_iqa"))
    p.add_argument("--parts", default="zero_shot,peft_lora")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--cutoff-len", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny random model, a few steps: checks the job runs")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        source = ModelSource(kind="tiny")
        args.steps, args.batch = min(args.steps, 3), min(args.batch, 4)
    else:
        source = ModelSource(kind="smollm2")
    out = {
        "what": "base zero-shot vs plain PEFT LoRA per task, lonas-ray's scorer, recorded test splits",
        "model": source.kind, "machine": {"platform": platform.platform(), "cpu": platform.processor(),
                                          "threads": torch.get_num_threads(), "torch": torch.__version__},
        "date": datetime.date.today().isoformat(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "tasks": [],
    }
    for task in args.tasks.split(","):
        t0 = time.perf_counter()
        result = bench_task(task, args, source)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        out["tasks"].append(result)
        Path(args.out).write_text(json.dumps(out, indent=1))  # after every task: a later failure keeps these
    return 0


if __name__ == "__main__":
    sys.exit(main())
