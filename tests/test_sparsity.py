"""Sparse bases (Shears / SQFT): Wanda and magnitude masks, SparsePEFT training and merges that keep the zeros."""

import itertools

import pytest
import torch

from helpers import input_ids, logits_of, randomize_adapters, rel_err
from lonas_ray.build import SupernetSpec, build_supernet, load_prepared, restore_supernet, save_prepared
from lonas_ray.compress.apply import block_linears
from lonas_ray.compress.sparsity import n_m_mask, prune_mask, prune_scores, unstructured_mask
from lonas_ray.compress.spec import SparsitySpec
from lonas_ray.config_io import ConfigError, from_dict
from lonas_ray.elastic.linear import ElasticLinear
from lonas_ray.merge.extract import extract

SPACE = {
    "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
             "r_max": 8, "alpha": 16.0, "rank_choices": [8, 4]},
    "mlp": {"choices": [0.75, 0.5]},
    "heads": {"choices": [2]},
    "depth": {"skippable": [1]},
}


def spec(sparsity=None, quantization=None, space=SPACE, **more) -> SupernetSpec:
    raw = {"model": {"kind": "tiny"}, "space": space, "importance": {"method": "activation", "examples": 4,
                                                                      "max_length": 16}}
    if sparsity is not None:
        raw["sparsity"] = sparsity
    if quantization is not None:
        raw["quantization"] = quantization
    return from_dict(SupernetSpec, {**raw, **more}, where="test")


def base_weight(module):
    return (module.base_layer if isinstance(module, ElasticLinear) else module).weight


# ---- the masks, against brute force


@pytest.mark.parametrize("level", [0.0, 0.3, 0.5, 0.7])
def test_wanda_unstructured_zeroes_round_p_in_per_row_and_keeps_the_highest_scores(level):
    g = torch.Generator().manual_seed(0)
    w, norm = torch.randn(12, 40, generator=g), torch.rand(40, generator=g) + 0.1
    mask = prune_mask(w, norm, SparsitySpec(method="wanda", level=level))
    scores = (w.abs() * norm[None, :]).tolist()
    for row, keep in zip(scores, mask.tolist()):
        assert keep.count(False) == round(level * 40)
        kept = [s for s, k in zip(row, keep) if k]
        pruned = [s for s, k in zip(row, keep) if not k]
        assert not pruned or min(kept) >= max(pruned)  # brute force: no pruned weight outscores a kept one


def test_two_four_keeps_the_two_highest_of_every_four_inputs():
    g = torch.Generator().manual_seed(1)
    w, norm = torch.randn(6, 16, generator=g), torch.rand(16, generator=g) + 0.1
    mask = prune_mask(w, norm, SparsitySpec(method="wanda", pattern="2:4"))
    scores = (w.abs() * norm[None, :]).tolist()
    for r in range(6):
        for start in range(0, 16, 4):
            group = scores[r][start:start + 4]
            best = sorted(range(4), key=lambda j: -group[j])[:2]
            assert [j for j in range(4) if mask[r, start + j]] == sorted(best)


def test_magnitude_ignores_the_norms_and_wanda_does_not():
    g = torch.Generator().manual_seed(2)
    w, norm = torch.randn(8, 32, generator=g), torch.rand(32, generator=g) * 10
    magnitude = prune_mask(w, norm, SparsitySpec(method="magnitude", level=0.5))
    assert torch.equal(magnitude, unstructured_mask(w.abs(), 0.5))
    assert not torch.equal(magnitude, prune_mask(w, norm, SparsitySpec(method="wanda", level=0.5)))


def test_the_mask_moves_with_the_channels():
    """Unstructured Wanda commutes with importance reordering: pruning the permuted weight prunes the same weights."""
    g = torch.Generator().manual_seed(3)
    w, norm = torch.randn(10, 24, generator=g), torch.rand(24, generator=g) + 0.1
    rows, cols = torch.randperm(10, generator=g), torch.randperm(24, generator=g)
    s = SparsitySpec(method="wanda", level=0.5)
    assert torch.equal(prune_mask(w[rows][:, cols], norm[cols], s), prune_mask(w, norm, s)[rows][:, cols])


def test_n_m_rejects_a_width_that_is_not_a_multiple_of_m():
    with pytest.raises(ValueError, match="multiple of 4"):
        n_m_mask(prune_scores(torch.ones(2, 10), None), 2, 4)


# ---- config errors, each before any work


@pytest.mark.parametrize("raw, message", [
    ({"method": "wanda", "level": 1.0}, r"level must be in \[0, 1\)"),
    ({"method": "wanda", "level": -0.1}, r"level must be in \[0, 1\)"),
    ({"method": "wanda"}, "level is required"),
    ({"method": "wanda", "pattern": "4:2"}, "0 < N < M"),
    ({"method": "wanda", "pattern": "blocks"}, "use 'unstructured' or 'N:M'"),
    ({"method": "wanda", "pattern": "2:4", "level": 0.7}, "contradicts pattern 2:4"),
    ({"method": "sparsegpt", "level": 0.5}, "use one of none, wanda, magnitude"),
])
def test_bad_sparsity_sections_are_refused_with_the_key_and_the_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        spec(sparsity=raw)


