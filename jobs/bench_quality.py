"""Quality benchmark: does fine-tuning matter on a task, and do compressed models keep it? Side by side, one run.

    python jobs/bench_quality.py --out jobs/results/bench_quality_cpu.json                  # every shipped task
    python jobs/bench_quality.py --tasks arithmetic_3_digit_addition --steps 200 --out ...
    python jobs/bench_quality.py --device cuda --out jobs/results/bench_quality_gpu_h200.json
    python jobs/bench_quality.py --quick --out /tmp/q.json                                # tiny model, seconds

Rows per task, each scored by lonas-ray's own scorer (``lonas_ray.search.quality``)
with the 95 % Wilson interval and the number of examples:

* ``zero_shot``: the base model as it is.
* ``peft_lora``: plain LoRA with the ``peft`` library itself (not lonas-ray's
  training loop): same data, template, steps, batch and learning rate as the
  super-adapter.
* ``supernet:<name>`` (part ``supernet``): the super-network of
  ``--space-config``'s ``supernet`` section (importance reordering, the space it
  generates; importance and ``depth.auto``'s block influence measured on the task's
  own training examples, as ``lonas-ray run`` measures them: ``build_for_task``)
  trained with lonas-ray's own step (``lonas_ray.train.step``: sandwich, optional
  in-place distillation), then the maximal, the heuristic and searched
  picks at ``--targets`` fractions of the maximal's params or, with ``--target-by
  latency``, of its measured latency (each candidate's merged model timed with the
  rows' request), extracted and merged. The search here is in-process:
  ``--candidates`` seeded random sub-networks, and per target the best task loss on
  the *selection* examples among those within budget; its cost (seconds,
  candidates scored and timed) is recorded beside the training's.
* ``recover:<name>`` (part ``recover``): each smaller pick's recovery fine-tune
  (LoNAS: extracted sub-networks can be tuned further): the super-adapter's
  weights, that one sub-network active, ``--recover-steps`` more steps of plain
  cross-entropy, then extracted and merged; the super-adapter is put back after
  each, so every pick starts from the same weights.
* ``prune_lora:<name>`` (part ``prune_lora``): each pick's exact shape cut from
  the base model by the same importance order, then plain peft LoRA on it alone
  for ``--budget-share`` x lonas-ray's whole cost in sub-network passes (the
  super-adapter's training plus every recovery; equal training compute per pass).
  Several shares (``--budget-share 0.3333,1``: a third each for three targets, and
  lonas-ray's whole cost) give rows named ``prune_lora@<share>:<pick>``.
* ``minitron:<name>`` (part ``minitron``, with ``--teacher peft_lora``): the same
  pruned shape and budget, its LoRA distilled from the dense plain-LoRA teacher
  (Minitron: prune by importance, then distil from the task-tuned dense model).

Evaluation: the task's recorded test split, seeded into a *selection* part
(``--select-share``, used only to choose the picks) and a *report* part that every
row is scored on. Latency: one request (``--latency-*`` settings) on this
machine, ``static`` on CPU and ``cuda_graph`` on GPU, against ``peft_lora``'s
merged model. Training runs in this process; ``wall_s`` says how long each row took.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from lonas_ray.atomic import write_json  # noqa: E402
from lonas_ray.build import Built, SupernetSpec, build_supernet  # noqa: E402
from lonas_ray.config_io import from_dict, load_yaml  # noqa: E402
from lonas_ray.counting import count_model, count_subnet  # noqa: E402
from lonas_ray.data import shipped  # noqa: E402
from lonas_ray.data.byte_tokenizer import byte_tokenizer  # noqa: E402
from lonas_ray.data.load import load_examples  # noqa: E402
from lonas_ray.data.spec import DataSpec  # noqa: E402
from lonas_ray.data.tokenize import build_train_dataset, collate  # noqa: E402
from lonas_ray.merge.extract import extract  # noqa: E402
from lonas_ray.model_source import ModelSource, load_model  # noqa: E402
from lonas_ray.search.latency import measure  # noqa: E402
from lonas_ray.search.quality import (  # noqa: E402
    build_eval_set,
    evaluate_quality,
    score_examples,
    subset,
    subset_indices,
)
from lonas_ray.stats import wilson_interval  # noqa: E402
from lonas_ray.train.distill import answer_logits, distillation_loss, mixed_loss  # noqa: E402
from lonas_ray.train.recover import recover, warmup_then_constant  # noqa: E402  (one schedule for every row)
from lonas_ray.train.schedule import batch_indices, subnets_for_step  # noqa: E402
from lonas_ray.train.step import train_step  # noqa: E402
from lonas_ray.train.teacher import TeacherLogits  # noqa: E402

log = logging.getLogger("bench_quality")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PARTS = ("zero_shot", "peft_lora", "supernet", "recover", "prune_lora", "minitron")


def data_spec(task: str, cutoff_len: int) -> DataSpec:
    source = shipped.PREFIX + task
    return DataSpec(train=source, eval=source, format=shipped.FORMATS[task], cutoff_len=cutoff_len)


def request_latency(model, runtime: str, args, repeats: int):
    """One request of the benchmark's shape (batch 1, --latency-prompt + --latency-new tokens) on this device."""
    return measure(model, runtime, batch_size=1, prompt_len=args.latency_prompt, new_tokens=args.latency_new,
                   warmup=2, repeats=repeats)


