"""One optimizer step of the super-adapter: every sub-network of the step on every micro-batch.

Kept apart from the Ray Train worker loop (``loop.py``) so the step's maths,
distillation included, runs and is tested on a plain model: ``forward`` and
``backward`` are whatever the caller trains with (a DeepSpeed engine's forward
and ``backward`` + ``step``, or a bare module and ``loss.backward``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lonas_ray.space import SubnetConfig
from lonas_ray.train.distill import answer_logits, distillation_loss, mixed_loss


@dataclass
class StepStats:
    loss_sum: float = 0.0  # sum over passes of the loss that was back-propagated
    ce_sum: float = 0.0  # sum over passes of the plain cross-entropy
    passes: int = 0  # (sub-network, micro-batch) forwards
    teacher_passes: int = 0  # forwards of a frozen teacher: one per micro-batch, whatever the sub-networks
    tokens: int = 0  # attention-mask tokens through a forward

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.passes, 1)


def train_step(subnets: Sequence[SubnetConfig], micro_batches: Sequence[dict[str, torch.Tensor]], *,
               activate: Callable[[SubnetConfig], None], forward: Callable[[dict], Any],
               backward: Callable[[torch.Tensor], None], distill_weight: float = 0.0,
               temperature: float = 1.0,
               teacher: Callable[[dict], torch.Tensor] | None = None, distill_maximal: bool = True,
               maximal_weight: float = 1.0) -> StepStats:
    """Run the step. With ``distill_weight`` > 0 soft targets join the labels: a frozen ``teacher``'s answer
    logits (``lonas_ray.train.teacher``: computed once per micro-batch, reused by every sub-network, the maximal
    too unless ``distill_maximal`` is False) or, without one, in place: the first sub-network (the maximal)
    teaches the others. ``maximal_weight`` scales the first sub-network's loss (a sandwich step's maximal) against
    the others', whose weight is 1: its share of the update, which at 1 is one part in ``len(subnets)``."""
    stats = StepStats()
    targets: dict[int, torch.Tensor] = {}
    for k, sub in enumerate(subnets):
        activate(sub)
        for j, batch in enumerate(micro_batches):
            if distill_weight > 0 and teacher is not None and j not in targets:
                targets[j] = teacher(batch)
                stats.teacher_passes += 1
            out = forward(batch)
            ce = out.loss
            loss = ce
            if distill_weight > 0:
                student = answer_logits(out.logits, batch["labels"])
                if teacher is None and k == 0:  # in place: the maximal's own loss is plain CE; keep its logits
                    targets[j] = student.detach()
                elif k > 0 or distill_maximal:
                    loss = mixed_loss(ce, distillation_loss(student, targets[j], temperature), distill_weight)
            backward(loss * maximal_weight if k == 0 else loss)
            stats.loss_sum += float(loss.detach())
            stats.ce_sum += float(ce.detach())
            stats.passes += 1
            stats.tokens += int(batch["attention_mask"].sum())
    return stats
