"""Task quality of a model on held-out examples: accuracy, a task loss that tracks it, and the answer loss.

* Multiple choice (the LoNAS / Shears commonsense tasks) is scored the way
  lm-evaluation-harness scores ``acc``: each choice is appended to the prompt,
  the model's log-probabilities of the choice's tokens are summed, and the
  highest sum is the model's answer. Its **task loss** is the cross-entropy of
  that decision (softmax over the choices' summed log-likelihoods, the right
  one's negative log-probability): it falls only when the right choice gains on
  the wrong ones, so it tracks accuracy smoothly, where the answer loss also
  falls when the model merely learns to copy *a* listed choice.
* Generation (BIG-bench ``target`` tasks such as arithmetic) is scored by
  **exact match** of the greedy continuation, cut at the first newline and
  stripped, against any accepted answer (lm-eval's ``exact_match`` with
  ``until: ["\n"]``); its task loss is the answer loss.
* Instruction data without accepted answers is scored by the teacher-forced
  accuracy of the answer tokens (``answer_token_accuracy``).

The **answer loss** (``loss``) is always the mean per-token negative
log-likelihood of the correct answer (+ eos where training has it).

Everything is a pure function of (model, tokenized set), so the search's
evaluator and an independent check on an exported model compute the same thing.
``share`` (a context manager factory, e.g. ``lease.HardwareLease.shared``) is held
around each batch: a latency measurement on the same hardware waits at most a batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from lonas_ray.data.tokenize import IGNORE_INDEX, collate, encode, special_prefix
from lonas_ray.search.metric import (  # noqa: F401  (the names this module's results carry, re-exported)
    BINOMIAL_METRICS,
    EXACT_METRIC,
    MC_METRIC,
    TOKEN_METRIC,
    accuracy_interval,
)

Share = Callable[[], AbstractContextManager]  # held around each batch (see the module doc)


@dataclass(frozen=True)
class EvalSet:
    """Tokenized rows; ``groups[k]`` are example k's rows (its choices), ``labels[k]`` the correct one.

    Generation sets also hold each example's prompt ids (special prefix included)
    and accepted answers, and the ids that end a generation.
    """

    rows: list[dict[str, list[int]]]
    groups: list[list[int]]
    labels: list[int]
    metric: str
    pad_id: int
    prompts: list[list[int]] = field(default_factory=list)
    targets: list[list[str]] = field(default_factory=list)
    eos_id: int | None = None

    def __len__(self) -> int:
        return len(self.groups)


@dataclass(frozen=True)
class Quality:
    quality: float
    metric: str
    loss: float  # answer loss: per-token NLL of the correct answer
    examples: int
    task_loss: float  # multiple choice: choice cross-entropy; otherwise the answer loss
    hits: int | None = None  # examples right (accuracy metrics), for binomial intervals


def subset_indices(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """The first ``n`` of a seeded permutation: the same examples for every sub-network (comparable)."""
    order = list(range(n_total))
    random.Random(seed).shuffle(order)
    return sorted(order[: n_total if n is None else min(n, n_total)])


def build_eval_set(examples: Any, tokenizer: Any, cutoff_len: int) -> EvalSet:
    """Rows from ``load_examples(spec, "eval")`` output: ``choices``/``label`` (MC) or ``answer`` columns."""
    prefix = special_prefix(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    columns = examples.column_names
    rows, groups, labels = [], [], []
    mc = "choices" in columns
    generation = "targets" in columns
    prompts, targets = [], []
    for ex in examples:
        prompt = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        if mc:
            group = []
            for choice in ex["choices"]:
                answer = tokenizer(choice, add_special_tokens=False)["input_ids"]
                row, _ = encode(prompt, answer, cutoff_len=cutoff_len, prefix=prefix, eos_id=None)
                group.append(len(rows))
                rows.append(row)
            groups.append(group)
            labels.append(int(ex["label"]))
        else:
            answer = tokenizer(ex["answer"], add_special_tokens=False)["input_ids"]
            row, _ = encode(prompt, answer, cutoff_len=cutoff_len, prefix=prefix, eos_id=tokenizer.eos_token_id)
            groups.append([len(rows)])
            rows.append(row)
            labels.append(0)
            if generation:
                prompts.append(list(prefix) + prompt)
                targets.append(list(ex["targets"]))
    if generation:
        return EvalSet(rows, groups, labels, EXACT_METRIC, pad_id, prompts, targets, tokenizer.eos_token_id)
    return EvalSet(rows, groups, labels, MC_METRIC if mc else TOKEN_METRIC, pad_id)


def subset(evalset: EvalSet, indices: list[int]) -> EvalSet:
    """The examples at ``indices`` (with their rows renumbered)."""
    rows, groups = [], []
    for k in indices:
        groups.append(list(range(len(rows), len(rows) + len(evalset.groups[k]))))
        rows.extend(evalset.rows[i] for i in evalset.groups[k])
    return EvalSet(rows, groups, [evalset.labels[k] for k in indices], evalset.metric, evalset.pad_id,
                   [evalset.prompts[k] for k in indices] if evalset.prompts else [],
                   [evalset.targets[k] for k in indices] if evalset.targets else [], evalset.eos_id)


@torch.inference_mode()
def score_rows(model, rows: list[dict], pad_id: int, batch_size: int = 8, share: Share = nullcontext) -> torch.Tensor:
    """Per row: (sum of answer-token log-probs, answer tokens, answer tokens predicted right), float64 (n, 3).

    Rows are batched by length (least padding) and the results put back in order.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = torch.zeros(len(rows), 3, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], pad_id).items()}
        with share():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = batch["labels"][:, 1:]
        mask = target != IGNORE_INDEX
        safe = target.clamp(min=0)
        token_logp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
        right = (logp.argmax(-1) == safe) & mask
        out[idx, 0] = token_logp.sum(1).double().cpu()
        out[idx, 1] = mask.sum(1).double().cpu()
        out[idx, 2] = right.sum(1).double().cpu()
    return out


