"""transformers APIs that were renamed between the releases lonas-ray runs on: one place to speak both.

* The KV cache: transformers 5.24 renamed the cache keyword of every model and
  decoder layer from ``past_key_values`` to ``cache`` (and the output field with
  it); the old name works until 5.40 but warns on every call. The GPU image ships
  5.17. Everything in the package that hands a cache to a model, reads one from
  an output, or receives one in a wrapped decoder layer goes through
  ``cache_kwarg`` / ``with_cache`` / ``output_cache`` / ``layer_cache``.
* Activation checkpointing: ``gradient_checkpointing_enable`` became
  ``activation_checkpointing_enable`` (the old name warns until v6).

The next rename is one edit here.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from torch import nn

NEW, OLD = "cache", "past_key_values"


def cache_kwarg(model: nn.Module) -> str:
    """``"cache"`` if ``model``'s forward takes that keyword, else ``"past_key_values"``.

    Read from the forward's signature (transformers' decorators keep it through
    ``functools.wraps``), so a family that migrates later is still right.
    A wrapper whose forward takes only ``**kwargs`` is asked through ``.model``.
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        params = inspect.signature(type(model).forward).parameters
        if NEW in params:
            return NEW
        if OLD in params:
            return OLD
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    raise TypeError(f"{type(model).__name__}.forward takes neither `{NEW}` nor `{OLD}`: not a cached decoder model")


def with_cache(model: nn.Module, cache: Any) -> dict[str, Any]:
    """Keyword arguments that pass ``cache`` to ``model`` under the name it expects."""
    return {cache_kwarg(model): cache}


def output_cache(output: Any) -> Any:
    """The cache a model returned, without touching the deprecated ``past_key_values`` property."""
    names = {f.name for f in dataclasses.fields(output)}
    return getattr(output, NEW if NEW in names else OLD)


def layer_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a decoder layer was called with, whichever keyword the model's loop used."""
    cache = kwargs.get(NEW)
    return kwargs.get(OLD) if cache is None else cache


def enable_activation_checkpointing(model: nn.Module, checkpoint_kwargs: dict[str, Any]) -> None:
    """Recompute block activations in backward, through whichever name the installed transformers has."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
