"""Block influence and depth.auto: the blocks that change their input least become skippable."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_model
from lonas_ray.config_io import ConfigError
from lonas_ray.elastic.block_influence import block_influence, least_influential
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.families import decoder_layers
from lonas_ray.shape import ModelShape
from lonas_ray.space import SearchSpace, SpaceSpec

SPACE = {"lora": {"r_max": 4, "rank_choices": [4, 2]}, "mlp": {"choices": [1.0, 0.5]}}


def batch(pad: int = 3) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, -pad:] = 0  # padding must not count
    return {"input_ids": ids, "attention_mask": mask}


def make_identity(model, i: int) -> None:
    """Block ``i`` adds nothing to the residual stream: its output equals its input."""
    layer = decoder_layers(model)[i]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def test_block_influence_is_one_minus_the_cosine_of_a_blocks_input_and_output_over_real_tokens():
    model = tiny_model()
    make_identity(model, 2)
    b = batch()
    scores = block_influence(model, b)
    assert len(scores) == model.config.num_hidden_layers == 4
    assert scores[2] == pytest.approx(0.0, abs=1e-6) and all(s > 1e-4 for k, s in enumerate(scores) if k != 2)
    # by hand for block 0: the hidden state after the embedding vs after block 0, real tokens only
    with torch.no_grad():
        hidden = model(**b, output_hidden_states=True).hidden_states
    cos = torch.nn.functional.cosine_similarity(hidden[0], hidden[1], dim=-1)[b["attention_mask"].bool()]
    assert scores[0] == pytest.approx(float(1 - cos.mean()), rel=1e-5)
    assert least_influential(scores, 1) == [2]
    assert least_influential([0.3, 0.1, 0.1, 0.5], 2) == [1, 2] and least_influential([0.3, 0.1, 0.1, 0.5], 1) == [2]


def test_depth_auto_makes_the_least_influential_blocks_skippable_beside_the_listed_ones():
    from lonas_ray.build import _skippable_by_influence

    model = tiny_model()
    make_identity(model, 1)
    spec = SpaceSpec.from_dict({**SPACE, "depth": {"skippable": [3], "auto": 1}})
    supernet = SuperNetwork(model, spec)
    assert {d.layer for d in supernet.space.dims.values() if d.kind == "keep"} == {3}
    _skippable_by_influence(supernet, spec, 1, batch())
    assert {d.layer for d in supernet.space.dims.values() if d.kind == "keep"} == {1, 3}
    # the maximal keeps every block; a sub-network may now drop block 1
    assert supernet.space.maximal()["keep.1"] is True and False in supernet.space.dims["keep.1"].choices


def test_depth_auto_is_checked():
    with pytest.raises(ConfigError, match="depth.auto must be an integer >= 0"):
        SpaceSpec.from_dict({**SPACE, "depth": {"auto": -1}})
    shape = ModelShape.from_config(tiny_model().config)
    with pytest.raises(ConfigError, match="at least one must remain"):
        SearchSpace.resolve(SpaceSpec.from_dict({**SPACE, "depth": {"auto": 4}}), shape)


def test_a_prepared_super_network_keeps_the_blocks_depth_auto_chose(tmp_path):
    from lonas_ray.build import SupernetSpec, build_supernet, load_prepared, save_prepared
    from lonas_ray.config_io import from_dict

    spec = from_dict(SupernetSpec, {"model": {"kind": "tiny"}, "space": {**SPACE, "depth": {"auto": 2}},
                                    "importance": {"examples": 4, "max_length": 32}}, where="test")
    built = build_supernet(spec)
    kept = sorted(d.layer for d in built.supernet.space.dims.values() if d.kind == "keep")
    assert len(kept) == 2
    save_prepared(built, spec, tmp_path)
    space = load_prepared(tmp_path)[1]
    assert sorted(d.layer for d in space.dims.values() if d.kind == "keep") == kept


def test_the_block_influence_job_writes_every_blocks_score_and_the_order_depth_auto_uses(tmp_path):
    import json
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "bi.json"
    proc = subprocess.run([sys.executable, "jobs/block_influence.py", "--model", "tiny", "--examples", "4",
                           "--max-length", "32", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    scores = result["scores"]
    assert len(scores) == 4 and all(0.0 <= s <= 2.0 for s in scores)
    assert sorted(result["order_least_first"]) == [0, 1, 2, 3]
    assert result["depth_auto_4"] == least_influential(scores, 4) == [0, 1, 2, 3]
    assert [scores[i] for i in result["order_least_first"]] == sorted(scores)
