"""EFTNAS-style space generation: width choices follow importance and hit the compute targets."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lonas_ray.elastic.generate import generate_spec, kept_counts, round_up
from lonas_ray.elastic.importance import Importance, reorder, score
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.model_source import tiny_config
from lonas_ray.space import SearchSpace, SpaceSpec


def test_kept_counts_keep_the_global_top_fraction():
    scores = [torch.tensor([10.0, 9.0, 1.0, 0.5]), torch.tensor([8.0, 7.0, 6.0, 5.0])]
    # top 50% of 8 scores = {10, 9, 8, 7}: two channels of each layer
    assert kept_counts(scores, [0.5, 0.75, 1.0]) == [[2, 2], [2, 4], [4, 4]]
    # a layer can keep nothing at a small target
    assert kept_counts([torch.tensor([1.0, 0.0]), torch.tensor([5.0, 4.0])], [0.5]) == [[0, 2]]


def test_round_up_to_units_within_bounds():
    assert [round_up(n, 8, 128) for n in (0, 1, 8, 9, 127, 128)] == [8, 8, 8, 16, 128, 128]


def _importance(shape, weak_layer: int) -> Importance:
    g = torch.Generator().manual_seed(0)
    mlp = [torch.rand(shape.intermediate_size, generator=g) + 1.0 for _ in range(shape.num_layers)]
    mlp[weak_layer] = mlp[weak_layer] * 1e-3
    heads = [torch.rand(shape.num_kv_heads, generator=g) for _ in range(shape.num_layers)]
    return Importance(mlp, heads)


def test_generated_space_has_per_layer_choices_and_a_skippable_weak_layer():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    supernet = SuperNetwork(model, SpaceSpec())
    imp = _importance(supernet.shape, weak_layer=1)
    spec = generate_spec(SpaceSpec(), imp, supernet.shape, n_targets=3, min_ratio=0.5, align=8, skip_below=0.05)
    assert spec.depth.skippable == [1]
    full = supernet.shape.intermediate_size
    for i, choices in spec.mlp.per_layer.items():
        assert choices[0] == full and choices == sorted(choices, reverse=True)
        assert all(c % 8 == 0 and c >= 0.05 * full for c in choices)
    # the weak layer keeps no channel at the smallest target -> only full width stays
    assert spec.mlp.per_layer[1] == [full]
    # at min_ratio 0.5 the strong layers together keep about half of all channels
    space = SearchSpace.resolve(spec, supernet.shape)
    smallest = [min(space.dims[f"mlp.{i}"].choices) for i in range(supernet.shape.num_layers) if i != 1]
    total = supernet.shape.num_layers * full
    assert 0.45 * total <= sum(smallest) <= 0.55 * total + 8 * len(smallest)
    # heads: multiples of the GQA group size, full count included
    group = supernet.shape.heads_per_group
    for choices in spec.heads.per_layer.values():
        assert supernet.shape.num_heads in choices and all(c % group == 0 for c in choices)
    supernet.set_space(spec)
    assert "keep.1" in supernet.space.dims
    supernet.activate(supernet.space.minimal())  # the generated space is usable as is


def test_set_space_after_reorder_keeps_outputs_and_adapters():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval()
    supernet = SuperNetwork(model, SpaceSpec())
    for p in supernet.adapter_parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randint(0, 256, (2, 16))
    ref = supernet(input_ids=x).logits
    imp = score(supernet, {"input_ids": x}, "activation")
    reorder(supernet, imp)
    adapters = {k: v.clone() for k, v in supernet.adapter_state_dict().items()}
    supernet.set_space(generate_spec(SpaceSpec(), imp, supernet.shape, n_targets=2, min_ratio=0.5, align=8))
    out = supernet(input_ids=x).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for k, v in supernet.adapter_state_dict().items():
        assert torch.equal(v, adapters[k])


def test_generation_rejects_bad_arguments_and_lora_changes():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    supernet = SuperNetwork(model, SpaceSpec())
    imp = _importance(supernet.shape, weak_layer=0)
    with pytest.raises(ValueError, match="min_ratio"):
        generate_spec(SpaceSpec(), imp, supernet.shape, min_ratio=0.0)
    with pytest.raises(ValueError, match="n_targets"):
        generate_spec(SpaceSpec(), imp, supernet.shape, n_targets=0)
    other = SpaceSpec.from_dict({"lora": {"r_max": 4, "rank_choices": [4, 2]}})
    with pytest.raises(ValueError, match="keeps the adapters"):
        supernet.set_space(other)
