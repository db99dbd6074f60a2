"""The Tune trainable of the search: one trial evaluates one sub-network.

A class trainable whose ``reset_config`` keeps the ``Evaluator`` (loaded
super-network, tokenized evaluation set), so with ``reuse_actors=True`` Tune
hands the next configuration to the same actor and a trial costs one
evaluation, not one model load. What a trial is for (``modes``) comes with its
configuration, so one run's evaluators do a pool's search and its follow-up.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ray import tune

from lonas_ray.search.evaluator import EvalJob, Evaluator
from lonas_ray.search.modes import FINAL, MODE, SEARCH


class SubnetTrainable(tune.Trainable):
    def setup(self, config: dict, job: EvalJob | None = None):
        self.evaluator = Evaluator(job)
        self.evaluator_id = uuid.uuid4().hex  # which loaded evaluator served a trial (reuse is auditable)

    def step(self) -> dict:
        ev = self.evaluator
        config = dict(self.config)
        mode = config.pop(MODE, SEARCH)
        if mode == FINAL:  # the full-set quality of chosen sub-networks; their latency is already known
            row = ev.evaluate(config, examples=ev.quality_spec.final_examples, with_latency=False)
        else:
            row = ev.evaluate(config, examples=ev.quality_spec.examples)
        # Tune reserves "timestamp" and other keys, so the row travels as JSON; the objectives also flat.
        reference = ev.reference() if mode != FINAL and ev.reference_due(row["subnet_id"]) else None
        return {"reference_json": json.dumps(reference) if reference else "",
                "quality": row["quality"], "neg_loss": -row["loss"], "neg_task_loss": -row["task_loss"],
                "latency_ms": row["latency_ms"] or 0.0, "params": row["params"],
                "subnet_id": row["subnet_id"], "evaluator_id": self.evaluator_id, "mode": mode,
                "row_json": json.dumps(row)}

    def reset_config(self, new_config: dict) -> bool:
        return True  # Tune sets self.config itself; the evaluator is what we keep

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {}  # one trial is one evaluation: nothing to resume inside it

    def load_checkpoint(self, checkpoint: Any) -> None:
        pass