class Scorer:
    """Quality on the report examples, latency on this device, each row's figures in one dict."""

    def __init__(self, report, tokenizer, args, device: torch.device):
        self.report, self.tokenizer, self.args, self.device = report, tokenizer, args, device
        self.runtime = "cuda_graph" if device.type == "cuda" else "static"
        self.reference_ms: float | None = None

    def row(self, name: str, model, wall_s: float, latency: bool = True, **extra) -> dict:
        t0 = time.perf_counter()
        model.eval()
        q, right = score_examples(model, self.report, self.args.eval_batch, decode=self.tokenizer.decode)
        out = {"model": name, **asdict(q), "params": count_model(model).params, "train_s": round(wall_s, 1),
               "eval_s": round(time.perf_counter() - t0, 1), **extra}
        if q.hits is not None:
            out["ci95"] = list(wilson_interval(q.hits, q.examples))
        if right is not None:  # per report example, in order: rows of one run pair up (jobs/bench_robust.py)
            out["outcomes"] = "".join("1" if r else "0" for r in right)
        if latency and self.args.latency_repeats and hasattr(model, "config"):
            stats = request_latency(model, self.runtime, self.args, self.args.latency_repeats)
            out.update(latency_ms=stats.latency_ms, latency_p90_ms=stats.latency_p90_ms, latency_runtime=self.runtime)
        log.info("%-26s %s %.3f %s  task loss %.3f  params %.1fM  latency %s ms", name, q.metric, q.quality,
                 out.get("ci95"), q.task_loss, out["params"] / 1e6, f"{out.get('latency_ms', float('nan')):.1f}")
        return out


def step_batch(dataset, step: int, args, pad_id: int, device: torch.device) -> dict:
    """The rows of optimizer step ``step``: the training loop's own seeded epochs, so every method sees the same."""
    take = batch_indices(len(dataset), step, args.batch, args.seed)
    return {k: v.to(device) for k, v in collate(dataset.select(take), pad_id).items()}


