"""Slice the active sub-network out physically and merge its adapters.

The exported model is an ordinary Hugging Face model with smaller matrices,
fewer heads and fewer blocks. Its weights are ``W[:o, :i] + (alpha / r_max) *
B[:o, :r] @ A[:r, :i]``, computed in fp32 and stored in the base's dtype, so it
computes what the activated super-network computes. Over a compressed base the
delta is masked (SparsePEFT) and the result put on the base's INT grid, and
each linear of a quantized model carries its group-scale slice for the
INT4 writer (``merge/compressed.py``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from lonas_ray.elastic.linear import ElasticLinear, base_linear
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.families import decoder_layers
from lonas_ray.merge.hf_classes import PER_LAYER_CLASSES
from lonas_ray.plan import LinearSlice, SubnetPlan
from lonas_ray.quant import attach_scale, sliced_scale
from lonas_ray.space import SubnetConfig

log = logging.getLogger(__name__)


def merge_slice(module: nn.Module, s: LinearSlice, merge: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (weight, bias) that linear ``module`` contributes under slice ``s``, adapter merged if asked
    (``ElasticLinear.merged_weight``: masked by the sparse base, on the quantized base's grid)."""
    base = base_linear(module)
    if isinstance(module, ElasticLinear):
        with torch.no_grad():
            weight = module.merged_weight(s.out_features, s.in_features, s.rank, merge=merge)
    else:
        weight = base.weight[: s.out_features, : s.in_features]
    bias = base.bias[: s.out_features] if base.bias is not None else None
    return weight.detach().clone(), (bias.detach().clone() if bias is not None else None)


def _attach_scales(model: nn.Module, supernet: SuperNetwork, plan: SubnetPlan) -> None:
    """Give every linear of the extracted model the slice of its source's group scales (quantized bases)."""
    fam, layers = supernet.family, decoder_layers(model, supernet.family)
    for j, i in enumerate(plan.kept_layers):
        sources = supernet.linears(i)
        for name, s in plan.layers[i].linears.items():
            quant = sliced_scale(base_linear(sources[name]), s.out_features, s.in_features)
            if quant is not None:
                target = getattr(layers[j].get_submodule(fam.parent_of(name)), name)
                attach_scale(target, quant[0].detach().clone(), quant[1])


def export_config(config: PretrainedConfig, plan: SubnetPlan, family: str) -> PretrainedConfig:
    """The config of the sliced model: a stock one when every block has the same shape, else ``lonas_<family>``."""
    kept = plan.kept_layers
    layers = [plan.layers[i] for i in kept]
    widths = [layer.intermediate for layer in layers]
    heads = [layer.num_heads for layer in layers]
    data = config.to_dict()
    for key in ("quantization_config", "auto_map", "architectures", "_name_or_path", "transformers_version"):
        data.pop(key, None)
    data["model_type"] = family
    data["num_hidden_layers"] = len(kept)
    if data.get("layer_types") is not None:
        data["layer_types"] = [config.layer_types[i] for i in kept]
    data["head_dim"] = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if len(set(widths)) == 1 and len(set(heads)) == 1:
        group = config.num_attention_heads // (config.num_key_value_heads or config.num_attention_heads)
        stock = dict(data, intermediate_size=widths[0], num_attention_heads=heads[0],
                     num_key_value_heads=heads[0] // group)
        try:
            return CONFIG_MAPPING[family].from_dict(stock)
        except Exception as exc:  # strict validation, e.g. hidden_size not a multiple of the head count
            log.info("a stock %s config rejects this sub-network (%s); exporting as lonas_%s", family, exc, family)
    config_cls, _ = PER_LAYER_CLASSES[family]
    data.pop("model_type")
    return config_cls.from_dict(dict(data, layer_intermediate_sizes=widths, layer_num_heads=heads))


def _source_tensor(supernet: SuperNetwork, key: str, plan: SubnetPlan, merge: bool) -> torch.Tensor:
    """The tensor of the exported model's state-dict entry ``key``, taken from the super-network."""
    prefix = supernet.family.layers + "."
    if not key.startswith(prefix):
        try:
            return supernet.model.get_parameter(key).detach().clone()
        except AttributeError:
            return supernet.model.get_buffer(key).detach().clone()
    index, rest = key[len(prefix):].split(".", 1)
    source_layer = plan.kept_layers[int(index)]
    block = supernet.block(source_layer)
    module_path, attr = rest.rsplit(".", 1)
    module = block.get_submodule(module_path)
    linear = module_path.rsplit(".", 1)[-1]
    if isinstance(module, (nn.Linear, ElasticLinear)) and linear in plan.layers[source_layer].linears:
        weight, bias = merge_slice(module, plan.layers[source_layer].linears[linear], merge)
        return weight if attr == "weight" else bias
    return getattr(module, attr).detach().clone()


def extract(supernet: SuperNetwork, config: SubnetConfig | None = None, merge: bool = True) -> nn.Module:
    """A standalone Hugging Face model of sub-network ``config`` (default: the active one).

    ``merge=False`` slices the base only (adapters left out): the base that an
    exported PEFT adapter applies to.
    """
    plan = supernet.plan(config)
    new_config = export_config(supernet.model.config, plan, supernet.family.name)
    first = next(supernet.model.parameters())
    with torch.device(first.device):  # build where the super-network lives: no host round trip on GPU
        model = AutoModelForCausalLM.from_config(new_config, dtype=first.dtype)
    state = {key: _source_tensor(supernet, key, plan, merge) for key in model.state_dict()}
    model.load_state_dict(state, strict=True)
    _attach_scales(model, supernet, plan)
    if getattr(supernet.model, "generation_config", None) is not None:
        model.generation_config = supernet.model.generation_config
    return model.eval()
