"""The recovery fine-tune: it trains the chosen sub-network's adapter slices, and nothing else."""

from __future__ import annotations

import torch

from helpers import randomize_adapters, tiny_model
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.data.spec import DataSpec
from lonas_ray.data.tokenize import build_train_dataset
from lonas_ray.data.toy import write_toy_task
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.space import SpaceSpec
from lonas_ray.train.recover import recover

SPACE = {"lora": {"r_max": 4, "rank_choices": [4, 2]}, "mlp": {"choices": [1.0, 0.5]}}


def test_recovery_lowers_the_subnetworks_loss_and_touches_only_its_active_slices(tmp_path):
    torch.manual_seed(0)
    supernet = SuperNetwork(tiny_model(initializer_range=0.2), SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, std=0.05)
    spec = DataSpec(train=str(write_toy_task(tmp_path / "toy.jsonl", n=32)), format="instruction", cutoff_len=48)
    tok = byte_tokenizer()
    dataset = build_train_dataset(spec, tok)
    config = {**supernet.space.maximal(), **{n: 2 for n in supernet.space.dims if n.startswith("rank.")}}
    before = {k: v.clone() for k, v in supernet.adapter_state_dict().items()}
    losses = recover(supernet, config, dataset, tok.pad_token_id, steps=30, batch_size=8, lr=1e-2)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])  # it learns
    after = supernet.adapter_state_dict()
    for key, old in before.items():  # rank 2 of r_max 4 is active: lora_A rows / lora_B columns 2..3 stay put
        new = after[key]
        if key.endswith("lora_A"):
            assert torch.equal(new[2:], old[2:]) and not torch.equal(new[:2], old[:2]), key
        else:
            assert torch.equal(new[:, 2:], old[:, 2:]) and not torch.equal(new[:, :2], old[:, :2]), key
    assert not supernet.training  # left ready to extract
