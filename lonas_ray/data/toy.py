"""A small, learnable instruction task for tests: reverse a few letters.

Each record is ``{"instruction": "Reverse the letters.", "input": "cab", "output": "bac"}``:
the answer is a deterministic function of the input, short (2 to 4 letters of
a..j), and made of the same few byte tokens, so even a tiny random-init model
trained for a few dozen steps visibly lowers its loss (first on the answer's
alphabet and end, then on the copying).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Reverse the letters."
LETTERS = "abcdefghij"


def toy_record(rng: random.Random) -> dict[str, str]:
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4)))
    return {"instruction": INSTRUCTION, "input": word, "output": word[::-1]}


def write_toy_task(path: str | Path, n: int = 256, seed: int = 0) -> Path:
    """Write ``n`` toy records as JSON lines to ``path`` (same ``seed``, same file); returns the path."""
    path = Path(path)
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(toy_record(rng)) + "\n")
    return path
