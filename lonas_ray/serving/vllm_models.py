"""vLLM model classes of lonas-ray's per-layer exports, built from vLLM's own layers.

A ``lonas_<family>`` export is the family's model with two config fields,
``layer_intermediate_sizes`` and ``layer_num_heads`` (``merge/hf_classes.py``);
key/value heads follow the query heads in whole GQA groups and ``head_dim`` is
written out. vLLM's decoder layers read their sizes from the config they are
given, so each layer here gets a view of the model's config with its own three
sizes (``LayerConfig``) and everything else is vLLM's: attention, the paged KV
cache (which sizes every layer's cache from that layer's own attention), fused
qkv / gate-up linears and the weight loader, which shards each checkpoint
tensor by the size of the module it lands in. Skipped blocks are already gone
from the export, whose layers are renumbered.

Qwen2 is served through the Llama classes: vLLM's Qwen2 attention derives the
head size from the head count, which a pruned layer breaks, while its Llama
attention honours ``head_dim`` and takes q/k/v biases (``qkv_bias``). Qwen3 keeps
its own layers (query/key norms); its causal-LM class names its model class
directly, so that name is pointed at the per-layer model while it is built.
"""

from __future__ import annotations

import contextlib
from typing import Any

from vllm.model_executor.models import qwen3
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralDecoderLayer, MistralForCausalLM
from vllm.model_executor.models.utils import extract_layer_index


class LayerConfig:
    """The model's config as one decoder layer sees it: that layer's MLP width and head counts."""

    def __init__(self, config: Any, index: int, **extra: Any):
        group = config.num_attention_heads // config.num_key_value_heads
        own = dict(extra)
        if getattr(config, "layer_intermediate_sizes", None) is not None:
            own["intermediate_size"] = config.layer_intermediate_sizes[index]
        if getattr(config, "layer_num_heads", None) is not None:
            heads = config.layer_num_heads[index]
            own.update(num_attention_heads=heads, num_key_value_heads=heads // group)
        self.__dict__.update(_config=config, _own=own)

    def __getattr__(self, name: str) -> Any:
        own = self.__dict__["_own"]
        return own[name] if name in own else getattr(self.__dict__["_config"], name)


def _layer_class(base: type, **extra: Any) -> type:
    """``base`` (a vLLM decoder layer taking ``config=``) built from its own layer's sizes."""

    def __init__(self, vllm_config, prefix: str = "", config=None, **kwargs):
        config = config or vllm_config.model_config.hf_config
        base.__init__(self, vllm_config=vllm_config, prefix=prefix,
                      config=LayerConfig(config, extract_layer_index(prefix), **extra), **kwargs)

    return type(f"Lonas{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__})


def _model_class(name: str, base: type, layer: type) -> type:
    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, layer_type=layer)

    return type(name, (base,), {"__init__": __init__, "__module__": __name__})


LonasLlamaForCausalLM = _model_class("LonasLlamaForCausalLM", LlamaForCausalLM, _layer_class(LlamaDecoderLayer))
LonasMistralForCausalLM = _model_class("LonasMistralForCausalLM", MistralForCausalLM,
                                       _layer_class(MistralDecoderLayer))
LonasQwen2ForCausalLM = _model_class("LonasQwen2ForCausalLM", LlamaForCausalLM,
                                     _layer_class(LlamaDecoderLayer, qkv_bias=True, attention_bias=False))


class LonasQwen3DecoderLayer(qwen3.Qwen3DecoderLayer):
    def __init__(self, config, cache_config=None, quant_config=None, prefix: str = "", **kwargs):
        super().__init__(LayerConfig(config, extract_layer_index(prefix)), cache_config, quant_config, prefix, **kwargs)


class LonasQwen3Model(qwen3.Qwen3Model):
    decoder_layer_type = LonasQwen3DecoderLayer


@contextlib.contextmanager
def _qwen3_model_is(cls: type):
    """``Qwen3ForCausalLM.__init__`` builds ``qwen3.Qwen3Model`` by its module-level name: point it at ``cls``."""
    original = qwen3.Qwen3Model
    qwen3.Qwen3Model = cls
    try:
        yield
    finally:
        qwen3.Qwen3Model = original


class LonasQwen3ForCausalLM(qwen3.Qwen3ForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        with _qwen3_model_is(LonasQwen3Model):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