def train_peft_lora(model, dataset, pad_id: int, steps: int, args, device: torch.device, teacher=None):
    """Plain LoRA on every linear with peft, AdamW, the shared learning-rate schedule; with ``teacher`` (a
    ``TeacherLogits``) its soft targets join the labels at --distill, as in lonas-ray's own step."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    peft_model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS,
                                                  lora_dropout=0.0))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = warmup_then_constant(opt, steps)
    peft_model.train()
    for step in range(steps):
        batch = step_batch(dataset, step, args, pad_id, device)
        out = peft_model(**batch)
        loss = out.loss
        if teacher is not None:
            kd = distillation_loss(answer_logits(out.logits, batch["labels"]), teacher(batch), args.distill_temperature)
            loss = mixed_loss(loss, kd, args.distill)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log.info("peft lora step %d/%d loss %.3f", step + 1, steps, float(loss.detach()))
    peft_model.eval()
    return peft_model.merge_and_unload()


def train_supernet(supernet, dataset, pad_id: int, args, device: torch.device, teacher=None) -> int:
    """Sandwich steps with lonas-ray's own step function (distillation per --distill: in place, or from a frozen
    ``teacher``, a ``TeacherLogits``); returns the passes made."""
    params = supernet.adapter_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = warmup_then_constant(opt, args.steps)
    supernet.train()
    passes = 0
    accept = in_params_band(supernet, args.random_band) if args.random_band else None
    warm = round(args.warm_start_share * args.steps)
    for step in range(args.steps):
        subnets = subnets_for_step(supernet.space, "sandwich", args.seed, step, accept=accept, warm_start_steps=warm)
        batch = step_batch(dataset, step, args, pad_id, device)
        stats = train_step(subnets, [batch], activate=supernet.activate, forward=lambda b: supernet(**b),
                           backward=lambda loss: (loss / len(subnets)).backward(),
                           distill_weight=args.distill, temperature=args.distill_temperature, teacher=teacher,
                           distill_maximal=args.distill_maximal, maximal_weight=args.maximal_weight)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        passes += stats.passes
        if step % 50 == 0 or step == args.steps - 1:
            log.info("super-adapter step %d/%d loss %.3f", step + 1, args.steps, stats.ce_sum / stats.passes)
    supernet.eval()
    return passes


def in_params_band(supernet, band: list[float]):
    """--random-band: whether a sub-network's params lie in ``[lo, hi]`` x the maximal's (the random slot's filter)."""
    lo, hi = band
    full = count_subnet(supernet, supernet.space.maximal()).params
    return lambda config: lo <= count_subnet(supernet, config).params / full <= hi


def spread_sample(space, seed: int) -> dict:
    """A sub-network whose overall cut depth is itself random: a share ``p ~ U(0, 1)`` of the dimensions take a
    smaller choice. Uniform sampling lands near the middle of the space (every dimension independently), so far
    latency targets (0.7 of the maximal) would see no candidate; this spreads candidates from the maximal to the
    minimal."""
    import random

    rng = random.Random(seed)
    p = rng.random()
    return {n: (rng.choice(d.choices[1:]) if len(d.choices) > 1 and rng.random() < p else d.choices[0])
            for n, d in space.dims.items()}


def structure_key(config: dict) -> tuple:
    """What a merged sub-network's latency depends on: its widths and kept blocks (merged ranks cost nothing)."""
    return tuple(sorted((k, v) for k, v in config.items() if not k.startswith("rank.")))


class LatencyOf:
    """Measured latency of merged sub-networks (the scorer's request), memoised by shape."""

    def __init__(self, supernet, args, runtime: str):
        self.supernet, self.args, self.runtime = supernet, args, runtime
        self.cache: dict[tuple, float] = {}

    def __call__(self, config: dict) -> float:
        key = structure_key(config)
        if key not in self.cache:
            with torch.no_grad():
                model = extract(self.supernet, config)
            self.cache[key] = request_latency(model, self.runtime, self.args,
                                              max(3, self.args.latency_repeats)).latency_ms
            del model
        return self.cache[key]


def search_picks(supernet, select, tokenizer, args, runtime: str = "static") -> tuple[dict[str, dict], dict]:
    """maximal, heuristic (unless --no-heuristic) and, per target, the best task loss on the selection examples
    among candidates within budget: a share of the maximal's params (--target-by params) or of its measured
    latency (--target-by latency). Returns the picks and the search's cost."""
    t0 = time.perf_counter()
    space = supernet.space
    full = count_subnet(supernet, space.maximal()).params
    picks = {"maximal": {"config": space.maximal()}}
    if args.heuristic:
        picks["heuristic"] = {"config": space.heuristic()}
    latency = LatencyOf(supernet, args, runtime) if args.target_by == "latency" else None
    full_ms = latency(space.maximal()) if latency else None

    def ratio(cfg: dict) -> float:
        return latency(cfg) / full_ms if latency else count_subnet(supernet, cfg).params / full

    seen, pool = set(), []
    for seed in range(args.candidates * 4):
        cfg = spread_sample(space, seed) if latency else space.sample(seed)
        sid = space.subnet_id(cfg)
        if sid not in seen:
            seen.add(sid)
            pool.append((cfg, ratio(cfg)))
        if len(pool) >= args.candidates:
            break
    scored: dict[str, float] = {}
    for target in args.targets:
        band = sorted((c for c in pool if target - args.band <= c[1] <= target), key=lambda c: -c[1])[: args.per_target]
        best = None
        for cfg, r in band:
            sid = space.subnet_id(cfg)
            if sid not in scored:
                with torch.no_grad():
                    model = extract(supernet, cfg)
                scored[sid] = evaluate_quality(model, select, args.eval_batch, decode=tokenizer.decode).task_loss
                del model
            if best is None or scored[sid] < best[2]:
                best = (cfg, r, scored[sid])
        if best is None:
            log.warning("no candidate within %.2f of %s target %.2f: widen --band or raise --candidates",
                        args.band, args.target_by, target)
            continue
        picks[f"pick_{target:.2f}"] = {"config": best[0], "select_task_loss": best[2], "candidates": len(band),
                                       "target": target}
    for entry in picks.values():
        entry["params_ratio"] = count_subnet(supernet, entry["config"]).params / full
        entry["subnet_id"] = space.subnet_id(entry["config"])
        if latency:
            entry["latency_ratio"] = latency(entry["config"]) / full_ms
    cost = {"search_s": round(time.perf_counter() - t0, 1), "candidates": len(pool), "scored": len(scored),
            "selection_examples": len(select), "latency_measured": len(latency.cache) if latency else 0}
    return picks, cost


@dataclass
class Task:
    """One task's data as every row of a benchmark sees it: the training set, the selection and report parts of
    the recorded test split, a scorer on the report part, and the JSON entry its rows go into; ``data``: the task's
    DataSpec (its training examples calibrate the super-network, ``build_for_task``)."""

    data: DataSpec
    model: Any
    tokenizer: Any
    dataset: Any
    select: Any
    scorer: Scorer
    pad_id: int
    dtype: torch.dtype
    result: dict


def load_task(task: str, args, source: ModelSource, device: torch.device) -> Task:
    spec = data_spec(task, args.cutoff_len)
    model, tokenizer = load_model(source)
    tokenizer = tokenizer or byte_tokenizer()
    full_eval = build_eval_set(load_examples(spec, "eval"), tokenizer, spec.cutoff_len)
    chosen = set(subset_indices(len(full_eval), round(len(full_eval) * args.select_share), seed=args.seed))
    select = subset(full_eval, sorted(chosen))
    report = subset(full_eval, [i for i in range(len(full_eval)) if i not in chosen])
    dataset = build_train_dataset(spec, tokenizer)
    result = {"task": task, "format": spec.format, "test_examples": len(full_eval), "select_examples": len(select),
              "report_examples": len(report), "train_examples": len(dataset),
              "epochs": round(args.steps * args.batch / len(dataset), 2), "rows": []}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return Task(spec, model, tokenizer, dataset, select, Scorer(report, tokenizer, args, device), full_eval.pad_id,
                dtype, result)


def build_for_task(t: Task, source: ModelSource, spec: dict, where: str = "supernet") -> Built:
    """The super-network of ``spec`` (a config's ``supernet`` section, without its model) over ``source``, built as
    the pipeline builds it (``prepare_once(cfg.supernet, ..., cfg.data)``): importance, ``depth.auto``'s block
    influence and Wanda's input norms are measured on ``t``'s own training examples, and the log says so
    (``importance.data: shipped`` in ``spec`` keeps the shipped social_iqa text, as it does in a run)."""
    return build_supernet(from_dict(SupernetSpec, {**spec, "model": vars(source)}, where=where), t.data)


def compare_to_peft_lora(rows: list[dict]) -> None:
    """Speed-up and quality ratio of every row against the plain-LoRA row, when there is one."""
    reference = next((r for r in rows if r["model"] == "peft_lora"), None)
    for r in rows:
        if reference and r.get("latency_ms") and reference.get("latency_ms"):
            r["speedup_vs_peft_lora"] = reference["latency_ms"] / r["latency_ms"]
        if reference:
            r["quality_vs_peft_lora"] = r["quality"] / reference["quality"] if reference["quality"] else None


def lonas_rows(supernet, t: Task, args, teacher, add) -> dict:
    """lonas-ray's side: train the super-adapter, search the picks, score each sliced and (part recover) after its
    recovery fine-tune; returns the JSON entry of the super-network with lonas-ray's whole cost."""
    t0 = time.perf_counter()
    passes = train_supernet(supernet, t.dataset, t.pad_id, args, t.scorer.device, teacher)
    train_s = time.perf_counter() - t0
    picks, search_cost = search_picks(supernet, t.select, t.tokenizer, args, t.scorer.runtime)
    sn = {"space_size": supernet.space.size(), "passes": passes, "train_s": round(train_s, 1), "distill": args.distill,
          "teacher": args.teacher, "target_by": args.target_by, "search": search_cost, "picks": picks,
          "teacher_forwards": teacher.calls if teacher is not None else None}
    for name, entry in picks.items():
        with torch.no_grad():
            merged = extract(supernet, entry["config"])
        add(t.scorer.row(f"supernet:{name}", merged, train_s, subnet_id=entry["subnet_id"],
                         params_ratio=entry["params_ratio"]))
        del merged
    recover_s = 0.0
    if "recover" in args.parts:
        trained = {k: v.detach().clone() for k, v in supernet.adapter_state_dict().items()}
        for name, entry in picks.items():
            if name == "maximal":
                continue
            t0 = time.perf_counter()
            recover(supernet, entry["config"], t.dataset, t.pad_id, steps=args.recover_steps, batch_size=args.batch,
                    lr=args.lr, seed=args.seed, first_step=args.steps,  # lonas_ray.train.recover, as the export does
                    teacher=teacher, distill_weight=args.distill, temperature=args.distill_temperature)
            with torch.no_grad():
                merged = extract(supernet, entry["config"])
            recover_s += time.perf_counter() - t0
            add(t.scorer.row(f"recover:{name}", merged, train_s + time.perf_counter() - t0,  # both trainings
                             steps=args.recover_steps, subnet_id=entry["subnet_id"],
                             params_ratio=entry["params_ratio"]))
            del merged
            supernet.load_adapter_state_dict(trained)
        supernet.eval()
    # lonas-ray's whole cost in sub-network passes: the super-adapter's training and every recovery it made
    sn.update(total_passes=passes + (args.recover_steps * (len(picks) - 1) if "recover" in args.parts else 0),
              recover_s=round(recover_s, 1), total_s=round(train_s + search_cost["search_s"] + recover_s, 1))
    return sn


def earlier_supernet(path: str, task: str, space) -> dict:
    """--picks-from: the super-network entry (picks, lonas-ray's cost) of ``task`` in an earlier run's JSON, so
    baseline rows at another share need no second super-adapter. The picks must be sub-networks of this run's
    space (same space config and model), else the run stops here."""
    earlier = json.loads(Path(path).read_text())
    entry = next((r.get("supernet") for r in earlier["tasks"] if r["task"] == task), None)
    if not entry or "total_passes" not in entry:
        raise SystemExit(f"--picks-from {path}: no finished super-network of task {task} in it")
    for name, pick in entry["picks"].items():
        try:
            space.validate(pick["config"])
        except ValueError as e:
            raise SystemExit(f"--picks-from {path}: pick {name} is not in this run's space ({e}); use the same "
                             "--space-config as that run") from None
    return {**entry, "picks_from": str(path)}


def bench_task(task: str, args, source: ModelSource, space_spec: dict, device: torch.device,
               save=lambda result: None) -> dict:
    """Every row of one task; ``save(result)`` after each row, so a run cut short keeps what it measured."""
    t = load_task(task, args, source, device)
    model, dataset, scorer, pad_id, dtype = t.model, t.dataset, t.scorer, t.pad_id, t.dtype
    result = t.result
    rows = result["rows"]

    def add(row: dict) -> None:
        rows.append(row)
        compare_to_peft_lora(rows)
        save(result)

    def build():
        built = build_for_task(t, source, space_spec)
        result["calibration"] = built.calibration  # where importance (and depth.auto) came from: the task's examples
        return built.supernet.to(device, dtype)

    supernet = earlier = None
    if args.picks_from:  # the earlier picks must fit this space: checked before anything is trained or written
        supernet = build()
        earlier = earlier_supernet(args.picks_from, task, supernet.space)
    if "zero_shot" in args.parts:
        add(scorer.row("zero_shot", model.to(device, dtype), 0.0))
    teacher = None
    if "peft_lora" in args.parts:
        t0 = time.perf_counter()
        tuned = train_peft_lora(model.to(device, dtype), dataset, pad_id, args.steps, args, device)
        peft_s = time.perf_counter() - t0
        add(scorer.row("peft_lora", tuned, peft_s, steps=args.steps))
        if args.teacher == "peft_lora":  # the dense, task-tuned model teaches the super-adapter and the recoveries
            tuned.eval().requires_grad_(False)
            teacher = TeacherLogits(tuned)
            result["teacher"] = {"model": "peft_lora", "train_s": round(peft_s, 1)}
        del tuned
    if "supernet" not in args.parts and earlier is None:
        return result
    if earlier is not None:
        sn = result["supernet"] = earlier
    else:
        supernet = build()
        sn = result["supernet"] = lonas_rows(supernet, t, args, teacher, add)
        if teacher is not None:
            result["teacher"]["forwards_in_training"] = sn.pop("teacher_forwards")
    picks = sn["picks"]
    sn["budgets"] = [{"share": share, "steps": max(1, round(share * sn["total_passes"]))}
                     for share in args.budget_share]
    for part in ("prune_lora", "minitron"):
        if part not in args.parts:
            continue
        for budget in sn["budgets"]:
            label = part if len(sn["budgets"]) == 1 else f"{part}@{budget['share']:g}"
            for name, entry in picks.items():
                if name == "maximal":
                    continue  # the maximal's shape is the base model: peft_lora above is its prune-then-LoRA
                with torch.no_grad():
                    pruned = extract(supernet, entry["config"], merge=False)  # the base, cut in the same order
                t0 = time.perf_counter()
                tuned = train_peft_lora(pruned, dataset, pad_id, budget["steps"], args, device,
                                        teacher=teacher if part == "minitron" else None)
                add(scorer.row(f"{label}:{name}", tuned, time.perf_counter() - t0, steps=budget["steps"],
                               budget_share=budget["share"], subnet_id=entry["subnet_id"],
                               params_ratio=entry["params_ratio"]))
                del tuned, pruned
    return result


def run_saving(path: str, out: dict, run) -> dict:
    """One task of a benchmark: ``run(save)`` returns its result and calls ``save(result)`` as rows land. The JSON
    at ``path`` then always holds every finished task and this one's rows so far: a run cut short (a device's time
    limit) keeps what it measured."""
    done, t0 = list(out["tasks"]), time.perf_counter()

    def save(result: dict) -> None:
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        out["tasks"] = done + [result]
        write_json(path, out)  # atomic: a run killed mid-write leaves the last whole file

    result = run(save)
    save(result)
    return result


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training, search and scoring options this job shares with jobs/bench_sparse.py."""
    p.add_argument("--tasks", default=",".join(t for t in shipped.TASKS if t != "social_iqa"))
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of peft_lora and of the super-adapter")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rank", type=int, default=16, help="plain LoRA rank (the super-adapter's r_max is its config's)")
    p.add_argument("--cutoff-len", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space-config", default="jobs/configs/quickstart.yaml", help="a config with a supernet section")
    p.add_argument("--distill", type=float, default=0.5, help="distillation weight (0: off)")
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument("--distill-maximal", action=argparse.BooleanOptionalAction, default=True,
                   help="a frozen teacher (--teacher peft_lora) teaches the maximal too (train.distill.maximal)")
    p.add_argument("--random-band", type=floats, default=None,
                   help="lo,hi: the sandwich's random sub-network drawn only among those with lo..hi x the maximal's "
                        "params (training weighted toward the target shapes); default uniform")
    p.add_argument("--warm-start-share", type=float, default=0.0,
                   help="the first share of the super-adapter's steps trains the maximal alone (OFA's warm start), "
                        "then the sandwich; the same optimizer steps, fewer passes")
    p.add_argument("--maximal-weight", type=float, default=1.0,
                   help="the sandwich maximal's loss weight against the others' 1 (train.sampling.maximal_weight)")
    p.add_argument("--targets", type=floats, default=[0.9, 0.75, 0.6],
                   help="the picks' budgets: fractions of the maximal's params or measured latency (--target-by)")
    p.add_argument("--target-by", choices=["params", "latency"], default="params",
                   help="latency: each candidate's merged model is timed (the rows' request) and the targets are "
                        "fractions of the maximal's latency; candidates then spread from the maximal to the minimal")
    p.add_argument("--heuristic", action=argparse.BooleanOptionalAction, default=True,
                   help="also pick (and recover, and prune-then-LoRA) the space's median sub-network")
    p.add_argument("--band", type=float, default=0.08, help="a pick's ratio lies in [target - band, target]")
    p.add_argument("--candidates", type=int, default=48, help="sampled sub-networks the in-process search weighs")
    p.add_argument("--per-target", type=int, default=6, help="candidates scored on the selection set per target")
    p.add_argument("--select-share", type=float, default=0.25, help="share of the test split used to choose picks")
    p.add_argument("--latency-prompt", type=int, default=64)
    p.add_argument("--latency-new", type=int, default=16)
    p.add_argument("--latency-repeats", type=int, default=5, help="0: no latency")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny random model, a few steps: checks the job runs")


def start(args, what: str) -> tuple[ModelSource, dict, torch.device, dict]:
    """Logging, the model source (--quick: tiny, few steps), the space's supernet section, the device and the
    JSON header (machine, date, settings) of a benchmark run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    space_spec = load_yaml(args.space_config)["supernet"]  # duplicate keys refused, as in a run
    space_spec.pop("model", None)
    if args.quick:
        source = ModelSource(kind="tiny")
        args.steps, args.batch, args.candidates = min(args.steps, 3), min(args.batch, 4), min(args.candidates, 8)
        if hasattr(args, "recover_steps"):
            args.recover_steps = min(args.recover_steps, 2)
    else:
        source = ModelSource(kind="smollm2")
    band = args.random_band  # add_arguments gives every job that starts here the option
    if band is not None and not (len(band) == 2 and 0 <= band[0] < band[1] <= 1):
        raise SystemExit(f"error: --random-band takes lo,hi with 0 <= lo < hi <= 1 (fractions of the maximal's "
                         f"params), got {','.join(map(str, band))}")
    if not 0 <= args.warm_start_share < 1:
        raise SystemExit(f"error: --warm-start-share takes a share of the steps in [0, 1), got {args.warm_start_share}")
    device = torch.device(args.device)
    header = {
        "what": what,
        "model": source.kind, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine": {"platform": platform.platform(), "cpu": platform.processor(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "date": datetime.date.today().isoformat(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "tasks": [],
    }
    return source, space_spec, device, header


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    p.add_argument("--parts", default="zero_shot,peft_lora", help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--recover-steps", type=int, default=50, help="recovery fine-tune steps per pick (part recover)")
    p.add_argument("--budget-share", type=floats, default=[1.0],
                   help="steps of each prune_lora / minitron row: this share of lonas-ray's whole cost in sub-network "
                        "passes (super-adapter training + every recovery); 1/3 gives three targets lonas-ray's cost; "
                        "a comma list gives rows at each share (named part@share:pick)")
    p.add_argument("--teacher", choices=["maximal", "peft_lora"], default="maximal",
                   help="maximal: in place; peft_lora: the plain-LoRA row's model, frozen, teaches the super-adapter "
                        "and the recoveries (needs part peft_lora; train.distill.teacher: baseline in the pipeline)")
    p.add_argument("--picks-from", help="an earlier run's JSON: its picks and cost, no super-adapter trained here "
                                        "(baseline rows at other --budget-share values); same --space-config")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    args.parts = args.parts.split(",")
    if args.picks_from and {"supernet", "recover"} & set(args.parts):
        p.error("--picks-from reuses an earlier run's super-network: leave supernet and recover out of --parts")
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; use {', '.join(PARTS)}")
    if "minitron" in args.parts and args.teacher != "peft_lora":
        p.error("the minitron part distils from the plain-LoRA teacher: add --teacher peft_lora")
    if args.teacher == "peft_lora" and "peft_lora" not in args.parts:
        p.error("--teacher peft_lora needs the peft_lora part (its model is the teacher): add it to --parts")
    source, space_spec, device, out = start(
        args, "per task: base zero-shot, plain PEFT LoRA, lonas-ray's super-network picks, prune-then-LoRA; "
              "lonas-ray's scorer on the report part of the recorded test split")
    for task in args.tasks.split(","):
        run_saving(args.out, out, lambda save: bench_task(task, args, source, space_spec, device, save))
    out["complete"] = True  # every task's every row: a file without it was cut short
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
