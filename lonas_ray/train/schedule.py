"""The training schedule as pure functions of (seed, step): which sub-networks, which examples.

Every data-parallel rank, every restart after a failure and every
gradient-checkpointing recomputation must agree on both, so neither depends on
process state: they are recomputed from the step number. Resuming at step k
therefore continues exactly the schedule an uninterrupted run would follow.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lonas_ray.space import SearchSpace, SubnetConfig

# uniform draws for one random slot before a band that admits almost nothing is an error
MAX_DRAWS = 500

STRATEGIES = ("random", "sandwich", "fixed:maximal")


def _rng(seed: int, step: int, salt: str) -> random.Random:
    return random.Random(f"{salt}:{seed}:{step}")


def subnets_for_step(space: SearchSpace, strategy: str, seed: int, step: int, sandwich_random: int = 1,
                     accept: Callable[[SubnetConfig], bool] | None = None,
                     warm_start_steps: int = 0) -> list[SubnetConfig]:
    """The sub-networks whose gradients make up optimizer step ``step``.

    ``random``: one uniformly sampled sub-network. ``sandwich``: the largest, the
    smallest and ``sandwich_random`` random ones (gradients accumulated).
    ``fixed:maximal``: the maximal network only, i.e. plain LoRA, the baseline.
    ``accept``: random slots are drawn only among the sub-networks it accepts (the first accepted of a seeded
    sequence of uniform draws): training weighted toward the shapes that will be deployed (AttentiveNAS,
    Nemotron Elastic) instead of uniformly over the space.
    ``warm_start_steps``: steps before it train the maximal alone, whatever the strategy (OFA trains its full network
    before it adds elasticity): the same optimizer steps, with the maximal's whole gradient in the first ones.
    """
    if step < warm_start_steps:
        return [space.maximal()]
    if strategy == "random":
        return [_draw(space, _rng(seed, step, "subnet"), accept)]
    if strategy == "sandwich":
        rng = _rng(seed, step, "subnet")
        return [space.maximal(), space.minimal()] + [_draw(space, rng, accept) for _ in range(sandwich_random)]
    if strategy == "fixed:maximal":
        return [space.maximal()]
    raise ValueError(f"unknown sampling strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")


def _draw(space: SearchSpace, rng: random.Random, accept: Callable[[SubnetConfig], bool] | None) -> SubnetConfig:
    for _ in range(MAX_DRAWS if accept is not None else 1):
        config = space.sample(rng)
        if accept is None or accept(config):
            return config
    raise ValueError(f"none of {MAX_DRAWS} sampled sub-networks lies in the training band: widen it")


def batch_indices(n_examples: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Global example indices of step ``step``: consecutive slices of a per-epoch seeded permutation."""
    if n_examples < 1:
        raise ValueError("the training set is empty")
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_examples)
        order = list(range(n_examples))
        _rng(seed, epoch, "data").shuffle(order)
        out.extend(order[offset: offset + batch_size - len(out)])
    return out


def rank_micro_batches(indices: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's share of a global batch, split into micro-batches."""
    per_rank = len(indices) // world_size
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
