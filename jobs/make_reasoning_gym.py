"""Generate the shipped reasoning-gym tasks (lonas_ray/assets/reasoning_gym/) and their recorded splits.

reasoning-gym (PyPI, Apache-2.0) generates procedural tasks with unlimited examples and
exact answers. It is not a lonas-ray dependency: the generated examples are shipped as files,
so runs, tests and Ray workers need nothing but the package. To regenerate (the output is a pure
function of the generator's version, config and seed, below):

    pip install --target /tmp/rg reasoning-gym==0.1.25      # beside, not into, lonas-ray's environment
    PYTHONPATH=/tmp/rg python jobs/make_reasoning_gym.py    # the task files and their recorded splits

Each task is chosen to be learnable by a 135M model in a few hundred LoRA steps and scored by
exact match of the greedy answer (``data.format: generation``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import make_split  # noqa: E402  (jobs/, beside this script)

from lonas_ray.data import shipped  # noqa: E402

VERSION = "0.1.25"
SIZE, SEED = 1000, 0
# shipped name -> (reasoning-gym dataset, its config, what it asks)
TASKS = {
    "rg_chain_sum": ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
                     "sums and differences of two or three numbers of one or two digits"),
    "rg_word_sequence_reversal": ("word_sequence_reversal", {"min_words": 3, "max_words": 5},
                                  "a comma-separated list of three to five words, reversed"),
    # added for issue 41 (tasks beyond the ones the recipe was tuned on): a number-theory question and a string
    # manipulation, the kinds of the tasks a new user tried
    "rg_gcd": ("gcd", {"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 100},
               "the greatest common divisor of two numbers from 1 to 100"),
    "rg_spell_backward": ("spell_backward", {"min_word_len": 3, "max_word_len": 6},
                          "a word of three to six letters, spelled backward"),
}


def main() -> int:
    import importlib.metadata

    import reasoning_gym

    installed = importlib.metadata.version("reasoning-gym")  # its __version__ string lags the release
    if installed != VERSION:
        print(f"reasoning-gym {installed} is installed; these files come from {VERSION}", file=sys.stderr)
        return 2
    shipped.RG_ASSETS.mkdir(parents=True, exist_ok=True)
    for name, (dataset, config, what) in TASKS.items():
        data = reasoning_gym.create_dataset(dataset, size=SIZE, seed=SEED, **config)
        examples = [{"input": e["question"], "target": e["answer"]} for e in data]
        record = {"name": name, "description": f"reasoning-gym {dataset}: {what}",
                  "source": f"reasoning-gym=={VERSION} (Apache-2.0), reasoning_gym.create_dataset("
                            f"{dataset!r}, size={SIZE}, seed={SEED}, **config)",
                  "generator": {"dataset": dataset, "config": config, "size": SIZE, "seed": SEED},
                  "examples": examples}
        shipped.task_path(name).write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {len(examples)} examples -> {shipped.task_path(name)}")
        make_split.main(["--task", name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
