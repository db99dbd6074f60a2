"""vLLM plugin: makes ``vllm serve DIR`` / ``LLM(model=DIR)`` load lonas-ray exports whose layers differ.

vLLM calls ``register`` in every one of its processes (entry point group
``vllm.general_plugins``, declared in pyproject.toml) before it parses a model's
config. Two things are needed, and this does both:

* transformers must know the config's ``model_type`` (``lonas_llama``, ...):
  vLLM reads config.json through ``AutoConfig``; importing
  ``lonas_ray.merge.hf_classes`` registers the ``lonas_<family>`` configs;
* vLLM must know the ``architectures`` entry (``LonasLlamaForCausalLM``, ...):
  each is registered lazily (by module path) so vLLM only imports
  ``vllm_models`` when such a model is served.

Uniform sub-networks export as stock classes and need none of this.
"""

from __future__ import annotations

MODELS = "lonas_ray.serving.vllm_models"
ARCHITECTURES = ("LonasLlamaForCausalLM", "LonasMistralForCausalLM", "LonasQwen2ForCausalLM",
                 "LonasQwen3ForCausalLM")


def register() -> None:
    """Register lonas-ray's per-layer architectures with vLLM (safe to call more than once)."""
    from vllm import ModelRegistry

    import lonas_ray.merge.hf_classes  # noqa: F401  (AutoConfig learns lonas_<family>)

    known = set(ModelRegistry.get_supported_archs())
    for arch in ARCHITECTURES:
        if arch not in known:
            ModelRegistry.register_model(arch, f"{MODELS}:{arch}")
