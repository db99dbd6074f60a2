"""Parameter, non-zero and MAC counts of a sub-network, and of a real model to check them against.

``count_subnet`` reads the super-network's own tensors under a plan, so family
specifics (biases, q/k norms, tied embeddings) are counted as they are, never
from a formula that could forget one. ``count_model`` measures an exported
model; tests require the two to agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lonas_ray.elastic.linear import ElasticLinear
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.families import decoder_layers, family_of
from lonas_ray.quant import scale_of, sliced_scale
from lonas_ray.space import SubnetConfig


@dataclass(frozen=True)
class Counts:
    params: int
    nonzero_params: int
    macs_per_token: int  # linear layers incl. lm_head; attention scores excluded (they grow with context)
    adapter_params: int = 0  # active LoRA parameters before merging (0 for a merged model)
    weight_bytes: int = 0  # the merged model's tensors as exported: INT linears at their bits plus scales

    def to_dict(self) -> dict:
        return asdict(self)


def _bytes(t: torch.Tensor) -> int:
    return _numel(t) * t.element_size()


def _numel(t: torch.Tensor) -> int:
    return getattr(t, "ds_numel", t.numel())  # ZeRO-3 shards keep the full size here


def _nonzero(t: torch.Tensor) -> int:
    return t.numel() if t.device.type == "meta" else int(torch.count_nonzero(t))


def _outside_blocks(model: nn.Module, blocks: list[nn.Module]) -> list[torch.Tensor]:
    """Parameters not inside any decoder block, each once (tied embeddings count once)."""
    inside = {id(p) for b in blocks for p in b.parameters()}
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if id(p) not in inside and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _lm_head_macs(model: nn.Module) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] * head.weight.shape[1] if head is not None else 0


def count_subnet(supernet: SuperNetwork, config: SubnetConfig | None = None) -> Counts:
    """Counts of sub-network ``config`` (default: active) as it will be once extracted and merged."""
    plan = supernet.plan(config)
    blocks = [supernet.block(i) for i in range(supernet.shape.num_layers)]
    params = nonzero = macs = adapter = size = 0
    for p in _outside_blocks(supernet.model, blocks):
        params += _numel(p)
        nonzero += _nonzero(p)
        size += _bytes(p)
    for i in plan.kept_layers:
        linears = plan.layers[i].linears
        for mname, module in blocks[i].named_modules():
            leaf = mname.rsplit(".", 1)[-1]
            if isinstance(module, ElasticLinear):
                s = linears[leaf]
                base = module.base_layer
                n = s.out_features * s.in_features
                params += n
                macs += n
                nonzero += _linear_nonzero(module, s)
                size += _linear_bytes(module, s)
                if base.bias is not None:
                    params += s.out_features
                    nonzero += _nonzero(base.bias[: s.out_features])
                    size += s.out_features * base.bias.element_size()
                if module.r_max and s.rank:
                    adapter += s.rank * (s.in_features + s.out_features)
                continue
            if "base_layer" in mname.split("."):
                continue  # counted through its ElasticLinear
            for p in module.parameters(recurse=False):
                params += _numel(p)
                nonzero += _nonzero(p)
                size += _bytes(p)
            if isinstance(module, nn.Linear):
                macs += module.in_features * module.out_features
                if (quant := scale_of(module)) is not None:  # a quantized linear without an adapter
                    scale, bits = quant
                    size += _numel(module.weight) * bits // 8 + _bytes(scale) - _bytes(module.weight)
    return Counts(params, nonzero, macs + _lm_head_macs(supernet.model), adapter, size)


def _linear_nonzero(module: ElasticLinear, s) -> int:
    """Non-zeros of the merged slice: the base's when nothing is merged, all when a plain LoRA delta is
    (dense), and the merged weight's own under SparsePEFT / QA (which keep or round the base's zeros)."""
    weight = module.base_layer.weight[: s.out_features, : s.in_features]
    if not (module.r_max and s.rank and torch.any(module.lora_B[: s.out_features, : s.rank] != 0)):
        return _nonzero(weight)
    if module.mask_adapter or scale_of(module.base_layer) is not None:
        with torch.no_grad():
            return _nonzero(module.merged_weight(s.out_features, s.in_features, s.rank))
    return s.out_features * s.in_features


def _linear_bytes(module: ElasticLinear, s) -> int:
    """Bytes of the slice's weight as exported: ``bits / 8`` a weight plus one scale a group when quantized."""
    base = module.base_layer
    n = s.out_features * s.in_features
    quant = sliced_scale(base, s.out_features, s.in_features)
    if quant is None:
        return n * base.weight.element_size()
    scale, bits = quant
    return n * bits // 8 + _bytes(scale)


def count_model(model: nn.Module) -> Counts:
    """Measured counts of a plain (exported) model: real tensors, real linear shapes."""
    layers = decoder_layers(model, family_of(model))
    params = nonzero = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params += p.numel()
            nonzero += _nonzero(p)
    macs = sum(m.in_features * m.out_features for layer in layers for m in layer.modules() if isinstance(m, nn.Linear))
    return Counts(params, nonzero, macs + _lm_head_macs(model))
