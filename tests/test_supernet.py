"""The super-network: it computes what the base / stock PEFT compute, activation is cheap and exact,
state round-trips."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from helpers import input_ids, logits_of, randomize_adapters, tiny_model
from lonas_ray.elastic.linear import ElasticLinear
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.hf_compat import output_cache, with_cache
from lonas_ray.space import SpaceSpec, SubnetError

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

SPACE = {  # every kind of dimension
    "lora": {"target_modules": TARGETS, "r_max": 8, "alpha": 16.0, "rank_choices": [8, 6, 4]},
    "mlp": {"choices": [0.75, 0.5, 0.25]},
    "heads": {"choices": [2]},
    "depth": {"skippable": [1, 2]},
}


def make(family="llama", space=SPACE, seed=0):
    base = tiny_model(family, seed=seed)
    return base, SuperNetwork(base, SpaceSpec.from_dict(space))


def peft_logits(family, supernet, ids, ranks=None):
    """Logits of stock PEFT LoRA on a fresh copy of the base, with the super-network's adapters copied in.

    ``ranks`` maps (layer, linear) -> active rank; PEFT gets them as rank_pattern and, because the
    super-network scales by alpha / r_max at every rank, alpha_pattern = alpha * r / r_max.
    """
    space = supernet.space
    rank_pattern, alpha_pattern = {}, {}
    for (i, name), r in (ranks or {}).items():
        path = f"model.layers.{i}.{'self_attn' if name in TARGETS[:4] else 'mlp'}.{name}"
        rank_pattern[path] = r
        alpha_pattern[path] = space.alpha * r / space.r_max
    config = LoraConfig(r=space.r_max, lora_alpha=space.alpha, target_modules=list(space.target_modules),
                        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, lora_dropout=0.0)
    peft_model = get_peft_model(tiny_model(family), config).eval()
    with torch.no_grad():
        for (i, name), module in supernet.elastic.items():
            if not module.r_max:
                continue
            target = peft_model.base_model.model.get_submodule(
                f"model.layers.{i}.{'self_attn' if name in TARGETS[:4] else 'mlp'}.{name}")
            r = target.lora_A["default"].weight.shape[0]
            assert r == (ranks or {}).get((i, name), space.r_max)
            target.lora_A["default"].weight.copy_(module.lora_A[:r])
            target.lora_B["default"].weight.copy_(module.lora_B[:, :r])
    return logits_of(peft_model, ids)


# --------------------------------------------------------------------------- what it computes


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_maximal_with_zero_lora_b_is_exactly_the_base_model(family):
    base, ids = tiny_model(family), input_ids()
    expected = logits_of(base, ids)
    supernet = SuperNetwork(base, SpaceSpec.from_dict(SPACE))
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in supernet.elastic.values() if m.r_max)
    assert torch.count_nonzero(next(iter(supernet.elastic.values())).lora_A) > 0  # A random, as in PEFT
    assert torch.equal(logits_of(supernet, ids), expected)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_maximal_with_random_adapters_equals_stock_peft_lora(family):
    _, supernet = make(family)
    randomize_adapters(supernet)
    ids = input_ids()
    got = logits_of(supernet, ids)
    torch.testing.assert_close(got, peft_logits(family, supernet, ids), rtol=1e-5, atol=1e-5)
    assert (got - logits_of(tiny_model(family), ids)).abs().max() > 1e-2  # the adapters do matter


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_smaller_ranks_equal_stock_peft_with_rank_and_alpha_patterns(family):
    _, supernet = make(family, space={**SPACE, "mlp": {}, "heads": {}, "depth": {}})
    randomize_adapters(supernet, seed=1)
    cfg = supernet.space.sample(4)
    assert len(set(cfg.values())) > 1  # ranks differ between groups and layers
    supernet.activate(cfg)
    ranks = {key: m.active.rank for key, m in supernet.elastic.items()}
    ids = input_ids()
    torch.testing.assert_close(logits_of(supernet, ids), peft_logits(family, supernet, ids, ranks),
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- activation


def test_activation_copies_no_weights_and_slices_are_views():
    _, supernet = make()
    randomize_adapters(supernet)
    params_before = {name: (p, p.data_ptr(), p.shape) for name, p in supernet.named_parameters()}
    ids = input_ids()
    for seed in range(5):
        supernet.activate(supernet.space.sample(seed))
        logits_of(supernet, ids)
    supernet.activate(supernet.space.minimal())
    after = dict(supernet.named_parameters())
    assert after.keys() == params_before.keys()
    for name, (p, ptr, shape) in params_before.items():
        assert after[name] is p and p.data_ptr() == ptr and p.shape == shape, name
    module = supernet.elastic[(0, "gate_proj")]
    a = module.active
    assert (a.out_features, a.in_features, a.rank) == (32, 64, 4)
    weight, _ = module.sliced_base()
    lora_a, lora_b = module.sliced_adapter()
    for view, full in ((weight, module.base_layer.weight), (lora_a, module.lora_A), (lora_b, module.lora_B)):
        assert view._base is full and view.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
    assert weight.shape == (32, 64) and lora_a.shape == (4, 64) and lora_b.shape == (32, 4)


def test_forward_uses_only_the_active_slice():
    """Writing garbage outside the active slice changes nothing: the forward reads views of the slice."""
    _, supernet = make()
    randomize_adapters(supernet)
    cfg = {**supernet.space.minimal(), "keep.1": True, "keep.2": True}
    supernet.activate(cfg)
    ids = input_ids()
    before = logits_of(supernet, ids)
    with torch.no_grad():
        for m in supernet.elastic.values():
            a = m.active
            m.base_layer.weight[a.out_features:].fill_(1e3)
            m.base_layer.weight[:, a.in_features:].fill_(1e3)
            if m.base_layer.bias is not None:
                m.base_layer.bias[a.out_features:].fill_(1e3)
            m.lora_A[a.rank:].fill_(1e3)
            m.lora_B[:, a.rank:].fill_(1e3)
    assert torch.equal(logits_of(supernet, ids), before)


def test_bad_activation_raises_and_keeps_the_active_configuration():
    _, supernet = make()
    cfg = supernet.space.sample(1)
    supernet.activate(cfg)
    slices = {k: (m.active.out_features, m.active.in_features, m.active.rank) for k, m in supernet.elastic.items()}
    # the bad value comes last, so a non-validating loop would already have applied the others
    bad = {**supernet.space.minimal(), "mlp.3": 100}
    assert list(bad)[-1] == "mlp.3"
    with pytest.raises(SubnetError, match="mlp.3=100"):
        supernet.activate(bad)
    with pytest.raises(SubnetError, match="unknown dimension"):
        supernet.activate({**supernet.space.minimal(), "mlp.9": 64})
    assert supernet.active_config == cfg
    assert {k: (m.active.out_features, m.active.in_features, m.active.rank)
            for k, m in supernet.elastic.items()} == slices


def test_activated_context_restores_the_previous_configuration():
    _, supernet = make()
    randomize_adapters(supernet)
    ids = input_ids()
    cfg = supernet.space.sample(2)
    supernet.activate(cfg)
    ref = logits_of(supernet, ids)
    with supernet.activated(supernet.space.minimal()) as plan:
        assert supernet.active_config == supernet.space.minimal()
        assert plan == supernet.plan(supernet.space.minimal())
        assert not torch.equal(logits_of(supernet, ids), ref)
    assert supernet.active_config == cfg and torch.equal(logits_of(supernet, ids), ref)
    with pytest.raises(RuntimeError, match="inside"):
        with supernet.activated(supernet.space.maximal()):
            raise RuntimeError("inside")
    assert supernet.active_config == cfg and torch.equal(logits_of(supernet, ids), ref)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_active_slices_follow_the_plan(family):
    _, supernet = make(
        family, space={**SPACE, "lora": {**SPACE["lora"], "target_modules": ["q_proj", "v_proj", "down_proj"]}})
    # o_proj / gate / up / k are sliced (heads, mlp) but carry no adapter
    assert supernet.elastic[(0, "o_proj")].r_max == 0 and supernet.elastic[(0, "q_proj")].r_max == 8
    for seed in range(20):
        cfg = supernet.space.sample(seed)
        supernet.activate(cfg)
        plan = supernet.plan(cfg)
        assert plan == supernet.plan()
        for (i, name), m in supernet.elastic.items():
            s = plan.layers[i].linears[name]
            assert (m.active.out_features, m.active.in_features, m.active.rank) == \
                   (s.out_features, s.in_features, s.rank), (seed, i, name)
        for i, block in supernet.skippable.items():
            assert block.skip == (not plan.layers[i].keep) == (not cfg[f"keep.{i}"])
    # the plan itself: heads keep whole GQA groups, widths and ranks as configured
    cfg = {**supernet.space.maximal(), "heads.1": 2, "mlp.1": 64, "rank.1.qkv": 4}
    layer = supernet.plan(cfg).layers[1]
    assert (layer.num_heads, layer.num_kv_heads, layer.intermediate) == (2, 1, 64)
    assert (layer.linears["q_proj"].out_features, layer.linears["k_proj"].out_features) == (32, 16)
    assert (layer.linears["o_proj"].in_features, layer.linears["down_proj"].in_features) == (32, 64)
    assert (layer.linears["q_proj"].rank, layer.linears["k_proj"].rank) == (4, 0)


# --------------------------------------------------------------------------- depth


def test_a_skipped_layer_is_the_identity():
    _, supernet = make()
    randomize_adapters(supernet)
    ids = input_ids()
    cfg = {**supernet.space.sample(3), "keep.1": True, "keep.2": False}
    supernet.activate(cfg)
    skipped = logits_of(supernet, ids)
    with torch.no_grad():
        for p in supernet.block(2).parameters():
            p.normal_(0, 10.0)
    assert torch.equal(logits_of(supernet, ids), skipped)
    supernet.activate({**cfg, "keep.2": True})
    kept = logits_of(supernet, ids)
    assert torch.isfinite(kept).all() and (kept - skipped).abs().max() > 1e-2


def test_skipping_equals_a_model_without_that_layer():
    base, supernet = make(space={"depth": {"skippable": [2]}})
    randomize_adapters(supernet)
    supernet.activate({**supernet.space.maximal(), "keep.2": False})
    ids = input_ids()
    with torch.no_grad():
        got = base(input_ids=ids, use_cache=False).logits
        shorter = copy.deepcopy(base)
        del shorter.model.layers[2]
        shorter.config.num_hidden_layers = 3
        assert torch.equal(shorter(input_ids=ids, use_cache=False).logits, got)


@pytest.mark.parametrize("skipped", [0, 1])
def test_cached_decoding_with_a_skipped_layer_matches_a_full_forward(skipped):
    """Token-by-token decoding with a KV cache must give the logits of one full forward."""
    base, supernet = make(space={"depth": {"skippable": [0, 1]}})
    supernet.activate({**supernet.space.maximal(), f"keep.{skipped}": False})
    ids = input_ids(1, 10)
    with torch.no_grad():
        full = base(input_ids=ids).logits
        prefix = base(input_ids=ids[:, :6], use_cache=True)
        step = base(input_ids=ids[:, 6:7], use_cache=True, **with_cache(base, output_cache(prefix))).logits
    torch.testing.assert_close(step[0, -1], full[0, 6], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- training and state


def test_only_adapters_are_trainable_and_receive_gradients():
    _, supernet = make()
    randomize_adapters(supernet)
    adapters = {id(p) for p in supernet.adapter_parameters()}
    assert len(adapters) == 4 * 7 * 2
    for name, p in supernet.named_parameters():
        assert p.requires_grad == (id(p) in adapters), name
    supernet.activate({**supernet.space.sample(5), "keep.1": True, "keep.2": False})
    ids = input_ids()
    supernet(input_ids=ids, labels=ids).loss.backward()
    for name, p in supernet.named_parameters():
        if id(p) not in adapters:
            assert p.grad is None, name
    for (i, name), m in supernet.elastic.items():
        a = m.active
        if i == 2:  # skipped block: no gradient at all
            assert m.lora_A.grad is None or torch.count_nonzero(m.lora_A.grad) == 0
            continue
        assert torch.count_nonzero(m.lora_A.grad[: a.rank, : a.in_features]) > 0, (i, name)
        assert torch.count_nonzero(m.lora_B.grad[: a.out_features, : a.rank]) > 0, (i, name)
        # the inactive part of the super-adapter gets no gradient from this sub-network
        assert torch.count_nonzero(m.lora_A.grad[a.rank:]) == 0
        assert torch.count_nonzero(m.lora_B.grad[:, a.rank:]) == 0


def test_adapter_state_dict_round_trip_into_a_fresh_supernetwork():
    _, supernet = make()
    randomize_adapters(supernet, seed=3)
    state = {k: v.clone() for k, v in supernet.adapter_state_dict().items()}
    assert set(state) == {f"layers.{i}.{n}.lora_{ab}" for i in range(4) for n in TARGETS for ab in "AB"}
    assert state["layers.0.q_proj.lora_A"].shape == (8, 64) and state["layers.0.down_proj.lora_B"].shape == (64, 8)
    _, fresh = make()
    ids = input_ids()
    fresh.load_adapter_state_dict(state)
    for seed in range(3):
        cfg = supernet.space.sample(seed)
        supernet.activate(cfg)
        fresh.activate(cfg)
        assert torch.equal(logits_of(fresh, ids), logits_of(supernet, ids))
    # loading copies values: the fresh network does not share the tensors it was given
    state["layers.0.q_proj.lora_A"].zero_()
    assert torch.count_nonzero(fresh.elastic[(0, "q_proj")].lora_A) > 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("layers.3.up_proj.lora_B"), r"missing \['layers.3.up_proj.lora_B'\]"),
        (lambda s: s.update({"layers.9.q_proj.lora_A": torch.zeros(8, 64)}),
         r"unexpected \['layers.9.q_proj.lora_A'\]"),
        (lambda s: s.update({"layers.1.v_proj.lora_B": torch.zeros(32, 4)}),
         r"layers.1.v_proj.lora_B has shape \(32, 4\), expected \(32, 8\)"),
    ],
)
def test_mismatched_adapter_state_raises_and_changes_nothing(mutate, message):
    _, supernet = make()
    randomize_adapters(supernet)
    before = {k: v.clone() for k, v in supernet.adapter_state_dict().items()}
    _, other = make()
    randomize_adapters(other, seed=9)
    state = {k: v.clone() for k, v in other.adapter_state_dict().items()}
    mutate(state)
    with pytest.raises(ValueError, match=message):
        supernet.load_adapter_state_dict(state)
    after = supernet.adapter_state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_elastic_linear_only_wraps_linears():
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        ElasticLinear(torch.nn.Embedding(4, 4), r_max=2)
