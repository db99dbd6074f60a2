"""Tokenization for causal-LM fine-tuning with the loss on the answer only, and batch padding.

One example becomes::

    input_ids      = [special prefix] + prompt + answer + [eos]
    labels         = -100 ...       -100      answer + [eos]
    attention_mask = 1 for every token

The prompt and the answer are tokenized separately, so the label mask falls
exactly on the answer's first token. The special prefix is whatever the
tokenizer adds in front of a text by default (BOS for Llama-style tokenizers,
nothing for GPT-2-style ones); eos is appended when the tokenizer has one,
so the model learns to stop. Transformers' causal-LM loss shifts the labels
itself, so labels line up with input_ids.

Examples longer than ``cutoff_len`` lose prompt tokens from the left, keeping
the answer whole while at least one prompt token still fits; an answer that
does not fit even so keeps the last half of the room for the prompt's tail
and is cut on the right (logged as a warning, with a count).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import torch

from lonas_ray.data.load import load_examples
from lonas_ray.data.spec import DataSpec

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
COLUMNS = ("input_ids", "labels", "attention_mask")


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text by default (e.g. ``[bos]``), found by probing it."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def encode(
    prompt_ids: Sequence[int], answer_ids: Sequence[int], *, cutoff_len: int,
    prefix: Sequence[int] = (), eos_id: int | None = None,
) -> tuple[dict[str, list[int]], bool]:
    """One training row from token ids, and whether the answer had to be cut."""
    answer = list(answer_ids) + ([eos_id] if eos_id is not None else [])
    room = cutoff_len - len(prefix)
    if len(answer) < room:
        keep = room - len(answer)
        cut = False
    else:
        keep = min(len(prompt_ids), room // 2)
        answer = answer[: room - keep]
        cut = True
    prompt = list(prompt_ids[max(0, len(prompt_ids) - keep):])
    context = list(prefix) + prompt
    row = {
        "input_ids": context + answer,
        "labels": [IGNORE_INDEX] * len(context) + answer,
        "attention_mask": [1] * (len(context) + len(answer)),
    }
    return row, cut


def tokenize_examples(examples: datasets.Dataset, tokenizer: Any, cutoff_len: int) -> datasets.Dataset:
    """A dataset with ``prompt`` and ``answer`` columns as training rows (see the module doc)."""
    prefix = special_prefix(tokenizer)
    eos_id = tokenizer.eos_token_id

    def batch_encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
        answers = tokenizer(batch["answer"], add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {name: [] for name in (*COLUMNS, "answer_cut")}
        for p, a in zip(prompts, answers):
            row, cut = encode(p, a, cutoff_len=cutoff_len, prefix=prefix, eos_id=eos_id)
            for name in COLUMNS:
                out[name].append(row[name])
            out["answer_cut"].append(cut)
        return out

    rows = examples.map(
        batch_encode, batched=True, remove_columns=examples.column_names, keep_in_memory=True, desc="tokenize",
        new_fingerprint=uuid.uuid4().hex,  # in memory, never cached: skip dill hashing (noisy in Ray workers)
    )
    cut = sum(rows["answer_cut"])
    if cut:
        log.warning(
            "%d of %d answers are longer than cutoff_len=%d allows and were cut; raise data.cutoff_len",
            cut, len(rows), cutoff_len,
        )
    return rows.remove_columns("answer_cut")


def build_train_dataset(spec: DataSpec, tokenizer: Any) -> datasets.Dataset:
    """The training rows of ``spec``: columns input_ids, labels, attention_mask (lists of ints)."""
    return tokenize_examples(load_examples(spec, "train"), tokenizer, spec.cutoff_len)


def _columns(batch: Any) -> dict[str, list]:
    if isinstance(batch, datasets.Dataset):
        return {name: list(batch[name]) for name in batch.column_names}
    if isinstance(batch, Mapping):
        return {name: list(values) for name, values in batch.items()}
    rows = list(batch)
    if not rows:
        raise ValueError("collate got an empty batch")
    return {name: [row[name] for row in rows] for name in rows[0]}


def collate(batch: Any, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest: input_ids with ``pad_id``, labels with -100, attention_mask with 0.

    ``batch`` is a list of rows, a ``datasets.Dataset`` (e.g. ``dataset.select(indices)``)
    or a mapping of columns (``dataset[a:b]``).
    """
    columns = _columns(batch)
    ids = columns["input_ids"]
    width = max(len(r) for r in ids)
    masks = columns.get("attention_mask") or [[1] * len(r) for r in ids]
    fills = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out = {}
    for name, rows in (("input_ids", ids), ("labels", columns.get("labels")), ("attention_mask", masks)):
        if rows is None:
            continue
        out[name] = torch.tensor([list(r) + [fills[name]] * (width - len(r)) for r in rows], dtype=torch.long)
    return out
