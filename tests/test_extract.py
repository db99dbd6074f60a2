"""Extraction: a sliced, merged, saved and reloaded sub-network computes what the activated super-network computes."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import lonas_ray  # noqa: F401  (registers the lonas_<family> Auto classes)
from helpers import input_ids, logits_of, randomize_adapters, rel_err, run_python, tiny_model
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.merge.extract import extract
from lonas_ray.merge.save import MANIFEST, save_subnetwork
from lonas_ray.space import SearchSpace, SpaceSpec, SubnetError

SPACE = {
    "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
             "r_max": 8, "alpha": 16.0, "rank_choices": [8, 5, 2]},
    "mlp": {"choices": [0.75, 0.5, 0.25]},
    "heads": {"choices": [2]},
    "depth": {"skippable": [1, 2]},
}


def make(family="llama", space=SPACE, seed=0):
    supernet = SuperNetwork(tiny_model(family, seed=seed), SpaceSpec.from_dict(space))
    randomize_adapters(supernet, seed=seed + 1)
    return supernet


def activated_logits(supernet, cfg, ids):
    with supernet.activated(cfg):
        return logits_of(supernet, ids)


def save_and_reload(supernet, cfg, path):
    model = extract(supernet, cfg, merge=True)
    model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_reloaded_random_subnetworks_compute_what_the_supernetwork_computes(family, tmp_path):
    supernet = make(family)
    ids = input_ids()
    archs, configs = set(), [supernet.space.sample(seed) for seed in range(6)]
    # the six cover skipped blocks, pruned heads, narrower MLPs and several ranks
    assert any(not c["keep.1"] for c in configs) and any(c["heads.0"] == 2 for c in configs)
    assert any(c["mlp.2"] < 128 for c in configs) and {c["rank.0.qkv"] for c in configs} == {8, 5, 2}
    for seed, cfg in enumerate(configs):
        ref = activated_logits(supernet, cfg, ids)
        model = save_and_reload(supernet, cfg, tmp_path / str(seed))
        assert model.config.num_hidden_layers == len(supernet.plan(cfg).kept_layers)
        assert rel_err(logits_of(model, ids), ref) < 1e-4, (family, cfg)
        archs.add(type(model).__name__)
    assert archs <= {f"Lonas{stem}ForCausalLM" for stem in ("Llama", "Mistral", "Qwen2", "Qwen3")} | {
        f"{stem}ForCausalLM" for stem in ("Llama", "Mistral", "Qwen2", "Qwen3")}
    # the extracted model shrank: fewer parameters than the base, and the adapters are merged in
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny_model(family).parameters())
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_extract_leaves_the_supernetwork_untouched():
    supernet = make()
    ids = input_ids()
    cfg = supernet.space.sample(2)
    supernet.activate(cfg)
    before = logits_of(supernet, ids)
    state = {k: v.clone() for k, v in supernet.state_dict().items()}
    model = extract(supernet, supernet.space.minimal())
    assert supernet.active_config == cfg and torch.equal(logits_of(supernet, ids), before)
    assert all(torch.equal(v, state[k]) for k, v in supernet.state_dict().items())
    # the export owns its tensors: changing it does not write into the super-network
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert torch.equal(logits_of(supernet, ids), before)


def test_extract_defaults_to_the_active_subnetwork():
    supernet = make()
    ids = input_ids()
    cfg = supernet.space.sample(4)
    supernet.activate(cfg)
    assert rel_err(logits_of(extract(supernet), ids), logits_of(supernet, ids)) < 1e-4


def test_uniform_subnetwork_exports_as_the_stock_class(tmp_path):
    supernet = make()
    ids = input_ids()
    cfg = {**supernet.space.maximal(), **{f"mlp.{i}": 64 for i in range(4)}, "keep.2": False}
    model = save_and_reload(supernet, cfg, tmp_path / "m")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
    assert (model.config.intermediate_size, model.config.num_hidden_layers) == (64, 3)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (64, 64)
    assert rel_err(logits_of(model, ids), activated_logits(supernet, cfg, ids)) < 1e-4
    # the same with half the heads in every layer: fewer query and key/value heads, same head size
    cfg = {**supernet.space.maximal(), **{f"heads.{i}": 2 for i in range(4)}}
    model = save_and_reload(supernet, cfg, tmp_path / "h")
    assert type(model).__name__ == "LlamaForCausalLM"
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (2, 1, 16, 128)
    assert rel_err(logits_of(model, ids), activated_logits(supernet, cfg, ids)) < 1e-4


def test_per_layer_subnetwork_exports_as_the_lonas_class(tmp_path):
    supernet = make()
    ids = input_ids()
    cfg = {**supernet.space.maximal(), "mlp.0": 96, "mlp.3": 32, "heads.1": 2, "keep.2": False}
    model = save_and_reload(supernet, cfg, tmp_path / "m")
    assert type(model).__name__ == "LonasLlamaForCausalLM" and model.config.model_type == "lonas_llama"
    assert model.config.layer_intermediate_sizes == [96, 128, 32]
    assert model.config.layer_num_heads == [4, 2, 4]
    layers = model.model.layers
    assert layers[1].self_attn.q_proj.weight.shape == (32, 64) and layers[1].self_attn.k_proj.weight.shape == (16, 64)
    assert layers[1].self_attn.o_proj.weight.shape == (64, 32) and layers[2].mlp.down_proj.weight.shape == (64, 32)
    assert rel_err(logits_of(model, ids), activated_logits(supernet, cfg, ids)) < 1e-4


def test_uniform_head_count_a_stock_config_rejects_exports_as_the_lonas_class(tmp_path):
    """3 heads of 16 in a hidden size of 64: transformers' stock Llama config refuses 64 % 3 != 0."""
    supernet = SuperNetwork(tiny_model("llama", num_key_value_heads=4),
                            SpaceSpec.from_dict({"heads": {"choices": [3]}}))
    randomize_adapters(supernet)
    ids = input_ids()
    cfg = {**supernet.space.maximal(), **{f"heads.{i}": 3 for i in range(4)}}
    model = save_and_reload(supernet, cfg, tmp_path / "m")
    assert type(model).__name__ == "LonasLlamaForCausalLM" and model.config.layer_num_heads == [3, 3, 3, 3]
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (48, 64)
    assert rel_err(logits_of(model, ids), activated_logits(supernet, cfg, ids)) < 1e-4


