"""Renamed transformers APIs on either side of the rename: the KV-cache keyword (5.24) and activation checkpointing."""

from __future__ import annotations

import ast
import inspect
import logging
import warnings
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from helpers import input_ids, randomize_adapters, tiny_model
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.hf_compat import (
    NEW,
    OLD,
    cache_kwarg,
    enable_activation_checkpointing,
    layer_cache,
    output_cache,
    with_cache,
)
from lonas_ray.merge.extract import extract
from lonas_ray.search.latency import greedy_tokens, measure
from lonas_ray.space import SpaceSpec

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = NEW if NEW in inspect.signature(LlamaForCausalLM.forward).parameters else OLD


def test_the_keyword_is_the_one_the_installed_model_declares_even_through_a_wrapper():
    model = tiny_model()
    assert cache_kwarg(model) == INSTALLED
    assert cache_kwarg(model.model) == INSTALLED  # the bare decoder stack
    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict({"lora": {"r_max": 2, "rank_choices": [2]}}))
    assert cache_kwarg(supernet) == INSTALLED  # forward(*args, **kwargs): asked through .model
    with pytest.raises(TypeError, match="neither `cache` nor `past_key_values`"):
        cache_kwarg(torch.nn.Linear(2, 2))


def test_a_cache_round_trips_through_the_helpers():
    model = tiny_model()
    ids = input_ids(1, 6)
    with torch.no_grad():
        first = model(input_ids=ids[:, :5], use_cache=True)
        cache = output_cache(first)
        assert cache is not None and cache.get_seq_length() == 5
        second = model(input_ids=ids[:, 5:], use_cache=True, **with_cache(model, cache))
    assert output_cache(second).get_seq_length() == 6
    assert layer_cache({NEW: cache}) is cache and layer_cache({OLD: cache}) is cache
    assert layer_cache({}) is None


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_our_decoding_paths_raise_no_cache_deprecation_warning():
    """Latency runtimes, a skipped-first-block super-network and extracted models: none may use a deprecated name.

    transformers warns through ``warnings`` (keyword renames, every call) and through
    ``logger.warning_once`` (the output's ``past_key_values`` property, once per process:
    its memo is cleared first so an earlier test cannot hide it).
    """
    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict(
        {"lora": {"r_max": 4, "rank_choices": [4, 2]}, "depth": {"skippable": [0, 1]}}))
    randomize_adapters(supernet)
    config = {**supernet.space.maximal(), "keep.0": False}
    sub = extract(supernet, config)
    supernet.activate(config)
    ids = input_ids(1, 8)
    handler = _Records()
    hf_logger = hf_logging.get_logger("transformers")
    hf_logging.get_logger().warning_once.cache_clear()
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for runtime in ("static", "eager"):
                measure(sub, runtime, batch_size=1, prompt_len=6, new_tokens=3, warmup=0, repeats=1)
                greedy_tokens(sub, ids, 4, runtime)
            greedy_tokens(supernet, ids, 4, "eager")
    finally:
        hf_logger.removeHandler(handler)
    said = [str(w.message) for w in caught] + handler.messages
    assert not [m for m in said if OLD in m or "cache_params" in m], said


def test_activation_checkpointing_is_switched_on_without_a_deprecation_warning():
    model = tiny_model()
    ids = input_ids(2, 8)
    model.train()
    reference = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, model.model.embed_tokens.weight)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enable_activation_checkpointing(model, {"use_reentrant": False})
    assert model.model.gradient_checkpointing is True
    again = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, model.model.embed_tokens.weight)[0]
    torch.testing.assert_close(again, reference)  # recomputing activations changes no gradient


def _deprecated_uses(path: Path) -> list[str]:
    """``past_key_values=`` keywords, ``.past_key_values`` reads and ``["past_key_values"]`` lookups."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg == OLD:
            found.append(f"{path.relative_to(ROOT)}:{node.value.lineno} {OLD}=")
        elif isinstance(node, ast.Attribute) and node.attr == OLD:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{OLD}")
        elif isinstance(node, ast.Constant) and node.value == OLD:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} '{OLD}'")
    return found


def test_only_the_compat_module_names_the_old_keyword():
    """Paths the runtime test does not drive (jobs, future callers) must go through ``hf_compat`` too."""
    files = sorted((ROOT / "lonas_ray").rglob("*.py")) + sorted((ROOT / "jobs").rglob("*.py"))
    assert len(files) > 20
    uses = [u for f in files if f.name != "hf_compat.py" for u in _deprecated_uses(f)]
    uses += [f"{f.relative_to(ROOT)}: gradient_checkpointing_enable" for f in files
             if f.name != "hf_compat.py" and "gradient_checkpointing_enable(" in f.read_text()]
    assert not uses, "use lonas_ray.hf_compat instead:\n" + "\n".join(uses)
