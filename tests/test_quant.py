"""INT4 bases (SQFT): RTN group scales, QA-SparsePEFT, and one pack-quantized export stock transformers loads."""

import json

import pytest
import torch
from test_sparsity import base_weight, spec
from transformers import AutoModelForCausalLM

from helpers import input_ids, logits_of, randomize_adapters, rel_err, run_python
from lonas_ray.build import build_supernet
from lonas_ray.compress.apply import block_linears
from lonas_ray.config_io import ConfigError
from lonas_ray.merge.save import MANIFEST, save_subnetwork
from lonas_ray.quant import dequantize, fake_quant, quantize, rtn_scales, scale_of

SQFT = {"sparsity": {"method": "wanda", "level": 0.5},
        "quantization": {"enabled": True, "bits": 4, "group_size": 16, "qa": True}}


def test_rtn_round_trip_is_within_half_a_step_and_zero_stays_exactly_zero():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 64, generator=g)
    w[w.abs() < 0.5] = 0.0  # pruned weights
    w[3, :16] = 0.0  # a fully pruned group
    scale = rtn_scales(w, 4, 16)
    q = quantize(w, scale, 4)
    assert q.dtype == torch.int8 and q.min() >= -8 and q.max() <= 7
    back = dequantize(q, scale)
    step = scale.repeat_interleave(16, dim=1)
    assert torch.all((back - w).abs() <= step / 2 + 1e-7)
    assert torch.all(back[w == 0] == 0) and torch.all(q[w == 0] == 0)
    assert torch.equal(quantize(back, scale, 4), q)  # on the grid: quantizing again changes nothing


def test_fake_quant_rounds_forward_and_passes_gradients_straight_through():
    w = torch.randn(4, 32, requires_grad=True)
    scale = rtn_scales(w, 4, 32)
    out = fake_quant(w, scale, 4)
    assert torch.equal(out.detach(), dequantize(quantize(w, scale, 4), scale))
    (out * torch.arange(32.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(32.0).expand(4, 32))


@pytest.fixture(scope="module")
def sqft():
    built = build_supernet(spec(**SQFT))
    randomize_adapters(built.supernet, seed=7)
    return built


def test_the_quantized_base_keeps_every_pruned_weight_at_zero_and_sits_on_its_grid(sqft):
    sparse = block_linears(build_supernet(spec(sparsity=SQFT["sparsity"])).supernet)
    for key, module in block_linears(sqft.supernet).items():
        w = base_weight(module)
        scale, bits = scale_of(module.base_layer)
        assert bits == 4 and scale.shape == (w.shape[0], w.shape[1] // 16)
        assert torch.all(w[base_weight(sparse[key]) == 0] == 0), key
        assert torch.equal(dequantize(quantize(w, scale, 4), scale), w), key
        assert module.qa and module.mask_adapter


def test_qa_training_passes_gradients_to_a_and_b_through_the_rounding(sqft):
    supernet = sqft.supernet
    ids = input_ids()
    with supernet.activated(supernet.space.sample(1)):
        supernet(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in supernet.adapter_parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    for p in supernet.adapter_parameters():
        p.grad = None


def _reloaded(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("which", ["maximal", "sample", "minimal"])
def test_the_reloaded_int4_export_computes_the_training_time_logits(sqft, which, tmp_path):
    supernet, ids = sqft.supernet, input_ids()
    space = supernet.space
    cfg = {"maximal": space.maximal(), "sample": space.sample(3), "minimal": space.minimal()}[which]
    with supernet.activated(cfg):
        trained = logits_of(supernet, ids)
    manifest = save_subnetwork(supernet, cfg, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    assert manifest["compression"]["export"]["group_size"] == 16
    assert manifest["compression"]["sparsity"]["level"] == 0.5
    assert json.loads((tmp_path / "m" / MANIFEST).read_text())["compression"]["quantization"]["qa"] is True
    assert rel_err(logits_of(_reloaded(tmp_path / "m"), ids), trained) < 1e-5


def test_naive_merge_then_quantize_does_not_compute_what_was_trained(tmp_path):
    """Why QA-SparsePEFT exists: without it the INT4 merge rounds the trained delta away."""
    naive = build_supernet(spec(**{**SQFT, "quantization": {**SQFT["quantization"], "qa": False}})).supernet
    randomize_adapters(naive, seed=7)
    ids, cfg = input_ids(), naive.space.maximal()
    with naive.activated(cfg):
        trained = logits_of(naive, ids)
    save_subnetwork(naive, cfg, tmp_path / "naive")
    assert rel_err(logits_of(_reloaded(tmp_path / "naive"), ids), trained) > 1e-2


def test_stock_transformers_loads_a_uniform_int4_export_without_lonas_ray(sqft, tmp_path):
    supernet, ids = sqft.supernet, input_ids()
    cfg = {**supernet.space.maximal(), **{f"mlp.{i}": 64 for i in range(4)}}
    with supernet.activated(cfg):
        trained = logits_of(supernet, ids)
    save_subnetwork(supernet, cfg, tmp_path / "u")
    torch.save({"ids": ids, "trained": trained}, tmp_path / "ref.pt")
    run_python(f"""
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'u')!r}).eval()
assert type(m).__name__ == "LlamaForCausalLM", type(m).__name__
assert not any(k.startswith("lonas_ray") for k in sys.modules)
ref = torch.load({str(tmp_path / 'ref.pt')!r})
with torch.no_grad():
    got = m(input_ids=ref["ids"]).logits.float()
err = float((got - ref["trained"]).abs().max() / ref["trained"].abs().max())
assert err < 1e-5, err
assert m.model.layers[0].mlp.down_proj.weight.shape == (64, 64)
""")


def test_a_group_size_that_does_not_divide_an_input_width_is_refused_before_work():
    with pytest.raises(ConfigError, match=r"group_size 48 does not divide the input width\(s\) \[32, 64, 128\]"):
        build_supernet(spec(quantization={"enabled": True, "group_size": 48}))


def test_qa_without_quantization_is_refused():
    with pytest.raises(ConfigError, match="quantization.qa needs a quantized base"):
        spec(quantization={"qa": True})


def test_quantizing_an_already_quantized_base_is_refused(sqft, tmp_path):
    save_subnetwork(sqft.supernet, sqft.supernet.space.maximal(), tmp_path / "int4")
    source = {"kind": "local", "path": str(tmp_path / "int4")}
    with pytest.raises(ConfigError, match="already quantized"):
        build_supernet(spec(quantization={"enabled": True, "group_size": 16}, model=source))


def test_counts_give_the_int4_exports_exact_tensor_bytes_and_non_zeros(sqft, tmp_path):
    from safetensors.torch import load_file

    from lonas_ray.counting import count_model, count_subnet
    from lonas_ray.merge.extract import extract

    supernet = sqft.supernet
    for seed in range(3):
        cfg = supernet.space.sample(seed)
        counts = count_subnet(supernet, cfg)
        assert counts.nonzero_params == count_model(extract(supernet, cfg)).nonzero_params
        save_subnetwork(supernet, cfg, tmp_path / str(seed))
        tensors = load_file(tmp_path / str(seed) / "model.safetensors")
        stored = sum(t.numel() * t.element_size() for k, t in tensors.items() if not k.endswith("weight_shape"))
        assert counts.weight_bytes == stored
        dense = count_subnet(build_supernet(spec()).supernet, cfg)
        assert counts.weight_bytes < 0.6 * dense.weight_bytes  # INT4 block linears, fp32 embeddings kept
