"""The search space: resolving a spec against a model, canonical and random sub-networks, ids, files, errors."""

import json
import math
import random

import pytest
from transformers import AutoModelForCausalLM, GPT2Config

from helpers import run_python, tiny_model
from lonas_ray.config_io import ConfigError
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.families import UnsupportedModelError
from lonas_ray.model_source import tiny_config
from lonas_ray.shape import ModelShape
from lonas_ray.space import SearchSpace, SpaceSpec, SubnetError

SHAPE = ModelShape.from_config(tiny_config("llama"))  # 4 layers, 4 heads / 2 kv heads, MLP 128

SMALL = {  # a space small enough to write its canonical sub-networks out by hand
    "lora": {"target_modules": ["q_proj", "v_proj"], "r_max": 8, "rank_choices": [4, 8, 2],
             "groups": {"qv": ["q_proj", "v_proj"]}},
    "mlp": {"choices": [0.5, 0.25], "layers": [1]},
    "heads": {"per_layer": {2: [2]}},
    "depth": {"skippable": [3]},
}


def resolve(data: dict) -> SearchSpace:
    return SearchSpace.resolve(SpaceSpec.from_dict(data), SHAPE)


# --------------------------------------------------------------------------- resolving


def test_the_tiny_models_have_the_shape_these_tests_assume():
    for family in ("llama", "mistral", "qwen2", "qwen3"):
        shape = ModelShape.from_config(tiny_model(family).config)
        assert shape == ModelShape(family, num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4,
                                   num_kv_heads=2, head_dim=16, vocab_size=256, tie_word_embeddings=False)
        assert shape.heads_per_group == 2


def test_fractions_become_aligned_counts_largest_first_with_the_full_width_added():
    space = resolve({"mlp": {"choices": [0.25, 0.5, 0.3], "align": 16}, "heads": {"choices": [0.5]}})
    # 0.25 * 128 = 32; 0.5 * 128 = 64; 0.3 * 128 = 38.4 -> 2.4 blocks of 16 -> 32 (deduplicated)
    assert [space.dims[f"mlp.{i}"].choices for i in range(4)] == [(128, 64, 32)] * 4
    # 0.5 of 4 heads = 2, a whole GQA group; the full count is always there
    assert [space.dims[f"heads.{i}"].choices for i in range(4)] == [(4, 2)] * 4


def test_integer_counts_are_taken_as_written():
    space = resolve({"mlp": {"choices": [40, 96, 128]}})
    assert space.dims["mlp.0"].choices == (128, 96, 40)


def test_per_layer_overrides_and_layers_select_which_blocks_are_elastic():
    space = resolve({"mlp": {"choices": [0.5], "layers": [0, 1], "per_layer": {2: [100, 50]}},
                     "heads": {"per_layer": {"3": [2]}}})
    mlp = {n: d.choices for n, d in space.dims.items() if d.kind == "mlp"}
    assert mlp == {"mlp.0": (128, 64), "mlp.1": (128, 64), "mlp.2": (128, 100, 50)}
    heads = {n: d.choices for n, d in space.dims.items() if d.kind == "heads"}
    assert heads == {"heads.3": (4, 2)}


def test_rank_groups_and_choices():
    space = resolve({"lora": {"target_modules": ["*_proj"], "rank_choices": [8, 16, 12]}})
    assert space.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layer0 = {d.name: d.modules for d in space.dims.values() if d.layer == 0}
    assert layer0 == {
        "rank.0.qkv": ("q_proj", "k_proj", "v_proj"),
        "rank.0.gate_up": ("gate_proj", "up_proj"),
        "rank.0.o_proj": ("o_proj",),
        "rank.0.down_proj": ("down_proj",),
    }
    assert all(d.choices == (16, 12, 8) for d in space.dims.values())
    assert len(space.dims) == 4 * 4


def test_skippable_layers_are_keep_flags():
    space = resolve({"depth": {"skippable": [1, 2]}})
    keep = {n: d.choices for n, d in space.dims.items() if d.kind == "keep"}
    assert keep == {"keep.1": (True, False), "keep.2": (True, False)}


# --------------------------------------------------------------------------- canonical sub-networks


def test_maximal_minimal_heuristic():
    space = resolve(SMALL)
    assert set(space.dims) == {"rank.0.qv", "rank.1.qv", "rank.2.qv", "rank.3.qv", "mlp.1", "heads.2", "keep.3"}
    assert space.maximal() == {"rank.0.qv": 8, "rank.1.qv": 8, "rank.2.qv": 8, "rank.3.qv": 8,
                               "mlp.1": 128, "heads.2": 4, "keep.3": True}
    assert space.minimal() == {"rank.0.qv": 2, "rank.1.qv": 2, "rank.2.qv": 2, "rank.3.qv": 2,
                               "mlp.1": 32, "heads.2": 2, "keep.3": False}
    # the median of (8, 4, 2) is 4, of (128, 64, 32) is 64; of two choices the lower; blocks are kept
    assert space.heuristic() == {"rank.0.qv": 4, "rank.1.qv": 4, "rank.2.qv": 4, "rank.3.qv": 4,
                                 "mlp.1": 64, "heads.2": 2, "keep.3": True}
    for cfg in (space.maximal(), space.minimal(), space.heuristic()):
        assert space.validate(cfg) is cfg