def choice_cross_entropy(choice_scores: Sequence[torch.Tensor], labels: Sequence[int]) -> float:
    """Mean over examples of -log softmax(choice log-likelihoods)[right choice] (see the module doc)."""
    losses = [-torch.log_softmax(scores, dim=0)[label] for scores, label in zip(choice_scores, labels)]
    return float(torch.stack(losses).mean())


def answer_matches(text: str, targets: Sequence[str]) -> bool:
    """Exact match of a generation: its first line, stripped, equals an accepted answer, stripped."""
    first = text.split("\n", 1)[0].strip()
    return any(first == str(t).strip() for t in targets)


@torch.inference_mode()
def greedy_continuations(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
                         eos_id: int | None, batch_size: int = 8, share: Share = nullcontext) -> list[list[int]]:
    """Greedy new tokens per prompt (``model.generate``, left-padded batches, stopping at eos)."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        with share():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos_id, pad_token_id=pad_id, min_new_tokens=0)
        for row, i in zip(gen[:, width:].tolist(), idx):
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id)]
            out[i] = row
    return out


def generation_budget(evalset: EvalSet) -> int:
    """New tokens a generation may take: the longest accepted answer (+ eos), plus two."""
    correct = [evalset.rows[g[label]] for g, label in zip(evalset.groups, evalset.labels)]
    return max(sum(t != IGNORE_INDEX for t in row["labels"]) for row in correct) + 2


def evaluate_quality(model, evalset: EvalSet, batch_size: int = 8,
                     decode: Callable[[list[int]], str] | None = None, share: Share = nullcontext) -> Quality:
    """Quality, its metric, the answer loss and the task loss of ``model`` on ``evalset`` (see module doc).

    Exact match needs ``decode`` (token ids -> text, e.g. ``tokenizer.decode``) to compare answers as text.
    """
    return score_examples(model, evalset, batch_size, decode, share)[0]


def score_examples(model, evalset: EvalSet, batch_size: int = 8, decode: Callable[[list[int]], str] | None = None,
                   share: Share = nullcontext) -> tuple[Quality, list[bool] | None]:
    """``evaluate_quality`` and, for accuracy metrics, which examples were right (an independent judge's check)."""
    if len(evalset) == 0:
        raise ValueError("the evaluation set is empty")
    scores = score_rows(model, evalset.rows, evalset.pad_id, batch_size, share)
    correct = [g[label] for g, label in zip(evalset.groups, evalset.labels)]
    nll = float(-scores[correct, 0].sum() / scores[correct, 1].sum())
    if evalset.metric == MC_METRIC:
        per_choice = [scores[g, 0] for g in evalset.groups]
        right = [int(c.argmax()) == label for c, label in zip(per_choice, evalset.labels)]
        return Quality(sum(right) / len(evalset), MC_METRIC, nll, len(evalset),
                       choice_cross_entropy(per_choice, evalset.labels), sum(right)), right
    if evalset.metric == EXACT_METRIC:
        if decode is None:
            raise ValueError("exact match compares text: pass decode= (e.g. tokenizer.decode)")
        continuations = greedy_continuations(model, evalset.prompts, generation_budget(evalset), evalset.pad_id,
                                             evalset.eos_id, batch_size, share)
        right = [answer_matches(decode(c), t) for c, t in zip(continuations, evalset.targets)]
        return Quality(sum(right) / len(evalset), EXACT_METRIC, nll, len(evalset), nll, sum(right)), right
    quality = float(scores[correct, 2].sum() / scores[correct, 1].sum())
    return Quality(quality, evalset.metric, nll, len(evalset), nll), None
