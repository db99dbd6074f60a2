"""Export a sub-network's adapters in the format stock PEFT loads.

The adapter applies to the *sliced, unmerged* base (``extract(..., merge=False)``).
Per-module ranks go in ``rank_pattern``; since PEFT scales by
``lora_alpha / r`` and ours is ``alpha / r_max`` at every rank, each module's
alpha goes in ``alpha_pattern`` as ``alpha * r / r_max``. PEFT itself writes the
files (``get_peft_model`` + ``save_pretrained``), so the format is PEFT's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.space import SubnetConfig


def peft_lora_config(supernet: SuperNetwork, config: SubnetConfig | None = None) -> LoraConfig:
    """A ``LoraConfig`` describing the active ranks of ``config`` on the extracted base."""
    plan = supernet.plan(config)
    fam, space = supernet.family, supernet.space
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    targets: set[str] = set()
    for new_index, i in enumerate(plan.kept_layers):
        for name, s in plan.layers[i].linears.items():
            if name in space.target_modules and s.rank:
                path = f"{fam.layers}.{new_index}.{fam.parent_of(name)}.{name}"
                targets.add(path)
                rank_pattern[path] = s.rank
                alpha_pattern[path] = space.alpha * s.rank / space.r_max
    if not targets:
        raise ValueError("the sub-network has no active adapter to export")
    return LoraConfig(
        r=space.r_max,
        lora_alpha=space.alpha,
        lora_dropout=space.dropout,
        target_modules=sorted(targets),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
        task_type="CAUSAL_LM",
    )


def export_peft_adapter(supernet: SuperNetwork, base: nn.Module, out_dir: str | Path,
                        config: SubnetConfig | None = None) -> Path:
    """Write the adapter of ``config`` for ``base`` (its unmerged extraction) to ``out_dir`` with PEFT."""
    plan = supernet.plan(config)
    lora_config = peft_lora_config(supernet, config)
    peft_model = get_peft_model(base, lora_config)
    fam = supernet.family
    with torch.no_grad():
        for new_index, i in enumerate(plan.kept_layers):
            for name, s in plan.layers[i].linears.items():
                module = supernet.elastic.get((i, name))
                if module is None or not module.r_max or not s.rank:
                    continue
                target = peft_model.base_model.model.get_submodule(
                    f"{fam.layers}.{new_index}.{fam.parent_of(name)}.{name}"
                )
                target.lora_A["default"].weight.copy_(module.lora_A[: s.rank, : s.in_features])
                target.lora_B["default"].weight.copy_(module.lora_B[: s.out_features, : s.rank])
    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir)
    peft_model.unload()  # give ``base`` back without LoRA layers
    return out_dir
