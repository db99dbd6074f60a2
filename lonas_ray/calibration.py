"""A calibration batch for importance scoring: real text when there is a tokenizer, tokens otherwise.

Text comes from the BIG-bench ``social_iqa`` task shipped in ``lonas_ray/assets``
(question + correct answer), so importance is measured on the kind of input the
model will be tuned for, with no download.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

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
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(shipped_texts(n, seed), return_tensors="pt", padding=True, truncation=True,
                    max_length=max_length)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
