"""Task quality of a model on held-out examples: multiple-choice accuracy by log-likelihood, and loss.

Multiple choice (the LoNAS / Shears commonsense tasks) is scored the way
lm-evaluation-harness scores ``acc``: each choice is appended to the prompt,
the model's log-probabilities of the choice's tokens are summed, and the
highest sum is the model's answer. The held-out loss is the mean
per-token negative log-likelihood of the *correct* choices, so it moves
smoothly where accuracy moves in steps. Instruction data has no choices; its
quality is the teacher-forced accuracy of the answer tokens
(``answer_token_accuracy``) and its loss that of training (answer + eos).

Everything is a pure function of (model, tokenized set), so the search's
evaluator and an independent check on an exported model compute the same thing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from lonas_ray.data.tokenize import IGNORE_INDEX, collate, encode, special_prefix

MC_METRIC = "mc_accuracy"
TOKEN_METRIC = "answer_token_accuracy"


@dataclass(frozen=True)
class EvalSet:
    """Tokenized rows; ``groups[k]`` are example k's rows (its choices), ``labels[k]`` the correct one."""

    rows: list[dict[str, list[int]]]
    groups: list[list[int]]
    labels: list[int]
    metric: str
    pad_id: int

    def __len__(self) -> int:
        return len(self.groups)


@dataclass(frozen=True)
class Quality:
    quality: float
    metric: str
    loss: float
    examples: int


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
    return EvalSet(rows, groups, labels, MC_METRIC if mc else TOKEN_METRIC, pad_id)


def subset(evalset: EvalSet, indices: list[int]) -> EvalSet:
    """The examples at ``indices`` (with their rows renumbered)."""
    rows, groups = [], []
    for k in indices:
        groups.append(list(range(len(rows), len(rows) + len(evalset.groups[k]))))
        rows.extend(evalset.rows[i] for i in evalset.groups[k])
    return EvalSet(rows, groups, [evalset.labels[k] for k in indices], evalset.metric, evalset.pad_id)


@torch.inference_mode()
def score_rows(model, rows: list[dict], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Per row: (sum of answer-token log-probs, answer tokens, answer tokens predicted right), float64 (n, 3).

    Rows are batched by length (least padding) and the results put back in order.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = torch.zeros(len(rows), 3, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], pad_id).items()}
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


def evaluate_quality(model, evalset: EvalSet, batch_size: int = 8) -> Quality:
    """Quality (accuracy), its metric and the held-out loss of ``model`` on ``evalset`` (see module doc)."""
    if len(evalset) == 0:
        raise ValueError("the evaluation set is empty")
    scores = score_rows(model, evalset.rows, evalset.pad_id, batch_size)
    correct = [g[label] for g, label in zip(evalset.groups, evalset.labels)]
    nll = -scores[correct, 0].sum() / scores[correct, 1].sum()
    if evalset.metric == MC_METRIC:
        hits = sum(int(scores[g, 0].argmax()) == label for g, label in zip(evalset.groups, evalset.labels))
        quality = hits / len(evalset)
    else:
        quality = float(scores[correct, 2].sum() / scores[correct, 1].sum())
    return Quality(float(quality), evalset.metric, float(nll), len(evalset))