def test_head_pruned_qwen2_keeps_its_biases_and_layer_types(tmp_path):
    supernet = make("qwen2")
    ids = input_ids()
    cfg = {**supernet.space.maximal(), "heads.0": 2, "heads.3": 2, "keep.1": False}
    model = save_and_reload(supernet, cfg, tmp_path / "m")
    assert model.config.model_type == "lonas_qwen2" and model.config.layer_num_heads == [2, 4, 2]
    assert len(model.config.layer_types) == 3
    assert model.model.layers[0].self_attn.q_proj.bias.shape == (32,)
    assert model.model.layers[0].self_attn.k_proj.bias.shape == (16,)
    assert rel_err(logits_of(model, ids), activated_logits(supernet, cfg, ids)) < 1e-4


def test_exports_load_in_a_fresh_process_after_import_lonas_ray(tmp_path):
    """Registration of the lonas_<family> classes happens on ``import lonas_ray``, nowhere else."""
    ids = input_ids()
    torch.save(ids, tmp_path / "ids.pt")
    cases = {}
    for family, cfg_change in (("llama", {"mlp.1": 32, "heads.2": 2}), ("qwen3", {"mlp.0": 64, "keep.1": False}),
                               ("mistral", {f"mlp.{i}": 96 for i in range(4)})):
        supernet = make(family)
        cfg = {**supernet.space.maximal(), **cfg_change}
        extract(supernet, cfg).save_pretrained(tmp_path / family)
        cases[family] = activated_logits(supernet, cfg, ids)
    code = (
        "import sys, json, torch, lonas_ray, transformers\n"
        f"d = sys.argv[1] if len(sys.argv) > 1 else {str(tmp_path)!r}\n"
        "ids = torch.load(d + '/ids.pt')\n"
        "types = {}\n"
        "for f in ('llama', 'qwen3', 'mistral'):\n"
        "    m = transformers.AutoModelForCausalLM.from_pretrained(d + '/' + f).eval()\n"
        "    types[f] = type(m).__name__\n"
        "    with torch.no_grad():\n"
        "        torch.save(m(input_ids=ids).logits, d + '/' + f + '.logits.pt')\n"
        "print(json.dumps(types))\n"
    )
    types = json.loads(run_python(code).stdout)
    assert types == {"llama": "LonasLlamaForCausalLM", "qwen3": "LonasQwen3ForCausalLM",
                     "mistral": "MistralForCausalLM"}
    for family, ref in cases.items():
        assert rel_err(torch.load(tmp_path / f"{family}.logits.pt"), ref) < 1e-4, family


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_save_subnetwork_with_a_stock_peft_adapter(family, tmp_path):
    supernet = make(family)
    ids = input_ids()
    cfg = {**supernet.space.sample(11), "keep.1": False, "keep.2": True}
    ref = activated_logits(supernet, cfg, ids)
    out = tmp_path / "subnet"
    manifest = save_subnetwork(supernet, cfg, out, with_adapter=True)
    assert not (tmp_path / "subnet.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet"]
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == manifest
    assert on_disk["subnet_id"] == SearchSpace.subnet_id(cfg) and on_disk["config"] == cfg
    assert on_disk["peft"] == {"base": "peft/base", "adapter": "peft/adapter"}
    # the merged model
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == on_disk["architecture"]
    assert rel_err(logits_of(merged, ids), ref) < 1e-4
    # stock PEFT: the unmerged sliced base plus the adapter
    base = AutoModelForCausalLM.from_pretrained(out / "peft" / "base")
    peft_model = PeftModel.from_pretrained(base, out / "peft" / "adapter").eval()
    assert rel_err(logits_of(peft_model, ids), ref) < 1e-4
    adapter_config = json.loads((out / "peft" / "adapter" / "adapter_config.json").read_text())
    plan = supernet.plan(cfg)
    expected = {}
    for new_index, i in enumerate(plan.kept_layers):  # layer 1 is gone: layers are renumbered 0, 1, 2
        for name, s in plan.layers[i].linears.items():
            parent = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            expected[f"model.layers.{new_index}.{parent}.{name}"] = s.rank
    assert adapter_config["rank_pattern"] == expected
    assert adapter_config["alpha_pattern"] == {k: 16.0 * r / 8 for k, r in expected.items()}
    # the adapter carries exactly the active slices
    lora_a = peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    r = expected["model.layers.0.self_attn.q_proj"]
    assert torch.equal(lora_a, supernet.elastic[(0, "q_proj")].lora_A[:r].detach())


def test_save_subnetwork_replaces_an_older_export(tmp_path):
    supernet = make()
    out = tmp_path / "subnet"
    save_subnetwork(supernet, supernet.space.maximal(), out)
    (out / "stale.txt").write_text("from an older export")
    manifest = save_subnetwork(supernet, supernet.space.minimal(), out)
    assert not (out / "stale.txt").exists() and not (out / "peft").exists()
    assert json.loads((out / MANIFEST).read_text())["subnet_id"] == manifest["subnet_id"] == \
        SearchSpace.subnet_id(supernet.space.minimal())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet"]


def test_failed_save_leaves_nothing_behind(tmp_path):
    """The directory appears whole or not at all; a failure keeps the previous export and leaves no debris."""
    supernet = make()
    out = tmp_path / "subnet"
    save_subnetwork(supernet, supernet.space.maximal(), out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SubnetError):
        save_subnetwork(supernet, {**supernet.space.maximal(), "mlp.0": 7}, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet"]
