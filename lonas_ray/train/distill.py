"""In-place knowledge distillation for the sandwich rule (BigNAS / OFA style), as pure tensor maths.

In a sandwich step the maximal sub-network runs first. Its logits on the answer
tokens, detached, are the soft targets of the smaller sub-networks of the same
step, so the super-network's best member teaches the others for free: no extra
teacher model and no extra forward pass. A student's loss is

    (1 - weight) * CE(labels) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

averaged over answer tokens (the positions whose label is not -100, shifted by
one as in causal-LM training). T^2 keeps the soft term's gradient scale
independent of the temperature (Hinton et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lonas_ray.data.tokenize import IGNORE_INDEX


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits that predict answer tokens, as (answer tokens, vocab): position t predicts label t + 1."""
    mask = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][mask]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x mean KL(teacher || student) of softened distributions, over rows of (tokens, vocab) logits."""
    if student.shape != teacher.shape:
        raise ValueError("student and teacher logits differ in shape: "
                         f"{tuple(student.shape)} vs {tuple(teacher.shape)}")
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    return kl.mean() * t * t


def mixed_loss(ce: torch.Tensor, kd: torch.Tensor, weight: float) -> torch.Tensor:
    return (1.0 - weight) * ce + weight * kd
