"""lm-evaluation-harness as an independent judge: it must agree with lonas-ray's scorer example by example."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from helpers import tiny_model
from lonas_ray.crosscheck import cross_check, lm_eval_hits, write_task
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.data.load import load_examples
from lonas_ray.data.spec import DataSpec
from lonas_ray.data.tokenize import build_train_dataset, collate
from lonas_ray.merge.save import align_eos
from lonas_ray.search.config import QualitySpec

pytestmark = pytest.mark.timeout(300)

SUMS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 2), (4, 5), (6, 1)]


def bigbench(path, examples):
    path.write_text(json.dumps({"examples": examples}))
    return str(path)


def save(model, directory):
    """Saved as an export is: with the byte tokenizer and its eos id (``merge.save.align_eos``)."""
    tok = byte_tokenizer()
    align_eos(model, tok)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_multiple_choice_accuracy_agrees_on_every_example(tmp_path):
    """A random tiny model picks right and wrong choices in no pattern: lm-eval must pick the same ones."""
    words = ["red", "green", "blue", "plum", "sand", "ink"]
    examples = [{"input": f"Which word {k}?", "target_scores": {w: int(j == k % 3) for j, w in
                                                                enumerate(words[k % 4: k % 4 + 3])}}
                for k in range(12)]
    path = bigbench(tmp_path / "mc.json", examples)
    spec = DataSpec(train=path, eval=path, format="multiple_choice", cutoff_len=128)
    model, quality = save(tiny_model(seed=3), tmp_path / "m"), QualitySpec(examples=12, final_examples=12)
    verdict = cross_check(model, spec, quality, tmp_path / "task")
    assert verdict.metric == "mc_accuracy" and verdict.lm_eval_metric == "acc" and verdict.examples == 12
    assert verdict.truncated == 0
    assert verdict.agree == 12 and verdict.lm_eval_quality == pytest.approx(verdict.lonas_quality)
    assert 0 < verdict.lonas_quality < 1  # a mix of right and wrong, so agreeing is not trivial
    task = yaml.safe_load((tmp_path / "task" / "lonas_crosscheck.yaml").read_text())
    assert task["output_type"] == "multiple_choice" and task["target_delimiter"] == ""
    # prompts (about 60 bytes with the choices listed) cut to 48 tokens: the verdict says how many were cut
    cut = cross_check(model, DataSpec(train=path, eval=path, format="multiple_choice", cutoff_len=48), quality,
                      tmp_path / "cut")
    assert cut.truncated == 12


def test_exact_match_agrees_on_every_example_of_a_model_that_knows_half(tmp_path):
    """Trained to answer eight sums; the evaluation file marks every other answer as something else."""
    train = bigbench(tmp_path / "train.json", [{"input": f"{a} plus {b}", "target": str(a + b)} for a, b in SUMS])
    shifted = [{"input": f"{a} plus {b}", "target": str(a + b) if k % 2 == 0 else [str(a + b + 1), "none"]}
               for k, (a, b) in enumerate(SUMS)]
    spec = DataSpec(train=train, eval=bigbench(tmp_path / "eval.json", shifted), format="generation", cutoff_len=64)
    tok, model = byte_tokenizer(), tiny_model()
    batch = collate(list(build_train_dataset(spec, tok)), tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    verdict = cross_check(save(model.eval(), tmp_path / "m"), spec,
                          QualitySpec(examples=8, final_examples=8, batch_size=4), tmp_path / "task")
    assert verdict.metric == "exact_match" and verdict.examples == 8
    assert verdict.lonas_quality == 0.5 and verdict.lm_eval_quality == 0.5 and verdict.agree == 8
    # the judge is not a rubber stamp: the same model against answers it never learnt scores nothing
    wrong = load_examples(DataSpec(train=train, eval=bigbench(tmp_path / "none.json", [
        {"input": f"{a} plus {b}", "target": "x"} for a, b in SUMS]), format="generation"), "eval")
    write_task(wrong, "exact_match", tmp_path / "wrong", "lonas_crosscheck", max_gen_toks=5)
    assert lm_eval_hits(tmp_path / "m", tmp_path / "wrong", "lonas_crosscheck", "exact_match",
                        add_bos=False) == [False] * 8


def test_a_metric_without_an_lm_eval_counterpart_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no lm-eval counterpart"):
        write_task([], "answer_token_accuracy", tmp_path, "t")
