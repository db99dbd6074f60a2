"""The calibration batch of importance scoring and Wanda pruning: the task's own examples where the run has them.

Importance (which channels and heads come first, EFTNAS's space bounds) and
Wanda's input norms (which weights are pruned) both depend on the activations the
batch produces, so they are measured on the data the model will be tuned for: a
seeded sample of the run's training examples, tokenized exactly as training sees
them (``task_batch``). Outside a run (``lonas-ray export``, a bare
``SupernetSpec``) there is no task data, and the batch is question + correct
answer text of the BIG-bench ``social_iqa`` task shipped in ``lonas_ray/assets``
(``calibration_batch``); a model without a tokenizer gets random tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from lonas_ray.data.spec import DataSpec

ASSET = Path(__file__).parent / "assets" / "bigbench" / "social_iqa.json"


def shipped_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` question+answer texts from the shipped social_iqa task, in a seeded order."""
    data = json.loads(ASSET.read_text())
    examples = list(data["examples"])
    random.Random(seed).shuffle(examples)
    texts = []
    for ex in examples[:n]:
        answer = max(ex["target_scores"], key=ex["target_scores"].get)
        texts.append(f"{ex['input'].strip()} {answer}")
    return texts


def calibration_batch(tokenizer, vocab_size: int, n: int = 16, max_length: int = 128,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch with ``input_ids``, ``attention_mask`` and ``labels`` (padding masked out with -100)."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab_size, (n, max_length), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    _ensure_pad(tokenizer)
    enc = tokenizer(shipped_texts(n, seed), return_tensors="pt", padding=True, truncation=True,
                    max_length=max_length)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def task_batch(data: DataSpec, tokenizer, n: int, max_length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` seeded training examples of ``data`` as training tokenizes them (prompt + answer, answer labels)."""
    from lonas_ray.data.load import load_examples
    from lonas_ray.data.tokenize import collate, tokenize_examples

    examples = load_examples(data, "train")
    picked = sorted(random.Random(seed).sample(range(len(examples)), min(n, len(examples))))
    rows = tokenize_examples(examples.select(picked), tokenizer, min(max_length, data.cutoff_len))
    _ensure_pad(tokenizer)
    return collate(rows, tokenizer.pad_token_id)


def _ensure_pad(tokenizer) -> None:
    """A tokenizer without a pad token pads with its eos (the batch masks padding out either way)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def describe(data: DataSpec | None, tokenizer, n: int) -> str:
    """Where a calibration batch came from, for the log and ``prepared/calibration.json``."""
    if data is not None:
        return f"{n} training examples of {data.train}" + ("" if tokenizer is not None else " (byte tokenizer)")
    if tokenizer is None:
        return f"{n} sequences of random tokens (the model has no tokenizer)"
    return f"{n} shipped social_iqa question + answer texts"
