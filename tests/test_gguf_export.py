"""GGUF export: per-layer sub-networks as llama.cpp's deci, loaded by llama.cpp itself (the xllamacpp wheel), which
greedily generates what transformers generates from the same export, with the same log-probabilities."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from lonas_ray.build import SupernetSpec, build_supernet
from lonas_ray.config_io import from_dict
from lonas_ray.merge.gguf_export import GGUFExportError, interleave_rope_rows, write_gguf
from lonas_ray.merge.save import save_subnetwork
from lonas_ray.model_source import gguf_tokenizer_pre

pytestmark = pytest.mark.timeout(600)

SPACE = {"lora": {"target_modules": ["q_proj", "v_proj", "up_proj"], "r_max": 8, "rank_choices": [8, 4]},
         "mlp": {"choices": [1.0, 0.75, 0.5], "align": 64}, "heads": {"choices": [1.0, 0.67]}}
PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Water boils at"]


def heterogeneous(space) -> dict:
    """Per-layer MLP widths and head counts that differ, and two blocks skipped."""
    cfg = space.maximal()
    for i in range(space.shape.num_layers):
        if f"mlp.{i}" in cfg:
            choices = space.dims[f"mlp.{i}"].choices
            cfg[f"mlp.{i}"] = choices[i % len(choices)]
        if f"heads.{i}" in cfg:
            cfg[f"heads.{i}"] = space.dims[f"heads.{i}"].choices[(i // 2) % 2]
    for k in [k for k in cfg if k.startswith("keep.")]:
        cfg[k] = False
    return space.validate(cfg)


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory):
    """A heterogeneous SmolLM2-135M sub-network, exported with its GGUF (f32, so llama.cpp's figures are exact)."""
    spec = from_dict(SupernetSpec, {"model": {"kind": "smollm2"}, "space": {**SPACE, "depth": {"skippable": [14, 25]}},
                                    "importance": {"method": "activation"}}, where="supernet")
    built = build_supernet(spec)
    out = tmp_path_factory.mktemp("gguf") / "sub"
    config = heterogeneous(built.supernet.space)
    manifest = save_subnetwork(built.supernet, config, out, tokenizer=built.tokenizer,
                               gguf={"pre": gguf_tokenizer_pre(spec.model), "dtype": "f32"})
    return out, manifest, config


def test_query_and_key_rows_move_from_rotate_half_to_interleaved_pairs_per_head():
    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # two heads of dimension 4: rows 0-3 and 4-7
    assert interleave_rope_rows(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_a_per_layer_export_is_written_as_deci_with_every_layers_shape_and_the_tokenizer(smollm2_export):
    import gguf

    out, manifest, config = smollm2_export
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "lonas_llama" and hf["num_hidden_layers"] == 28  # two blocks skipped
    assert manifest["gguf"] == {"file": "model.gguf", "bytes": (out / "model.gguf").stat().st_size,
                                "pre": "smollm", "dtype": "f32"}
    reader = gguf.GGUFReader(out / "model.gguf")

    def field(key):
        return reader.get_field(key).contents()

    assert field("general.architecture") == "deci" and field("deci.block_count") == 28
    assert field("deci.feed_forward_length") == hf["layer_intermediate_sizes"]
    assert field("deci.attention.head_count") == hf["layer_num_heads"]
    assert field("deci.attention.head_count_kv") == [h // 3 for h in hf["layer_num_heads"]]  # 3 query heads per kv
    assert len(set(hf["layer_intermediate_sizes"])) == 3 and len(set(hf["layer_num_heads"])) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied to token_embd, as in the source
    for i, (ff, h) in enumerate(zip(hf["layer_intermediate_sizes"], hf["layer_num_heads"])):
        assert tuple(tensors[f"blk.{i}.ffn_up.weight"].shape) == (576, ff)  # GGUF lists (columns, rows)
        assert tuple(tensors[f"blk.{i}.attn_q.weight"].shape) == (576, 64 * h)
        assert tuple(tensors[f"blk.{i}.attn_k.weight"].shape) == (576, 64 * h // 3)
    # the tokenizer llama.cpp needs, equal to what the shipped SmolLM2 GGUF holds
    from lonas_ray.model_source import smollm2_gguf_path

    source = gguf.GGUFReader(smollm2_gguf_path())
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert field(key) == source.get_field(key).contents(), key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llama_cpp_generates_what_transformers_generates_from_the_same_export(smollm2_export):
    import xllamacpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = smollm2_export
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    params = xllamacpp.CommonParams()
    params.model.path = str(out / "model.gguf")
    params.n_ctx, params.n_predict, params.n_parallel = 128, 8, 1
    params.cpuparams.n_threads = 2
    params.sampling.temp, params.sampling.top_k = 0.0, 1
    params.port = free_port()  # its HTTP side listens on 127.0.0.1 (xllamacpp's default hostnames)
    server = xllamacpp.Server(params)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=8, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        want = gen.sequences[0, ids.shape[1]:].tolist()
        want_logprobs = [float(torch.log_softmax(s[0], -1)[t]) for s, t in zip(gen.scores, want)]
        got = server.handle_completions({"prompt": ids[0].tolist(), "max_tokens": 8, "temperature": 0.0, "top_k": 1,
                                         "n_probs": 1})["choices"][0]
        got_ids = [t["id"] for t in got["logprobs"]["content"]]
        assert got_ids == want, (prompt, tokenizer.decode(want), got["text"])
        assert got["text"] == tokenizer.decode(want)
        # fp32 weights on both sides; llama.cpp's own kernels (f16 KV cache, fused attention) drift by up to
        # 0.004 over 8 tokens here, where a mis-mapped tensor (a permutation, a swapped layer) moves them by ~1
        np.testing.assert_allclose([t["logprob"] for t in got["logprobs"]["content"]], want_logprobs, atol=1e-2)


def test_families_llama_cpp_cannot_load_per_layer_are_refused_before_anything_is_written(tmp_path):
    spec = from_dict(SupernetSpec, {"model": {"kind": "tiny", "family": "qwen3"}, "space": SPACE,
                                    "importance": {"enabled": False}}, where="supernet")
    supernet = build_supernet(spec).supernet
    with pytest.raises(GGUFExportError, match="GGUF export covers Llama and Mistral sub-networks; this model is "
                                              "'qwen3'.*leave 'gguf' out of export.formats"):
        save_subnetwork(supernet, supernet.space.maximal(), tmp_path / "m", gguf={"pre": None, "dtype": "f16"})
    assert not (tmp_path / "m").exists()


def test_an_export_without_a_tokenizer_is_refused_with_the_reason_and_no_file(tmp_path):
    spec = from_dict(SupernetSpec, {"model": {"kind": "tiny"}, "space": SPACE, "importance": {"enabled": False}},
                     where="supernet")
    supernet = build_supernet(spec).supernet
    save_subnetwork(supernet, heterogeneous(supernet.space), tmp_path / "m")
    with pytest.raises(GGUFExportError, match="no tokenizer.json: llama.cpp needs the tokenizer inside the GGUF"):
        write_gguf(tmp_path / "m", tmp_path / "m" / "model.gguf")
    assert sorted(p.name for p in (tmp_path / "m").glob("*.gguf*")) == []
    with pytest.raises(GGUFExportError, match="dtype 'q2' is unknown"):
        write_gguf(tmp_path / "m", tmp_path / "m" / "model.gguf", dtype="q2")
