"""A frozen base linear with elastic width and an elastic-rank LoRA adapter.

The forward of the active sub-network uses ``W[:out, :in]``, ``A[:r, :in]`` and
``B[:out, :r]``: views of the full tensors, so switching sub-networks copies no
weights. Scaling stays ``alpha / r_max`` for every active rank (Shears/LoNAS),
so a sub-adapter of rank r is exactly the first r components of the super-adapter.
Parameter names follow PEFT (``base_layer``, ``lora_A``, ``lora_B``).

Over a compressed base (``lonas_ray/compress``) two switches change the maths:
``mask_adapter`` (SparsePEFT) multiplies the delta by the base's non-zero mask,
``x @ (W + M * s B A)^T``, so a merge keeps the base's zeros; ``qa``
(QA-SparsePEFT) fake-quantizes that merged weight with the base's own group
scales, so the INT4 merge is exactly what was trained. Both need the delta as a
matrix, so they take the merged-weight path; plain LoRA keeps the low-rank one.
The slice of the mask is the mask of the slice: the mask is the base weight's
non-zeros, read from the same view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lonas_ray.quant import fake_quant, sliced_scale


class ActiveSlice:
    """The slice a module uses now. A plain slotted object, because ``nn.Module.__setattr__``
    costs about a microsecond and activation writes hundreds of these per step."""

    __slots__ = ("out_features", "in_features", "rank")

    def __init__(self, out_features: int, in_features: int, rank: int):
        self.out_features, self.in_features, self.rank = out_features, in_features, rank


def base_linear(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that holds a block linear's frozen weight, wrapped (``ElasticLinear``) or not."""
    return module.base_layer if isinstance(module, ElasticLinear) else module


class ElasticLinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, r_max: int = 0, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"ElasticLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r_max = int(r_max)
        self.scaling = alpha / r_max if r_max else 0.0
        if r_max:
            device = base_layer.weight.device
            self.lora_A = nn.Parameter(torch.empty(r_max, self.in_features, device=device, dtype=torch.float32))
            self.lora_B = nn.Parameter(torch.zeros(self.out_features, r_max, device=device, dtype=torch.float32))
            if device.type != "meta":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default: A random, B zero
        else:
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.active = ActiveSlice(self.out_features, self.in_features, self.r_max)
        self.mask_adapter = False  # SparsePEFT (set by lonas_ray.compress)
        self.qa = False  # QA-SparsePEFT (set by lonas_ray.compress)

    @property
    def is_full_width(self) -> bool:
        a = self.active
        return a.out_features == self.out_features and a.in_features == self.in_features

    def sliced_base(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The base weight and bias of the active slice (views)."""
        o, i = self.active.out_features, self.active.in_features
        bias = self.base_layer.bias
        return self.base_layer.weight[:o, :i], (bias[:o] if bias is not None else None)

    def sliced_adapter(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A[:r, :in], B[:out, :r]) of the active slice, or None when no adapter is active."""
        a = self.active
        r = a.rank if self.r_max else 0
        if not r:
            return None
        return self.lora_A[:r, : a.in_features], self.lora_B[: a.out_features, :r]

    def delta_weight(self, out_features: int, in_features: int, rank: int) -> torch.Tensor | None:
        """``s * B[:o, :r] @ A[:r, :i]`` in fp32, masked by the base's non-zeros under SparsePEFT."""
        if not (self.r_max and rank):
            return None
        delta = (self.lora_B[:out_features, :rank].float() @ self.lora_A[:rank, :in_features].float()) * self.scaling
        if self.mask_adapter:
            delta = delta * (self.base_layer.weight[:out_features, :in_features] != 0)
        return delta

    def merged_weight(self, out_features: int, in_features: int, rank: int, *, merge: bool = True,
                      quantize: bool = True) -> torch.Tensor:
        """The slice's weight with its delta merged (if ``merge``), on the base's INT grid (if quantized and
        ``quantize``), in the base's dtype: the one merge rule that training, search and export share."""
        weight = self.base_layer.weight[:out_features, :in_features]
        delta = self.delta_weight(out_features, in_features, rank) if merge else None
        if delta is None:
            return weight  # a quantized base is stored on its grid already
        merged = weight.float() + delta
        quant = sliced_scale(self.base_layer, out_features, in_features)
        if quantize and quant is not None:
            merged = fake_quant(merged, *quant)
        return merged.to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.active
        if (self.mask_adapter or self.qa) and self.r_max and a.rank:
            weight = self.merged_weight(a.out_features, a.in_features, a.rank, quantize=self.qa)
            bias = self.base_layer.bias
            return F.linear(x, weight, bias[: a.out_features] if bias is not None else None)
        if self.is_full_width:
            y = self.base_layer(x)
        else:
            weight, bias = self.sliced_base()
            y = F.linear(x, weight, bias)
        adapter = self.sliced_adapter()
        if adapter is not None:
            a, b = adapter
            h = self.lora_dropout(x).to(a.dtype)
            y = y + (F.linear(F.linear(h, a), b) * self.scaling).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r_max={self.r_max}, "
            f"active=(out={self.active.out_features}, in={self.active.in_features}, r={self.active.rank})"
            + (", sparse_peft" if self.mask_adapter else "") + (", qa" if self.qa else "")
        )