def test_size_is_the_product_of_the_choice_counts():
    space = resolve(SMALL)
    assert space.size() == 3**4 * 3 * 2 * 2
    big = resolve({"mlp": {"choices": [0.5, 0.25]}, "heads": {"choices": [2]}, "depth": {"skippable": [0, 2]}})
    assert big.size() == math.prod(len(d.choices) for d in big.dims.values()) == 3**12 * 3**4 * 2**4 * 2**2


def test_sample_is_reproducible_by_seed_and_always_in_the_space():
    space = resolve({"mlp": {"choices": [0.5, 0.25]}, "heads": {"choices": [2]}, "depth": {"skippable": [1]}})
    assert space.sample(7) == space.sample(7) == space.sample(random.Random(7))
    samples = [space.sample(seed) for seed in range(300)]
    assert len({SearchSpace.subnet_id(s) for s in samples}) > 290
    for s in samples:
        assert space.validate(s) is s
    # every choice of every dimension turns up
    for name, dim in space.dims.items():
        assert {s[name] for s in samples} == set(dim.choices)
    rng = random.Random(3)
    a, b = space.sample(rng), space.sample(rng)
    assert a != b and space.sample(random.Random(3)) == a


# --------------------------------------------------------------------------- ids and files


KNOWN = {"rank.0.qkv": 16, "mlp.1": 64, "heads.2": 2, "keep.3": False}


def test_subnet_id_is_stable_across_processes_and_key_order():
    here = SearchSpace.subnet_id(KNOWN)
    assert len(here) == 12 and int(here, 16) >= 0
    assert SearchSpace.subnet_id(dict(reversed(list(KNOWN.items())))) == here
    code = ("import sys; from lonas_ray.space import SearchSpace; "
            f"sys.stdout.write(SearchSpace.subnet_id({dict(reversed(list(KNOWN.items())))!r}))")
    assert run_python(code, PYTHONHASHSEED="12345").stdout == here


def test_subnet_id_differs_between_configurations():
    assert SearchSpace.subnet_id(KNOWN) != SearchSpace.subnet_id({**KNOWN, "mlp.1": 32})
    assert SearchSpace.subnet_id(KNOWN) != SearchSpace.subnet_id({**KNOWN, "keep.3": True})
    space = resolve(SMALL)
    configs = {json.dumps(space.sample(s), sort_keys=True) for s in range(200)}
    ids = {SearchSpace.subnet_id(json.loads(c)) for c in configs}
    assert len(ids) == len(configs)


def test_search_space_json_round_trip(tmp_path):
    space = resolve({**SMALL, "lora": {**SMALL["lora"], "alpha": 12.5, "dropout": 0.1}})
    path = tmp_path / "space.json"
    space.save(path)
    loaded = SearchSpace.load(path)
    assert loaded.to_dict() == space.to_dict()
    assert loaded.dims == space.dims and loaded.shape == space.shape
    assert (loaded.r_max, loaded.alpha, loaded.dropout, loaded.target_modules) == (8, 12.5, 0.1, ("q_proj", "v_proj"))
    assert loaded.maximal() == space.maximal() and loaded.size() == space.size()
    assert loaded.sample(5) == space.sample(5)
    assert loaded.dims["keep.3"].choices == (True, False)  # flags stay booleans through JSON
    loaded.validate(space.minimal())
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))).dims == space.dims


