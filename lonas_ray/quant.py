"""Symmetric group-wise integer weight quantization: scales, rounding, and the fake-quant of training (pure maths,
below `elastic` and `compress`, which both use it).

A weight ``W`` of shape (out, in) is cut into groups of ``group_size``
consecutive inputs per row; each group has one scale ``s`` and stores integers
``q = clamp(round(W / s), -2^(b-1), 2^(b-1) - 1)``, so ``W ~ q * s``. The scale
is round-to-nearest's absmax rule, ``s = max|W_group| / (2^(b-1) - 1)``.
Symmetric means zero has no offset: a pruned weight (0) quantizes to 0 and
dequantizes to exactly 0, so sparsity survives quantization.

QA-SparsePEFT trains on ``fake_quant(W + M * s B A)`` with the *base's* scales;
the straight-through estimator passes gradients through the rounding, so A and
B learn a delta that survives it, and the INT4 merge is the training-time weight.
"""

from __future__ import annotations

import torch


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    out, n_in = weight.shape
    if n_in % group_size:
        raise ValueError(f"group size {group_size} does not divide the input width {n_in}")
    return weight.reshape(out, n_in // group_size, group_size)


def rtn_scales(weight: torch.Tensor, bits: int, group_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Absmax scale per (row, group), shape (out, in / group_size), rounded to ``dtype`` (default: the weight's).

    An all-zero group (fully pruned) gets scale 1, so it still dequantizes to zeros without dividing by zero.
    """
    absmax = _grouped(weight.detach().float(), group_size).abs().amax(dim=2)
    scale = torch.where(absmax > 0, absmax / qmax(bits), torch.ones_like(absmax))
    return scale.to(dtype or weight.dtype)


def quantize(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The integers ``q`` of ``weight`` under ``scale`` (int8, in [-2^(b-1), 2^(b-1) - 1])."""
    group_size = weight.shape[1] // scale.shape[1]
    g = _grouped(weight.float(), group_size) / scale.float()[..., None]
    q = torch.clamp(torch.round(g), -qmax(bits) - 1, qmax(bits))
    return q.reshape(weight.shape).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * s`` per group, in fp32."""
    group_size = q.shape[1] // scale.shape[1]
    return (_grouped(q.float(), group_size) * scale.float()[..., None]).reshape(q.shape)


def fake_quant(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``dequantize(quantize(W))`` in the forward, identity in the backward (straight-through estimator)."""
    wq = dequantize(quantize(weight.detach(), scale, bits), scale).to(weight.dtype)
    return weight + (wq - weight).detach()


def attach_scale(linear: torch.nn.Module, scale: torch.Tensor, bits: int) -> None:
    """Record a quantized linear's group scales on the module (a non-persistent buffer, moved with it)."""
    linear.register_buffer("lonas_weight_scale", scale, persistent=False)
    linear.lonas_quant_bits = int(bits)


def scale_of(linear: torch.nn.Module) -> tuple[torch.Tensor, int] | None:
    """(scales, bits) of a linear quantized by ``attach_scale``, or None."""
    scale = getattr(linear, "lonas_weight_scale", None)
    return None if scale is None else (scale, linear.lonas_quant_bits)


def sliced_scale(linear: torch.nn.Module, out_features: int, in_features: int) -> tuple[torch.Tensor, int] | None:
    """(scales, bits) of the slice ``W[:out, :in]`` of a quantized linear (whole groups), or None."""
    quant = scale_of(linear)
    if quant is None:
        return None
    scale, bits = quant
    group = linear.weight.shape[1] // scale.shape[1]
    return scale[:out_features, : in_features // group], bits
