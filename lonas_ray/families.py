"""The one table that maps a model family to where its parts live.

Everything that walks a Hugging Face model asks this table instead of testing
``"llama" in name``: adding a Llama-like family is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lonas_ray.config_io import ConfigError


class UnsupportedModelError(ConfigError):
    """The model's family is not in the table, or its layout does not match it."""


@dataclass(frozen=True)
class Family:
    """Module names of a decoder-only family with Llama's block layout."""

    name: str
    layers: str = "model.layers"
    attn: str = "self_attn"
    mlp: str = "mlp"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"

    @property
    def attn_modules(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v, self.o)

    @property
    def mlp_modules(self) -> tuple[str, ...]:
        return (self.gate, self.up, self.down)

    @property
    def linear_modules(self) -> tuple[str, ...]:
        return self.attn_modules + self.mlp_modules

    def parent_of(self, name: str) -> str:
        """The sub-module of a block ('self_attn' or 'mlp') that holds linear ``name``."""
        if name in self.attn_modules:
            return self.attn
        if name in self.mlp_modules:
            return self.mlp
        raise KeyError(name)


FAMILIES: dict[str, Family] = {
    "llama": Family("llama"),
    "mistral": Family("mistral"),
    "qwen2": Family("qwen2"),
    "qwen3": Family("qwen3"),
}


def family_of(model_or_type: nn.Module | str) -> Family:
    """Look up the family of a model (by ``config.model_type``) or of a model type string."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(getattr(model_or_type, "config", None), "model_type", None)
    model_type = str(model_type).removeprefix("lonas_")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model family '{model_type}' is not supported; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as exc:
        raise UnsupportedModelError(f"expected a module at '{dotted}' in {type(root).__name__}: {exc}") from exc


def decoder_layers(model: nn.Module, family: Family | None = None) -> nn.ModuleList:
    """The model's list of decoder blocks."""
    family = family or family_of(model)
    layers = get_submodule(model, family.layers)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(f"'{family.layers}' is a {type(layers).__name__}, expected a ModuleList")
    return layers
