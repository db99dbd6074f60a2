"""The calibration batch of importance and Wanda: the run's own training examples, tokenized as training does."""

import pytest
import torch

from lonas_ray.build import CALIBRATION_FILE, SupernetSpec, build_supernet, save_prepared
from lonas_ray.calibration import task_batch
from lonas_ray.config_io import ConfigError, from_dict
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.data.spec import DataSpec
from lonas_ray.data.tokenize import build_train_dataset

DATA = {"train": "shipped:arithmetic_3_digit_addition", "format": "generation", "cutoff_len": 64}


def data() -> DataSpec:
    return from_dict(DataSpec, DATA, where="test data")


def spec(**importance) -> SupernetSpec:
    return from_dict(SupernetSpec, {
        "model": {"kind": "tiny"}, "space": {"mlp": {"choices": [1.0, 0.5]}, "heads": {"choices": [1.0, 0.5]}},
        "importance": {"method": "grad", "examples": 6, "max_length": 64, **importance},
        "sparsity": {"method": "wanda", "level": 0.5}}, where="test")


def test_the_task_batch_is_seeded_training_rows_tokenized_exactly_as_training_sees_them():
    tok = byte_tokenizer()
    batch = task_batch(data(), tok, 6, 64, seed=3)
    train = build_train_dataset(data(), tok)
    rows = {tuple(r) for r in train["input_ids"]}
    assert batch["input_ids"].shape[0] == 6
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        real = ids[mask.bool()].tolist()
        assert tuple(real) in rows  # one of the training rows, token for token
        answer = labels[labels != -100]
        assert 0 < len(answer) < len(real)  # the loss is on the answer, as in training
    again = task_batch(data(), tok, 6, 64, seed=3)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    assert not torch.equal(task_batch(data(), tok, 6, 64, seed=4)["input_ids"], batch["input_ids"])


def test_importance_and_wanda_calibrate_on_the_runs_training_data_and_say_so(tmp_path):
    on_task = build_supernet(spec(), data())
    assert on_task.calibration == {
        "importance": "6 training examples of shipped:arithmetic_3_digit_addition (byte tokenizer)",
        "wanda": "6 training examples of shipped:arithmetic_3_digit_addition (byte tokenizer)"}
    without = build_supernet(spec())  # no run data (lonas-ray export): the old batch
    assert "random tokens" in without.calibration["importance"]
    # the batch is what moved the scores and the norms: same seed, same model, different data
    assert any(not torch.allclose(a, b) for a, b in zip(on_task.importance.mlp, without.importance.mlp))
    key = next(iter(on_task.norms.norms))
    assert not torch.allclose(on_task.norms.norms[key], without.norms.norms[key])
    save_prepared(on_task, spec(), tmp_path)
    assert "arithmetic_3_digit_addition" in (tmp_path / CALIBRATION_FILE).read_text()


def test_importance_data_shipped_ignores_the_runs_data():
    forced = build_supernet(spec(data="shipped"), data())
    without = build_supernet(spec())
    assert forced.calibration == without.calibration
    assert all(torch.equal(a, b) for a, b in zip(forced.importance.mlp, without.importance.mlp))


def test_an_unknown_calibration_source_is_a_config_error_that_names_the_choices():
    with pytest.raises(ConfigError, match="importance.data 'eval' is unknown; use one of task, shipped"):
        spec(data="eval")
