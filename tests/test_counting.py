"""Counting: predicted parameters, non-zeros and MACs of a sub-network equal what its exported model measures."""

import json

import pytest
import torch
from peft import PeftModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

import lonas_ray  # noqa: F401  (registers the lonas_<family> Auto classes)
from helpers import input_ids, randomize_adapters, tiny_model
from lonas_ray.counting import count_model, count_subnet
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.merge.extract import extract
from lonas_ray.merge.save import MANIFEST, save_subnetwork
from lonas_ray.space import SpaceSpec

SPACE = {
    "lora": {"target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], "r_max": 8,
             "rank_choices": [8, 4, 2]},
    "mlp": {"choices": [0.75, 0.5, 0.25]},
    "heads": {"choices": [2]},
    "depth": {"skippable": [0, 2]},
}

MODELS = {  # name -> (family, config overrides)
    "llama": ("llama", {}),
    "qwen2-bias": ("qwen2", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
}


def make(name, space=SPACE):
    family, overrides = MODELS[name]
    base = tiny_model(family, **overrides)
    return SuperNetwork(base, SpaceSpec.from_dict(space))


def export_reload(supernet, cfg, path, **kwargs):
    extract(supernet, cfg).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_predicted_counts_equal_the_exported_models_counts(name, tmp_path):
    supernet = make(name)
    randomize_adapters(supernet)
    configs = [supernet.space.maximal(), supernet.space.minimal()] + [supernet.space.sample(s) for s in range(8)]
    seen = set()
    for k, cfg in enumerate(configs):
        predicted = count_subnet(supernet, cfg)
        model = export_reload(supernet, cfg, tmp_path / str(k))
        measured = count_model(model)
        assert (predicted.params, predicted.nonzero_params, predicted.macs_per_token) == \
               (measured.params, measured.nonzero_params, measured.macs_per_token), (name, cfg)
        assert predicted.params == sum(p.numel() for p in model.parameters())  # tied weights counted once
        assert measured.adapter_params == 0
        seen.add(predicted.params)
    assert len(seen) > 5  # the configurations really differ in size
    if name == "llama-tied":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_maximal_with_zero_adapters_counts_the_base_model():
    base = tiny_model("qwen2")
    expected = count_model(base)
    supernet = SuperNetwork(base, SpaceSpec.from_dict(SPACE))
    got = count_subnet(supernet, supernet.space.maximal())
    assert (got.params, got.nonzero_params, got.macs_per_token) == \
           (expected.params, expected.nonzero_params, expected.macs_per_token)
    # qwen2 biases start at zero: non-zeros are fewer than parameters
    assert got.nonzero_params < got.params
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3  # q, o; k, v; gate, up, down
    assert got.macs_per_token == 4 * per_layer + 64 * 256
    ranks = 8 * ((64 + 64) * 2 + (64 + 32) + (64 + 128) * 2)  # q, o; v; up, down at r_max
    assert got.adapter_params == 4 * ranks
    assert count_subnet(supernet).params == got.params  # default: the active sub-network


def test_counts_shrink_from_maximal_to_minimal():
    supernet = make("llama")
    space = supernet.space
    big, mid, small = (count_subnet(supernet, c) for c in (space.maximal(), space.heuristic(), space.minimal()))
    assert big.params > mid.params > small.params
    assert big.macs_per_token > mid.macs_per_token > small.macs_per_token
    assert big.adapter_params > mid.adapter_params > small.adapter_params


@pytest.mark.parametrize("name", ["llama", "qwen2-bias"])
def test_macs_per_token_agree_with_torch_flop_counter(name, tmp_path):
    supernet = make(name)
    randomize_adapters(supernet)
    T = 10
    ids = input_ids(1, T)
    head_dim = supernet.shape.head_dim
    for k in range(3):
        cfg = supernet.space.sample(100 + k)
        plan = supernet.plan(cfg)
        model = export_reload(supernet, cfg, tmp_path / str(k), attn_implementation="eager")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(input_ids=ids)
        heads = [plan.layers[i].num_heads for i in plan.kept_layers]
        # eager attention: Q @ K^T and P @ V, each 2 * heads * T * T * head_dim flops (bmm after repeat_kv)
        per_module = counter.get_flop_counts()
        prefix = f"{type(model).__name__}.model.layers"
        for j, h in enumerate(heads):
            ops = {str(op): n for op, n in per_module[f"{prefix}.{j}"].items()}
            assert ops["aten.bmm"] == 2 * (2 * h * T * T * head_dim)
        attention_macs = sum(2 * h * head_dim * T * T for h in heads)
        predicted = count_subnet(supernet, cfg).macs_per_token
        assert counter.get_total_flops() == 2 * (T * predicted + attention_macs), cfg


def test_nonzero_counts_see_a_sparse_base(tmp_path):
    base = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() == 2:  # half the entries of every matrix, random positions
                p.mul_((torch.rand(p.shape, generator=g) > 0.5).float())
    dense = sum(p.numel() for p in base.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in base.parameters())
    assert nonzero < 0.6 * dense
    supernet = SuperNetwork(base, SpaceSpec.from_dict(SPACE))  # lora_B starts at zero: merging adds nothing
    got = count_subnet(supernet, supernet.space.maximal())
    assert (got.params, got.nonzero_params) == (dense, nonzero)
    for k in range(3):
        cfg = supernet.space.sample(k)
        predicted = count_subnet(supernet, cfg)
        measured = count_model(export_reload(supernet, cfg, tmp_path / str(k)))
        assert predicted.nonzero_params == measured.nonzero_params < 0.6 * predicted.params
    # a trained (non-zero) adapter densifies exactly the weights it merges into
    cfg = {**supernet.space.maximal(), **{f"keep.{i}": True for i in (0, 2)}}
    module = supernet.elastic[(1, "q_proj")]
    with torch.no_grad():
        module.lora_B.normal_()
    after = count_subnet(supernet, cfg)
    w = module.base_layer.weight
    assert after.nonzero_params == nonzero + w.numel() - int(torch.count_nonzero(w))
    assert after.nonzero_params == count_model(export_reload(supernet, cfg, tmp_path / "dense")).nonzero_params


def test_manifest_counts_and_adapter_params_match_the_peft_export(tmp_path):
    supernet = make("qwen2-bias")
    randomize_adapters(supernet)
    cfg = {**supernet.space.sample(3), "keep.0": False}
    manifest = save_subnetwork(supernet, cfg, tmp_path / "s", with_adapter=True)
    counts = count_subnet(supernet, cfg)
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["counts"] == manifest["counts"] == counts.to_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert count_model(merged).params == counts.params
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "s" / "peft" / "base")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "s" / "peft" / "adapter")
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert lora == counts.adapter_params > 0
