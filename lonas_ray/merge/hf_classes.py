"""Config and model classes for exported sub-networks whose layers differ in width.

A sub-network with the same MLP width and head count in every block exports as
the family's stock config. One whose blocks differ (per-layer widths from
EFTNAS-style spaces, or head counts a stock config rejects: transformers 5
refuses ``hidden_size % num_attention_heads != 0`` even with ``head_dim`` set)
needs two extra config fields, ``layer_intermediate_sizes`` and
``layer_num_heads``. These classes add exactly that and nothing else: the model
is the family's own ``*ForCausalLM`` built at full size, whose block linears are
then replaced by smaller ones before weights load. Importing ``lonas_ray``
registers them with ``AutoConfig`` / ``AutoModelForCausalLM`` under the model
types ``lonas_<family>``.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from lonas_ray.families import FAMILIES, Family

PER_LAYER_CLASSES: dict[str, tuple[type, type]] = {}


def _replace_linear(parent: nn.Module, name: str, in_features: int, out_features: int) -> None:
    old = getattr(parent, name)
    new = nn.Linear(in_features, out_features, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, name, new)


def resize_blocks(model: nn.Module, config, family: Family) -> None:
    """Shrink each block's linears to the sizes the per-layer config fields give."""
    layers = model.get_submodule(family.layers)
    hd = config.head_dim
    group = config.num_attention_heads // config.num_key_value_heads
    h = config.hidden_size
    for i, block in enumerate(layers):
        if config.layer_num_heads is not None:
            heads = config.layer_num_heads[i]
            kv = heads // group
            attn = block.get_submodule(family.attn)
            _replace_linear(attn, family.q, h, heads * hd)
            _replace_linear(attn, family.k, h, kv * hd)
            _replace_linear(attn, family.v, h, kv * hd)
            _replace_linear(attn, family.o, heads * hd, h)
        if config.layer_intermediate_sizes is not None:
            width = config.layer_intermediate_sizes[i]
            mlp = block.get_submodule(family.mlp)
            _replace_linear(mlp, family.gate, h, width)
            _replace_linear(mlp, family.up, h, width)
            _replace_linear(mlp, family.down, width, h)


def _make_classes(family: Family) -> tuple[type, type]:
    base_config = CONFIG_MAPPING[family.name]
    base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
    stem = base_model.__name__.removesuffix("ForCausalLM")

    config_cls = type(
        f"Lonas{stem}Config",
        (base_config,),
        {
            "__module__": __name__,
            "__doc__": f"{base_config.__name__} with per-layer MLP widths and head counts.",
            "__annotations__": {"layer_intermediate_sizes": list[int] | None, "layer_num_heads": list[int] | None},
            "model_type": f"lonas_{family.name}",
            "layer_intermediate_sizes": None,
            "layer_num_heads": None,
        },
    )

    def __init__(self, config):
        base_model.__init__(self, config)
        resize_blocks(self, config, family)

    model_cls = type(
        f"Lonas{stem}ForCausalLM",
        (base_model,),
        {
            "__module__": __name__,
            "__doc__": f"{base_model.__name__} whose blocks take their sizes from the per-layer config fields.",
            "config_class": config_cls,
            "__init__": __init__,
        },
    )
    return config_cls, model_cls


def register_all() -> None:
    """Create and register the per-layer classes of every family (idempotent)."""
    for name, family in FAMILIES.items():
        if name in PER_LAYER_CLASSES:
            continue
        config_cls, model_cls = _make_classes(family)
        globals()[config_cls.__name__] = config_cls
        globals()[model_cls.__name__] = model_cls
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
        PER_LAYER_CLASSES[name] = (config_cls, model_cls)


register_all()