def test_space_spec_from_yaml(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "# a commented space file\n"
        "lora:\n"
        "  target_modules: [q_proj, v_proj]  # attention only\n"
        "  r_max: 8\n"
        "  rank_choices: [8, 4]\n"
        "  groups: {}\n"
        "mlp:\n"
        "  choices: [0.5, 48]\n"
        "  per_layer: {1: [64]}\n"
        "depth:\n"
        "  skippable: [2]\n"
    )
    spec = SpaceSpec.from_yaml(path)
    assert spec.lora.target_modules == ["q_proj", "v_proj"] and spec.lora.r_max == 8
    assert spec.lora.alpha == 32.0  # defaults fill what the file leaves out
    assert spec.mlp.choices == [0.5, 48] and spec.mlp.per_layer == {1: [64]}
    assert spec.heads.choices == [] and spec.depth.skippable == [2]
    assert SpaceSpec.from_dict(spec.to_dict()) == spec
    space = SearchSpace.resolve(spec, SHAPE)
    assert space.dims["mlp.0"].choices == (128, 64, 48) and space.dims["mlp.1"].choices == (128, 64)
    assert space.dims["rank.0.q_proj"].choices == (8, 4)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lora": {"target_modules": ["q_proj", "qq_proj"]}}, "unknown module pattern 'qq_proj'"),
        ({"lora": {"groups": {"attn": ["q_prj"]}}}, "unknown module pattern 'q_prj'"),
        ({"lora": {"r_max": 8, "rank_choices": [8, 12]}}, r"rank_choices \[12\].*r_max=8"),
        ({"mlp": {"choices": [1.0, 200]}}, "mlp choice 200 for layer 0 is larger than the layer \\(128\\)"),
        ({"mlp": {"per_layer": {1: [64, 129]}}}, "mlp choice 129 for layer 1 is larger than the layer"),
        ({"mlp": {"choices": [1.5]}}, "float above 1"),
        ({"heads": {"choices": [3]}}, "heads choice 3 for layer 0 breaks GQA.*multiples of 2"),
        ({"heads": {"choices": [8]}}, "heads choice 8 .*larger than the layer \\(4\\)"),
        ({"depth": {"skippable": [4]}}, "depth.skippable: layer 4 does not exist.*4 layers"),
        ({"mlp": {"per_layer": {-1: [64]}}}, "mlp.per_layer: layer -1 does not exist"),
        ({"depth": {"skippable": [0, 1, 2, 3]}}, "every layer.*at least one decoder block"),
        ({"lora": {"groups": {"a": ["q_proj"], "b": ["q_proj", "k_proj"]}}}, "more than one group"),
    ],
)
def test_bad_specs_fail_naming_the_problem(data, message):
    with pytest.raises(ConfigError, match=message):
        resolve(data)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mpl": {"choices": [0.5]}}, "unknown key.*'mpl' \\(did you mean 'mlp'\\?\\)"),
        ({"lora": {"rank_choice": [8]}}, "space.lora: unknown key.*'rank_choice' \\(did you mean 'rank_choices'\\?\\)"),
        ({"depth": {"skipable": [1]}}, "did you mean 'skippable'"),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(data, message):
    with pytest.raises(ConfigError, match=message):
        SpaceSpec.from_dict(data)


def test_unknown_yaml_key_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lora:\n  r_max: 8\n  rank_choices: [8]\nheads:\n  choises: [2]\n")
    with pytest.raises(ConfigError, match=r"space\.yaml: heads: unknown key.*'choises' \(did you mean 'choices'\?\)"):
        SpaceSpec.from_yaml(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mlp.1": 100}, r"mlp.1=100 is not in the space; choices: \[128, 64, 32\]"),
        ({"rank.0.qv": 3}, r"rank.0.qv=3 is not in the space"),
        ({"keep.3": 1}, r"keep.3=1 is not in the space"),  # flags are booleans, not 0/1
        ({"rank.0.qv": True}, r"rank.0.qv=True is not in the space"),
        ({"mlp.0": 128}, r"unknown dimension\(s\) \['mlp.0'\]"),
    ],
)
def test_out_of_space_configurations_are_rejected(change, message):
    space = resolve(SMALL)
    with pytest.raises(SubnetError, match=message):
        space.validate({**space.maximal(), **change})


def test_configuration_missing_a_dimension_is_rejected():
    space = resolve(SMALL)
    cfg = space.maximal()
    del cfg["heads.2"]
    with pytest.raises(SubnetError, match=r"lacks dimension\(s\) \['heads.2'\]"):
        space.validate(cfg)
    with pytest.raises(SubnetError, match="mapping"):
        space.validate([("heads.2", 4)])


def test_a_float_is_not_an_integer_choice():
    """12.0 == 12, but a float rank/width cannot slice a tensor and hashes to another subnet id."""
    space = resolve({"lora": {"rank_choices": [16, 12]}})
    with pytest.raises(SubnetError, match="rank.0.qkv=12.0 is not in the space"):
        space.validate({**space.maximal(), "rank.0.qkv": 12.0})


def test_unsupported_family_names_the_supported_ones():
    gpt2 = AutoModelForCausalLM.from_config(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0))
    with pytest.raises(UnsupportedModelError,
                       match="'gpt2' is not supported; supported families: llama, mistral, qwen2, qwen3"):
        SuperNetwork(gpt2, SpaceSpec())


def test_space_sized_for_another_model_is_refused():
    space = SearchSpace.resolve(SpaceSpec(), ModelShape.from_config(tiny_config("llama", intermediate_size=96)))
    with pytest.raises(ValueError, match="sized for"):
        SuperNetwork(tiny_model("llama"), space)
