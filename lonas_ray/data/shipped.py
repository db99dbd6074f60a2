"""Task data shipped inside the package, and its fixed train/test split.

Two sources, each in its own folder with its ``SOURCE.md`` (licence, provenance): BIG-bench
tasks copied unchanged (``assets/bigbench/``) and reasoning-gym tasks generated once by
``jobs/make_reasoning_gym.py`` (``assets/reasoning_gym/``, names starting ``rg_``), all in
BIG-bench's record format. Neither has a train split upstream. Each shipped task gets one by a
hash of its ``input`` text, computed once by ``jobs/make_split.py`` and recorded
beside the task as ``<task>.split.json``, so every run (and every Ray worker)
trains and evaluates on the same examples. Equal inputs hash alike, so a
question that occurs twice never lands on both sides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PREFIX = "shipped:"
ASSETS = Path(__file__).resolve().parents[1] / "assets" / "bigbench"
RG_ASSETS = ASSETS.parent / "reasoning_gym"
# name -> the data.format its records take: multiple_choice (BIG-bench input, target_scores) or
# generation (BIG-bench input, target: scored by exact match of greedy generations)
FORMATS = {
    "social_iqa": "multiple_choice",
    "intent_recognition": "multiple_choice",
    "arithmetic_3_digit_addition": "generation",
    "arithmetic_2_digit_multiplication": "generation",
    "rg_chain_sum": "generation",
    "rg_word_sequence_reversal": "generation",
    "rg_gcd": "generation",
    "rg_spell_backward": "generation",
}
TASKS = tuple(FORMATS)
TRAIN_PERCENT = 80
SPLIT_METHOD = (
    f"int(sha1(input.encode('utf-8')).hexdigest(), 16) % 100 < {TRAIN_PERCENT} -> train, else test; "
    "indices into the task file's 'examples'"
)


def is_shipped(source: str) -> bool:
    return source.startswith(PREFIX)


def task_name(source: str) -> str:
    """``social_iqa`` for ``shipped:social_iqa``."""
    return source[len(PREFIX):]


def _folder(name: str) -> Path:
    return RG_ASSETS if name.startswith("rg_") else ASSETS


def task_path(name: str) -> Path:
    return _folder(name) / f"{name}.json"


def split_path(name: str) -> Path:
    return _folder(name) / f"{name}.split.json"


def in_train(text: str) -> bool:
    """Whether an example with this ``input`` belongs to the train side."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 100 < TRAIN_PERCENT


def compute_split(examples: list[dict]) -> dict:
    """The split record of a BIG-bench example list: method, train indices, test indices."""
    train = [i for i, ex in enumerate(examples) if in_train(ex["input"])]
    chosen = set(train)
    test = [i for i in range(len(examples)) if i not in chosen]
    return {"method": SPLIT_METHOD, "train": train, "test": test}


def read_task(name: str) -> list[dict]:
    """The examples of a shipped task file."""
    return json.loads(task_path(name).read_text(encoding="utf-8"))["examples"]


def read_split(name: str) -> dict:
    """The recorded split of a shipped task."""
    return json.loads(split_path(name).read_text(encoding="utf-8"))


def split_indices(name: str, side: str) -> list[int]:
    """Recorded indices of ``side`` ('train' or 'test') of a shipped task."""
    return read_split(name)[side]