def test_sparse_peft_with_adapter_dropout_is_refused():
    space = {**SPACE, "lora": {**SPACE["lora"], "dropout": 0.1}}
    with pytest.raises(ConfigError, match="dropout must be 0 with SparsePEFT"):
        spec(sparsity={"method": "wanda", "level": 0.5}, space=space)


def test_a_pattern_that_cannot_cut_the_spaces_widths_is_refused_before_scoring(monkeypatch):
    import lonas_ray.build as build

    monkeypatch.setattr(build, "calibrate", lambda *a, **k: pytest.fail("calibrated before the check"))
    space = {**SPACE, "mlp": {"choices": [0.75, 0.5, 50]}}  # 50 channels: not a multiple of 4
    with pytest.raises(ConfigError, match=r"does not divide the input width\(s\) \[50\]"):
        build_supernet(spec(sparsity={"method": "wanda", "pattern": "2:4"}, space=space))


# ---- the super-network: pruned base, SparsePEFT training, merges


@pytest.fixture(scope="module")
def sparse_built():
    built = build_supernet(spec(sparsity={"method": "wanda", "level": 0.5}))
    randomize_adapters(built.supernet, seed=4)
    return built


def test_build_prunes_every_block_linear_to_the_level(sparse_built):
    linears = block_linears(sparse_built.supernet)
    assert len(linears) == 4 * 7
    for key, module in linears.items():
        w = base_weight(module)
        assert torch.equal((w == 0).sum(1), torch.full((w.shape[0],), round(0.5 * w.shape[1]))), key
        if isinstance(module, ElasticLinear):
            assert module.mask_adapter and not module.qa


def sub_configs(space):
    yield space.maximal()
    yield from (space.sample(seed) for seed in range(4))
    yield space.minimal()


def test_every_merged_weight_has_exactly_the_base_zero_positions(sparse_built):
    supernet = sparse_built.supernet
    configs = list(sub_configs(supernet.space))
    assert len({supernet.space.subnet_id(c) for c in configs}) >= 4
    fam = supernet.family
    for cfg in configs:
        model, plan = extract(supernet, cfg), supernet.plan(cfg)
        layers = model.get_submodule(fam.layers)
        for j, i in enumerate(plan.kept_layers):
            for name, s in plan.layers[i].linears.items():
                src = base_weight(getattr(supernet.block(i).get_submodule(fam.parent_of(name)), name))
                src = src[: s.out_features, : s.in_features]
                got = getattr(layers[j].get_submodule(fam.parent_of(name)), name).weight
                assert torch.equal(got == 0, src == 0), (cfg, i, name)  # count and positions
                assert not torch.equal(got, src)  # the adapter did change the kept weights


def test_sparse_peft_forward_is_the_masked_merge_and_extraction_computes_it(sparse_built):
    supernet, ids = sparse_built.supernet, input_ids()
    for cfg in itertools.islice(sub_configs(supernet.space), 3):
        with supernet.activated(cfg):
            trained = logits_of(supernet, ids)
        assert rel_err(logits_of(extract(supernet, cfg), ids), trained) < 1e-5


def test_sparse_peft_training_steps_keep_the_zero_pattern():
    built = build_supernet(spec(sparsity={"method": "magnitude", "pattern": "2:4"}))
    supernet = built.supernet
    zeros = {k: base_weight(m) == 0 for k, m in block_linears(supernet).items()}
    opt = torch.optim.SGD(supernet.adapter_parameters(), lr=0.5)
    ids = input_ids(length=10)
    for step, cfg in enumerate([supernet.space.maximal(), supernet.space.sample(0), supernet.space.minimal()]):
        supernet.activate(cfg)
        loss = supernet(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 0:  # the maximal uses every adapter: the masked delta passes gradients to every B (A's are 0
            # while B is zero, as in any LoRA)
            assert all(m.lora_B.grad.abs().sum() > 0 for m in supernet.elastic.values() if m.r_max)
        opt.step()
        opt.zero_grad()
    merged = extract(supernet, supernet.space.maximal())
    fam = supernet.family
    for i, layer in enumerate(merged.get_submodule(fam.layers)):
        for name in fam.linear_modules:
            w = getattr(layer.get_submodule(fam.parent_of(name)), name).weight
            assert torch.equal(w == 0, zeros[f"layers.{i}.{name}"])
            assert (w != 0).reshape(w.shape[0], -1, 4).sum(2).max() <= 2  # still 2:4


def test_unmasked_adapters_merge_dense_as_shears_does():
    built = build_supernet(spec(sparsity={"method": "wanda", "level": 0.5, "mask_adapter": False}))
    randomize_adapters(built.supernet, seed=5)
    model = extract(built.supernet, built.supernet.space.maximal())
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q == 0).sum() == 0


def test_restore_rebuilds_the_same_pruned_base_from_the_saved_norms(sparse_built, tmp_path):
    save_prepared(sparse_built, spec(sparsity={"method": "wanda", "level": 0.5}), tmp_path)
    prepared = load_prepared(tmp_path)
    assert prepared.norms is not None
    restored = restore_supernet(*prepared).supernet
    for key, module in block_linears(restored).items():
        assert torch.equal(base_weight(module), base_weight(block_linears(sparse_built.supernet)[key])), key
