"""Compress a super-network's frozen base in place: prune, then quantize, then set the adapter rules.

Runs after importance reordering (see ``sparsity.py`` for why that order) on
every block linear, adapter or not. What it leaves behind is all a later stage
needs: zeros in the base weights (the SparsePEFT mask is ``W != 0``), the base
stored on its INT grid (dequantized, in the base's dtype) with its group
scales beside it (``quant.attach_scale``), and the ``mask_adapter`` / ``qa``
switches on every ``ElasticLinear``. It is deterministic given the saved
Wanda norms, so a Ray worker rebuilds the same base without recalibrating.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lonas_ray.compress.sparsity import InputNorms, input_norms, prune_
from lonas_ray.compress.spec import QuantizationSpec, SparsitySpec
from lonas_ray.config_io import ConfigError
from lonas_ray.elastic.linear import ElasticLinear, base_linear
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.families import FAMILIES
from lonas_ray.quant import attach_scale, dequantize, quantize, rtn_scales
from lonas_ray.space import SearchSpace

log = logging.getLogger(__name__)


def block_linears(supernet: SuperNetwork) -> dict[str, nn.Module]:
    """Every block linear (``ElasticLinear`` or ``nn.Linear``), keyed ``layers.<i>.<linear>``."""
    return {f"layers.{i}.{name}": m
            for i in range(supernet.shape.num_layers) for name, m in supernet.linears(i).items()}


def input_widths(space: SearchSpace) -> dict[str, set[int]]:
    """Every input width each block linear can take in ``space`` (what the group size must divide)."""
    shape = space.shape
    fam = FAMILIES[shape.family]
    widths: dict[str, set[int]] = {}
    for i in range(shape.num_layers):
        heads = space.dims.get(f"heads.{i}")
        mlp = space.dims.get(f"mlp.{i}")
        head_widths = {h * shape.head_dim for h in (heads.choices if heads else (shape.num_heads,))}
        mlp_widths = set(mlp.choices if mlp else (shape.intermediate_size,))
        for name in fam.linear_modules:
            key = f"layers.{i}.{name}"
            widths[key] = head_widths if name == fam.o else mlp_widths if name == fam.down else {shape.hidden_size}
    return widths


def check_compressible(space: SearchSpace, sparsity: SparsitySpec, quant: QuantizationSpec) -> None:
    """Reject, before any work, a space whose input widths the N:M pattern or the group size cannot cut."""
    checks = []
    if sparsity.enabled and sparsity.n_m:
        checks.append((sparsity.n_m[1], f"sparsity pattern {sparsity.pattern}", "sparsity.pattern"))
    if quant.enabled:
        checks.append((quant.group_size, f"quantization.group_size {quant.group_size}", "quantization.group_size"))
    for unit, what, key in checks:
        bad = sorted({w for ws in input_widths(space).values() for w in ws if w % unit})
        if bad:
            raise ConfigError(
                f"{what} does not divide the input width(s) {bad[:5]} that linears of this search space take; "
                f"choose a {key} that divides them, or widths that are multiples of {unit} "
                "(mlp.align / generate.align, whole heads)")


def calibrate(supernet: SuperNetwork, batch: dict[str, torch.Tensor]) -> InputNorms:
    """Wanda's input norms of every block linear, measured on the maximal (full-width) network."""
    with supernet.activated(supernet.space.maximal()):
        return input_norms(supernet.model, block_linears(supernet), batch)


def compress(supernet: SuperNetwork, sparsity: SparsitySpec, quant: QuantizationSpec,
             norms: InputNorms | None) -> None:
    """Prune (``sparsity``), quantize (``quant``) and switch on SparsePEFT / QA in place."""
    if sparsity.method == "wanda" and norms is None:
        raise ValueError("Wanda pruning needs the calibration input norms (compress.calibrate)")
    zeros = total = 0
    for key, module in block_linears(supernet).items():
        weight = base_linear(module).weight
        if sparsity.enabled:
            prune_(weight, norms.norms[key] if norms is not None else None, sparsity)
        if quant.enabled:
            scale = rtn_scales(weight, quant.bits, quant.group_size)
            with torch.no_grad():
                weight.copy_(dequantize(quantize(weight, scale, quant.bits), scale).to(weight.dtype))
            attach_scale(base_linear(module), scale, quant.bits)
        if isinstance(module, ElasticLinear):
            module.mask_adapter = sparsity.enabled and sparsity.mask_adapter
            module.qa = quant.qa
        zeros += int((weight == 0).sum())
        total += weight.numel()
    if sparsity.enabled or quant.enabled:
        supernet.compression = {
            "sparsity": {"method": sparsity.method, "pattern": sparsity.pattern, "level": sparsity.zero_fraction,
                         "mask_adapter": sparsity.mask_adapter} if sparsity.enabled else None,
            "quantization": {"bits": quant.bits, "group_size": quant.group_size, "method": quant.method,
                             "symmetric": True, "qa": quant.qa} if quant.enabled else None,
            "block_zero_fraction": zeros / max(total, 1),
        }
        log.info("compressed the base: %s, %s; %.1f %% of block weights are zero", _describe(sparsity),
                 _describe_quant(quant), 100.0 * zeros / max(total, 1))


def _describe(s: SparsitySpec) -> str:
    return f"{s.method} {s.pattern} at {s.zero_fraction:g}" if s.enabled else "dense"


def _describe_quant(q: QuantizationSpec) -> str:
    return f"INT{q.bits} g{q.group_size} {q.method}{' + QA' if q.qa else ''}" if q.enabled else "not quantized"
