"""Importance: reordering computes the same function, sorts the scores, and puts the channels that matter first."""

import pytest
import torch

from helpers import input_ids, logits_of, randomize_adapters, tiny_model
from lonas_ray.elastic.importance import Importance, reorder, score
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.space import SpaceSpec

SPACE = {
    "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
             "r_max": 8, "rank_choices": [8, 4]},
    "mlp": {"choices": [0.25]},
    "heads": {"choices": [2]},
}
METHODS = ["grad", "activation"]


def make(family="llama", seed=0):
    base = tiny_model(family, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith("bias"):  # qwen2 initialises its q/k/v biases at zero: make them matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    supernet = SuperNetwork(base, SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, seed=seed + 1)
    return supernet


def batch():
    return {"input_ids": input_ids(4, 16, seed=5)}


def assert_descending(t: torch.Tensor, tol: float) -> None:
    assert bool((t[:-1] >= t[1:] - tol).all()), t


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_reorder_leaves_the_maximal_network_unchanged(family, method):
    supernet = make(family)
    ids = input_ids()
    before = logits_of(supernet, ids)
    imp = score(supernet, batch(), method)
    assert [t.shape for t in imp.mlp] == [(128,)] * 4 and [t.shape for t in imp.heads] == [(2,)] * 4
    assert all(bool((t >= 0).all()) and t.sum() > 0 for t in imp.mlp + imp.heads)
    perms = reorder(supernet, imp)
    assert all(sorted(p) == list(range(128)) for p in perms["mlp"])
    assert all(sorted(p) == [0, 1] for p in perms["heads"])
    assert any(p != list(range(128)) for p in perms["mlp"])  # something did move
    torch.testing.assert_close(logits_of(supernet, ids), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_scores_are_descending_after_reorder(method):
    supernet = make("qwen2")
    old = score(supernet, batch(), method)
    perms = reorder(supernet, old)
    new = score(supernet, batch(), method)
    for i in range(4):
        for kind, order in (("mlp", perms["mlp"][i]), ("heads", perms["heads"][i])):
            before, after = getattr(old, kind)[i], getattr(new, kind)[i]
            tol = 1e-4 * float(before.max())
            torch.testing.assert_close(after, before[order], rtol=1e-4, atol=tol)
            assert_descending(after, tol)
    # a second reorder by the new scores changes (almost) nothing
    again = reorder(supernet, new)
    assert all(p[:8] == list(range(8)) for p in again["mlp"])


def test_unknown_method_is_rejected():
    supernet = make()
    with pytest.raises(ValueError, match="unknown importance method 'magic'; choose one of grad, activation"):
        score(supernet, batch(), "magic")


@pytest.mark.parametrize("method", METHODS)
def test_score_restores_the_active_subnetwork_and_the_frozen_base(method):
    supernet = make()
    cfg = supernet.space.minimal()
    supernet.activate(cfg)
    score(supernet, batch(), method)
    assert supernet.active_config == cfg
    adapters = {id(p) for p in supernet.adapter_parameters()}
    for name, p in supernet.named_parameters():
        assert p.requires_grad == (id(p) in adapters), name
        assert p.grad is None, name  # scoring is a measurement: it leaves no gradients behind


def test_importance_json_round_trip():
    imp = score(make(), batch(), "activation")
    back = Importance.from_dict(imp.to_dict())
    assert all(torch.allclose(a, b) for a, b in zip(back.mlp + back.heads, imp.mlp + imp.heads))


IMPORTANT = [40, 77, 100, 120]  # all outside the first 32 channels, which is what mlp=0.25 keeps


def boost(supernet, method):
    """Make channels IMPORTANT of every layer (and GQA group 1) matter far more than the rest.

    ``grad`` sees it through the weights a channel feeds (down_proj columns, o_proj columns);
    ``activation`` measures the channel's own output, so the boost goes into up_proj / v_proj rows.
    """
    hd = supernet.shape.head_dim
    with torch.no_grad():
        for i in range(4):
            block = supernet.block(i)
            if method == "grad":
                block.mlp.down_proj.base_layer.weight[:, IMPORTANT] *= 100
                block.self_attn.o_proj.base_layer.weight[:, 2 * hd:] *= 100  # query heads 2, 3 = group 1
            else:
                block.mlp.up_proj.base_layer.weight[IMPORTANT] *= 100
                block.self_attn.v_proj.base_layer.weight[hd:] *= 100  # kv head 1 = group 1


@pytest.mark.parametrize("method", METHODS)
def test_important_channels_and_heads_end_up_first(method):
    reordered, plain = make(), make()
    for s in (reordered, plain):
        boost(s, method)
    ids = input_ids()
    full = logits_of(plain, ids)
    perms = reorder(reordered, score(reordered, batch(), method))
    for i in range(4):
        assert sorted(perms["mlp"][i][:4]) == IMPORTANT
        assert perms["heads"][i] == [1, 0]
        # the boosted rows / columns physically moved to the front
        block = reordered.block(i)
        if method == "grad":
            norms = block.mlp.down_proj.base_layer.weight.norm(dim=0)
        else:
            norms = block.mlp.up_proj.base_layer.weight.norm(dim=1)
        assert norms[:4].min() > 10 * norms[4:].max()
    # keeping "the first k" now keeps what matters: the small sub-network stays closer to the full one
    small = {**plain.space.maximal(), **{f"mlp.{i}": 32 for i in range(4)}, **{f"heads.{i}": 2 for i in range(4)}}
    with plain.activated(small):
        err_plain = (logits_of(plain, ids) - full).abs().mean()
    with reordered.activated(small):
        err_reordered = (logits_of(reordered, ids) - full).abs().mean()
    assert err_reordered < 0.5 * err_plain, (float(err_reordered), float(err_plain))
