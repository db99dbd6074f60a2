"""model_source: every source kind builds a model that runs; bad sources fail by name."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from lonas_ray.model_source import TINY_FAMILIES, ModelSource, load_model, smollm2_cache_dir, tiny_config


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_family_builds_and_runs(family):
    model, tokenizer = load_model(ModelSource(kind="tiny", family=family))
    assert tokenizer is None
    assert not model.training
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 7, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_is_seeded_and_overridable():
    a, _ = load_model(ModelSource(kind="tiny", seed=3, overrides={"num_hidden_layers": 2}))
    b, _ = load_model(ModelSource(kind="tiny", seed=3, overrides={"num_hidden_layers": 2}))
    assert a.config.num_hidden_layers == 2 and len(a.model.layers) == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_tiny_family_specifics():
    qwen2, _ = load_model(ModelSource(kind="tiny", family="qwen2"))
    attn = qwen2.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert tiny_config("mistral").sliding_window is None
    assert tiny_config("llama").tie_word_embeddings is False
    assert tiny_config("llama", tie_word_embeddings=True).tie_word_embeddings is True
    assert len(tiny_config("qwen3", num_hidden_layers=3).layer_types) == 3


def test_dtype_applies():
    model, _ = load_model(ModelSource(kind="tiny", dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # a tiny model is created in its dtype (a 7B-shaped one never holds fp32 weights), and is the same random model
    # as in float32, rounded: a run's dtype does not change which base it fine-tunes
    full, _ = load_model(ModelSource(kind="tiny"))
    for (name, p), (_, q) in zip(model.named_parameters(), full.named_parameters(), strict=True):
        assert torch.equal(p, q.to(torch.bfloat16)), name


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(kind="hub"), ["kind", "'hub'", "tiny", "smollm2", "local", "gguf"]),
        (dict(kind="gguf"), ["gguf", "path", ".gguf file"]),
        (dict(kind="gguf", path="/models/qwen/model.safetensors"), ["gguf", ".gguf file", "model.safetensors"]),
        (dict(kind="smollm2", path="/models/x.gguf"), ["path", "'local' and 'gguf'", "remove it"]),
        (dict(kind="tiny", family="gpt2"), ["family", "'gpt2'", "llama", "qwen3"]),
        (dict(kind="tiny", dtype="int8"), ["dtype", "'int8'", "bfloat16"]),
        (dict(kind="local"), ["path", "local"]),
        (dict(kind="smollm2", overrides={"num_hidden_layers": 2}), ["overrides", "tiny"]),
    ],
)
def test_bad_source_names_the_problem(kwargs, named):
    with pytest.raises(ValueError) as err:
        ModelSource(**kwargs)
    for word in named:
        assert word in str(err.value)


def test_tiny_config_rejects_unknown_family():
    with pytest.raises(ValueError, match="'phi'.*llama"):
        tiny_config("phi")


def test_local_round_trip(tmp_path):
    model, _ = load_model(ModelSource(kind="tiny", family="qwen3", seed=1))
    model.save_pretrained(tmp_path)
    again, tokenizer = load_model(ModelSource(kind="local", path=str(tmp_path)))
    assert tokenizer is None  # nothing saved, nothing loaded
    assert type(again) is type(model)
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    half, _ = load_model(ModelSource(kind="local", path=str(tmp_path), dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_local_missing_dir_is_named(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_model(ModelSource(kind="local", path=str(tmp_path / "nope")))


@pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None, reason="transformers needs the gguf package to read GGUF"
)
def test_smollm2_loads_converts_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path))
    model, tokenizer = load_model(ModelSource(kind="smollm2"))
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=1e-3)
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.vocab_size == 49152 and len(tokenizer) == 49152
    assert getattr(config, "quantization_config", None) is None

    cached = smollm2_cache_dir()
    assert cached.parent == tmp_path
    assert (cached / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        first = model(ids).logits
    start = time.perf_counter()
    again, _ = load_model(ModelSource(kind="smollm2"))
    assert time.perf_counter() - start < 5  # from the cache, not the GGUF (about 0.5 s)
    with torch.no_grad():
        assert torch.equal(first, again(ids).logits)
    assert tokenizer.decode(first[0, -1].argmax()).strip() == "Paris"


@pytest.mark.slow
def test_a_gguf_file_is_a_model_source_converted_once_per_node(tmp_path, monkeypatch):
    """kind 'gguf' (a llama.cpp file, e.g. Qwen2.5 from a registry's data packages): dequantized once into the
    cache, keyed by the file, its family and pre-tokenizer read from the file's own metadata."""
    from lonas_ray.model_source import gguf_cache_dir, gguf_tokenizer_pre, smollm2_gguf_path, source_family

    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "SmolLM2.Q4_1.gguf"
    src.symlink_to(smollm2_gguf_path())
    source = ModelSource(kind="gguf", path=str(src))
    assert source_family(source) == "llama" and gguf_tokenizer_pre(source) == "smollm"
    model, tokenizer = load_model(source)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=1e-3)
    cached = gguf_cache_dir(src)
    assert cached.parent == tmp_path / "cache" and (cached / "model.safetensors").is_file()
    assert "Q4_1" in (cached / "SOURCE.md").read_text()  # what the weights were before dequantization
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    start = time.perf_counter()
    again, _ = load_model(source)
    assert time.perf_counter() - start < 5  # from the cache
    with torch.no_grad():
        first = model(ids).logits
        assert torch.equal(first, again(ids).logits)
    assert tokenizer.decode(first[0, -1].argmax()).strip() == "Paris"
