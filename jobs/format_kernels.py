"""Run an extracted INT4 or 2:4 sub-network on the GPU kernels PyTorch itself ships, to time what the format can give.

transformers serves both exports densely: the 2:4 checkpoint is ordinary bf16 with
zeros, and the compressed-tensors INT4 checkpoint is unpacked to bf16 on its first
forward. So the speed a format can buy is only visible with a kernel that reads the
compressed weights. These swaps use PyTorch's own:

* INT4: ``torch._weight_int4pack_mm`` (the "tinygemm" group-wise INT4 x bf16 kernel
  that gpt-fast and torchao's int4 weight-only layout run), fed the export's own
  integers and scales (``q = round(W / s)`` of a linear that ``quant.attach_scale``
  marked), so the numbers are those of the exported model;
* 2:4: ``torch.sparse.to_sparse_semi_structured`` (CUTLASS / cuSPARSELt semi-structured
  sparse matmul).

Benchmark-only (``jobs/bench_scale.py --formats``); each swap checks one layer's
output against the dense weight it replaces and returns that error, so a figure is
never taken from a kernel that computes something else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lonas_ray.quant import quantize, scale_of


class Int4PackLinear(nn.Module):
    """A bias-free linear whose weight is stored as tinygemm's packed INT4 with per-group bf16 scales."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, out_features: int,
                 in_features: int):
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.group_size, self.out_features, self.in_features = group_size, out_features, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch._weight_int4pack_mm(flat.to(torch.bfloat16), self.packed, self.group_size, self.scales_and_zeros)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def _inner_k_tiles(in_features: int) -> int:
    for tiles in (8, 4, 2):
        if in_features % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"tinygemm needs an input width that is a multiple of 32, got {in_features}")


def int4_pack_linear(linear: nn.Linear, high_first: bool = True) -> Int4PackLinear:
    """Pack a quantized linear (``quant.attach_scale``) for tinygemm: unsigned nibbles ``q + 8``, zero point 0."""
    scale, bits = scale_of(linear)
    if bits != 4 or linear.bias is not None:
        raise ValueError("tinygemm packs 4-bit bias-free linears")
    out_f, in_f = linear.weight.shape
    group = in_f // scale.shape[1]
    q = (quantize(linear.weight.detach(), scale, 4).to(torch.int32) + 8).to(torch.uint8)  # [out, in] in 0..15
    pairs = (q[:, ::2] << 4 | q[:, 1::2]) if high_first else (q[:, 1::2] << 4 | q[:, ::2])
    packed = torch._convert_weight_to_int4pack(pairs.contiguous(), _inner_k_tiles(in_f))
    # tinygemm dequantizes (u - 8) * scale + zero per group; [in / group, out, 2] bf16
    sz = torch.stack([scale.t().to(torch.bfloat16), torch.zeros_like(scale.t(), dtype=torch.bfloat16)], dim=2)
    return Int4PackLinear(packed, sz.contiguous(), group, out_f, in_f)


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def _probe(linear: nn.Module) -> torch.Tensor:
    gen = torch.Generator(device=linear.weight.device).manual_seed(0)
    return torch.randn(16, linear.in_features, device=linear.weight.device, dtype=linear.weight.dtype, generator=gen)


def _quantized(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and scale_of(child):
                found.append((parent, name, child))
    return found


def to_int4_tinygemm(model: nn.Module) -> dict:
    """Swap every quantized linear of ``model`` for tinygemm INT4 in place; returns the count and the probe error.

    The nibble order tinygemm expects is found on the first linear (the one whose
    output matches the dense ``q * s`` weight) rather than assumed.
    """
    found = _quantized(model)
    if not found:
        raise ValueError("no quantized linears: compress the base with quantization before extracting")
    parent, name, first = found[0]
    x = _probe(first)
    ref = F.linear(x, first.weight)
    errs = {order: _rel_err(int4_pack_linear(first, order)(x), ref) for order in (True, False)}
    high_first = min(errs, key=errs.get)
    for parent, name, linear in found:
        setattr(parent, name, int4_pack_linear(linear, high_first))
    return {"kernel": "torch._weight_int4pack_mm (tinygemm)", "linears": len(found),
            "probe_rel_err": errs[high_first], "nibbles_high_first": high_first}


def to_semi_structured(model: nn.Module, n: int = 2, m: int = 4) -> dict:
    """Give every 2:4-sparse linear of ``model`` a semi-structured sparse weight in place; returns count and error."""
    from torch.sparse import to_sparse_semi_structured

    done, err = 0, None
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.bias is not None:
            continue
        w = module.weight.detach()
        if w.shape[1] % m or int((w.reshape(w.shape[0], -1, m) != 0).sum(-1).max()) > n:
            continue
        x = _probe(module)
        ref = F.linear(x, w)
        module.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
        if err is None:
            err = _rel_err(module(x), ref)
        done += 1
    if not done:
        raise ValueError("no 2:4-sparse linears: prune the base with pattern 2:4 before extracting")
    return {"kernel": "torch.sparse.to_sparse_semi_structured", "linears": done, "probe_rel_err": err}
