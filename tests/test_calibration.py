"""The calibration batch of importance and Wanda: the run's own training examples, tokenized as training does."""

import argparse
import logging
import sys

import pytest
import torch

from helpers import ROOT
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


BENCH_SPACE = {"space": {"mlp": {"choices": [1.0, 0.5]}, "heads": {"choices": [1.0, 0.5]}, "depth": {"auto": 1}},
               "importance": {"method": "grad", "examples": 6, "max_length": 64}}


def test_the_quality_benchmarks_score_importance_and_block_influence_on_the_benchmarked_tasks_examples(caplog):
    """jobs/bench_quality.py (and bench_dims / bench_sparse, through ``build_for_task``) calibrate as ``lonas-ray run``
    does: on the task's own training examples, the log and the JSON naming them, not the shipped social_iqa text."""
    sys.path.insert(0, str(ROOT / "jobs"))
    from bench_quality import add_arguments, build_for_task, load_task

    from lonas_ray.model_source import ModelSource

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--cutoff-len", "64", "--latency-repeats", "0"])
    source = ModelSource(kind="tiny")
    built = {}
    for task in ("arithmetic_3_digit_addition", "intent_recognition"):
        t = load_task(task, args, source, torch.device("cpu"))
        assert t.data.train == f"shipped:{task}"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lonas_ray.build"):
            built[task] = build_for_task(t, source, BENCH_SPACE)
        named = f"6 training examples of shipped:{task} (byte tokenizer)"
        assert built[task].calibration == {"importance": named, "depth": named}
        assert f"reordered channels and heads by grad importance on {named}" in caplog.text
        assert "block influence" in caplog.text and "social_iqa" not in caplog.text
        # exactly what the pipeline scores for a run on that task: prepare_once(cfg.supernet, ..., cfg.data)
        run_data = from_dict(DataSpec, {"train": f"shipped:{task}", "format": t.data.format, "cutoff_len": 64},
                             where="run data")
        run = build_supernet(from_dict(SupernetSpec, {**BENCH_SPACE, "model": {"kind": "tiny"}}, where="run"),
                             run_data)
        assert all(torch.equal(a, b) for a, b in zip(built[task].importance.mlp, run.importance.mlp))
        assert built[task].supernet.space.dims.keys() == run.supernet.space.dims.keys()  # same blocks skippable
    # each task's own examples moved the scores: not one fixed (social_iqa) calibration batch for every task
    supernet = from_dict(SupernetSpec, {**BENCH_SPACE, "model": {"kind": "tiny"}}, where="supernet")
    social = build_supernet(supernet, from_dict(DataSpec, {"train": "shipped:social_iqa", "format": "multiple_choice",
                                                           "cutoff_len": 64}, where="social_iqa"))
    default = build_supernet(supernet)  # no task data (lonas-ray export): the shipped default
    assert "training examples" not in default.calibration["importance"]
    others = [*built.values(), social, default]
    for i, x in enumerate(others):
        for y in others[i + 1:]:
            assert any(not torch.allclose(a, b) for a, b in zip(x.importance.mlp, y.importance.mlp))
