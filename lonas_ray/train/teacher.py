"""The distillation teacher: where its answer logits come from, checked on the driver, loaded in the workers.

``train.distill.teacher`` names it:

* ``maximal``: in-place distillation (BigNAS / OFA): the sandwich step's own maximal
  sub-network, still training, teaches the others; no extra model, no extra forward;
* ``baseline`` (``lonas-ray run`` only): the pipeline's plain-LoRA baseline, i.e. the dense
  model fine-tuned on the task, frozen. The pipeline trains it *before* the super-adapter;
* a directory: a lonas-ray super-network directory (a ``supernet/`` of ``lonas-ray train``: its
  maximal with its adapter) or a Hugging Face causal-LM directory (an export, say).

A frozen teacher's logits are computed once per micro-batch, without a graph, and reused by
every sub-network of the step (Minitron distils from the dense, task-tuned model rather than
from a member of the network being trained: arXiv 2408.11796). It must share the student's
tokenizer; a vocabulary that differs fails at the first batch (``distillation_loss``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lonas_ray.config_io import ConfigError
from lonas_ray.train.config import BASELINE, IN_PLACE
from lonas_ray.train.distill import answer_logits


def teacher_kind(path: str | Path) -> str:
    """``supernet`` or ``hf`` for a directory that holds a teacher; ConfigError naming the fix otherwise."""
    from lonas_ray.build import PREPARED_FILES
    from lonas_ray.train.state import ADAPTER_FILE

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"distill.teacher '{path}' is not a directory; name a lonas-ray supernet/ directory, a "
                          f"Hugging Face model directory, '{BASELINE}' (lonas-ray run) or '{IN_PLACE}' (in-place)")
    if (p / ADAPTER_FILE).is_file() and all((p / f).is_file() for f in PREPARED_FILES):
        return "supernet"
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return "hf"
    raise ConfigError(f"distill.teacher '{path}' holds no model: expected a lonas-ray supernet/ directory "
                      f"({ADAPTER_FILE} + {', '.join(PREPARED_FILES)}) or a Hugging Face model directory "
                      "(config.json + *.safetensors)")


def check_teacher(teacher: str, *, in_pipeline: bool) -> None:
    """The driver-side check of ``distill.teacher`` (before any cluster work)."""
    if teacher == IN_PLACE:
        return
    if teacher == BASELINE:
        if not in_pipeline:
            raise ConfigError(f"distill.teacher '{BASELINE}' is the plain-LoRA baseline that only `lonas-ray run` "
                              "trains; for `lonas-ray train` name the teacher's directory instead")
        return
    teacher_kind(teacher)


def load_teacher(path: str | Path, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The frozen teacher model on ``device`` (a super-network with its maximal active, or a plain model)."""
    if teacher_kind(path) == "supernet":
        from lonas_ray.train.state import load_trained_supernet

        model, _ = load_trained_supernet(path)
        model.activate(model.space.maximal())
    else:
        from transformers import AutoModelForCausalLM

        import lonas_ray  # noqa: F401  registers the lonas_<family> export classes

        model = AutoModelForCausalLM.from_pretrained(path)
    if dtype is not None:
        model.to(dtype)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherLogits:
    """``batch -> answer logits`` of a frozen teacher; counts its forwards (one per micro-batch is the contract)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.calls = model, 0

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return answer_logits(out.logits, batch["labels"])
