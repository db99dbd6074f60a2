"""Search quality and latency: scores against an independent hand computation, runtimes against generate().

Quality: multiple-choice accuracy / loss and instruction answer-token accuracy / loss of
``lonas_ray.search.quality`` are recomputed here with plain single-row forwards (no padding,
no batching, no sorting) and compared. Latency: every CPU runtime of
``lonas_ray.search.latency`` must decode exactly the greedy tokens of ``model.generate``, on a
stock tiny Llama and on extracted non-uniform sub-networks, and ``measure`` must report sane figures.
"""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch
from tokenizers import processors

import lonas_ray  # noqa: F401  (registers the lonas_<family> Auto classes)
from helpers import input_ids, randomize_adapters, tiny_model
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.merge.extract import extract
from lonas_ray.search.latency import RUNTIMES, LatencyStats, greedy_tokens, measure, percentile
from lonas_ray.search.quality import (
    MC_METRIC,
    TOKEN_METRIC,
    EvalSet,
    build_eval_set,
    evaluate_quality,
    subset,
    subset_indices,
)
from lonas_ray.space import SpaceSpec

pytestmark = pytest.mark.timeout(300)

CUTOFF = 64

# prompts and choices of different lengths, so batches need padding and length-sorting reorders rows
MC_EXAMPLES = [
    ("Q: sky colour? A:", [" blue", " green", " red and white"]),
    ("Q: 2+2? A:", [" 4", " five", " twenty-two"]),
    ("The cat sat on the", [" mat", " moon"]),
    ("Pick one:", [" a", " bb", " ccc", " dddd"]),
    ("Water is", [" wet", " dry as sand"]),
    ("Longer prompt about the weather today, then a question. A:", [" rain", " sun", " snow"]),
]

INSTRUCTION_EXAMPLES = [
    {"prompt": "Translate: chat ->", "answer": " cat"},
    {"prompt": "Say hi:", "answer": " hello there"},
    {"prompt": "A much longer instruction that asks for a short reply:", "answer": " ok"},
]


def bos_tokenizer():
    """The byte tokenizer, made to put ``<s>`` in front of every text (like Llama tokenizers)."""
    tok = byte_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert tok("a")["input_ids"] == [tok.bos_token_id, ord("a")]
    return tok


def make_tokenizer(with_bos: bool):
    return bos_tokenizer() if with_bos else byte_tokenizer()


def hand_prefix(tok) -> list[int]:
    """What the tokenizer adds in front of a text: the ids of ``tok(text)`` before ``tok(text, no specials)``."""
    text = "xyz"
    plain = tok(text, add_special_tokens=False)["input_ids"]
    full = tok(text)["input_ids"]
    assert full[len(full) - len(plain):] == plain  # nothing appended after the text
    return full[: len(full) - len(plain)]


@torch.no_grad()
def choice_logprob(model, context: list[int], answer: list[int]) -> tuple[float, int]:
    """Sum of log p(answer tokens | context) from one unpadded single-row forward; and the token count."""
    ids = torch.tensor([context + answer])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(float(logp[len(context) + j - 1, t]) for j, t in enumerate(answer))
    return total, len(answer)


def hand_mc(model, tok, examples, labels):
    """(per-example predicted choice, accuracy, mean NLL per token of the correct choices), by hand."""
    prefix = hand_prefix(tok)
    preds, nll, tokens = [], 0.0, 0
    for (prompt, choices), label in zip(examples, labels):
        context = prefix + tok(prompt, add_special_tokens=False)["input_ids"]
        scores = [choice_logprob(model, context, tok(c, add_special_tokens=False)["input_ids"]) for c in choices]
        preds.append(int(np.argmax([s for s, _ in scores])))
        nll -= scores[label][0]
        tokens += scores[label][1]
    accuracy = sum(p == label for p, label in zip(preds, labels)) / len(labels)
    return preds, accuracy, nll / tokens


def mc_dataset(examples, labels) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"prompt": p, "choices": c, "label": k} for (p, c), k in zip(examples, labels)])


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.mark.parametrize("with_bos", [False, True])
def test_mc_accuracy_and_loss_equal_an_independent_single_row_computation(model, with_bos):
    tok = make_tokenizer(with_bos)
    # first find the model's own answers, then label half the examples with it and half against it,
    # so the expected accuracy is exactly 1/2 and depends on every example's argmax
    preds, _, _ = hand_mc(model, tok, MC_EXAMPLES, [0] * len(MC_EXAMPLES))
    labels = [p if k % 2 == 0 else (p + 1) % len(c) for k, (p, (_, c)) in enumerate(zip(preds, MC_EXAMPLES))]
    _, accuracy, loss = hand_mc(model, tok, MC_EXAMPLES, labels)
    assert accuracy == 0.5

    evalset = build_eval_set(mc_dataset(MC_EXAMPLES, labels), tok, cutoff_len=CUTOFF)
    assert evalset.metric == MC_METRIC and len(evalset) == len(MC_EXAMPLES)
    assert [len(g) for g in evalset.groups] == [len(c) for _, c in MC_EXAMPLES]
    assert evalset.labels == labels
    got = evaluate_quality(model, evalset, batch_size=2)
    assert got.metric == MC_METRIC and got.examples == len(MC_EXAMPLES)
    assert got.quality == accuracy
    assert got.loss == pytest.approx(loss, rel=1e-5, abs=1e-5)

    # all labels = the model's answers: accuracy 1; all against: accuracy 0
    for flip, expected in ((0, 1.0), (1, 0.0)):
        ls = [(p + flip) % len(c) for p, (_, c) in zip(preds, MC_EXAMPLES)]
        q = evaluate_quality(model, build_eval_set(mc_dataset(MC_EXAMPLES, ls), tok, CUTOFF), batch_size=4)
        assert q.quality == expected
        assert q.loss == pytest.approx(hand_mc(model, tok, MC_EXAMPLES, ls)[2], rel=1e-5, abs=1e-5)


def test_mc_scores_do_not_depend_on_batch_size(model):
    tok = byte_tokenizer()
    labels = [k % len(c) for k, (_, c) in enumerate(MC_EXAMPLES)]
    evalset = build_eval_set(mc_dataset(MC_EXAMPLES, labels), tok, cutoff_len=CUTOFF)
    results = [evaluate_quality(model, evalset, batch_size=b) for b in (1, 3, 100)]
    for r in results[1:]:
        assert r.quality == results[0].quality
        assert r.loss == pytest.approx(results[0].loss, rel=1e-5, abs=1e-6)
        assert r.examples == results[0].examples == len(MC_EXAMPLES)


@torch.no_grad()
def test_instruction_set_scores_answer_tokens_and_the_models_own_loss(model):
    tok = bos_tokenizer()
    ds = datasets.Dataset.from_list(INSTRUCTION_EXAMPLES)
    evalset = build_eval_set(ds, tok, cutoff_len=CUTOFF)
    assert evalset.metric == TOKEN_METRIC and len(evalset) == len(INSTRUCTION_EXAMPLES)

    hf_nll, tokens, right = 0.0, 0, 0
    for k, ex in enumerate(INSTRUCTION_EXAMPLES):
        context = [tok.bos_token_id] + list(ex["prompt"].encode())
        answer = list(ex["answer"].encode()) + [tok.eos_token_id]  # byte ids; training appends eos
        ids = torch.tensor([context + answer])
        labels = torch.tensor([[-100] * len(context) + answer])
        out = model(input_ids=ids, labels=labels)
        # each row alone: its loss is the model's own HF loss of that row
        one = evaluate_quality(model, subset(evalset, [k]), batch_size=1)
        assert one.metric == TOKEN_METRIC
        assert one.loss == pytest.approx(float(out.loss), rel=1e-5, abs=1e-5)
        predicted = out.logits[0, len(context) - 1:-1].argmax(-1).tolist()
        row_right = sum(p == t for p, t in zip(predicted, answer))
        assert one.quality == pytest.approx(row_right / len(answer), abs=1e-12)
        hf_nll += float(out.loss) * len(answer)
        tokens += len(answer)
        right += row_right

    got = evaluate_quality(model, evalset, batch_size=2)
    assert got.metric == TOKEN_METRIC and got.examples == len(INSTRUCTION_EXAMPLES)
    assert got.loss == pytest.approx(hf_nll / tokens, rel=1e-5, abs=1e-5)  # token-weighted, like training
    assert got.quality == pytest.approx(right / tokens, abs=1e-12)


def test_subset_indices_are_deterministic_sorted_and_sized():
    for total, n, seed in [(50, 10, 0), (50, 10, 1), (7, 7, 0), (7, 20, 3), (1, 1, 0), (100, 1, 5)]:
        got = subset_indices(total, n, seed)
        assert got == subset_indices(total, n, seed)
        assert got == sorted(got) and len(set(got)) == len(got) == min(n, total)
        assert all(0 <= i < total for i in got)
    assert subset_indices(50, 10, 0) != subset_indices(50, 10, 1)  # the seed picks which examples
    assert subset_indices(13, None) == list(range(13))
    assert subset_indices(13, None, seed=4) == list(range(13))
    # a larger subset of the same seed contains the smaller (first n of one permutation)
    assert set(subset_indices(40, 5, 2)) <= set(subset_indices(40, 15, 2))


def test_subset_keeps_groups_and_labels_consistent(model):
    tok = byte_tokenizer()
    labels = [len(c) - 1 for _, c in MC_EXAMPLES]
    ds = mc_dataset(MC_EXAMPLES, labels)
    full = build_eval_set(ds, tok, cutoff_len=CUTOFF)
    idx = [1, 3, 5]
    part = subset(full, idx)
    assert len(part) == 3 and part.metric == full.metric and part.pad_id == full.pad_id
    assert part.labels == [labels[k] for k in idx]
    assert [r for g in part.groups for r in g] == list(range(len(part.rows)))  # renumbered 0..n-1, contiguous
    for j, k in enumerate(idx):
        assert [part.rows[i] for i in part.groups[j]] == [full.rows[i] for i in full.groups[k]]
    # scoring the subset is scoring those examples alone
    alone = build_eval_set(ds.select(idx), tok, cutoff_len=CUTOFF)
    a, b = evaluate_quality(model, part, batch_size=2), evaluate_quality(model, alone, batch_size=2)
    assert a.quality == b.quality and a.loss == pytest.approx(b.loss, rel=1e-6) and a.examples == 3
    _, accuracy, loss = hand_mc(model, tok, [MC_EXAMPLES[k] for k in idx], [labels[k] for k in idx])
    assert a.quality == accuracy and a.loss == pytest.approx(loss, rel=1e-5, abs=1e-5)


def test_evaluating_an_empty_set_raises(model):
    tok = byte_tokenizer()
    full = build_eval_set(mc_dataset(MC_EXAMPLES[:2], [0, 1]), tok, cutoff_len=CUTOFF)
    with pytest.raises(ValueError, match="empty"):
        evaluate_quality(model, subset(full, []))
    with pytest.raises(ValueError, match="empty"):
        evaluate_quality(model, EvalSet([], [], [], TOKEN_METRIC, 0))


# --------------------------------------------------------------------------- latency

SPACE = {"lora": {"r_max": 4, "rank_choices": [4, 2]}, "mlp": {"choices": [1.0, 0.5]},
         "heads": {"choices": [1.0, 0.5]}, "depth": {"skippable": [1]}}


def reference_tokens(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy continuation by transformers' own generate() (no early stop at eos)."""
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=0,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape == (ids.shape[0], ids.shape[1] + n)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    return out[:, ids.shape[1]:]


def non_uniform_configs(supernet, wanted: int = 2) -> list[dict]:
    """Sampled configurations whose kept blocks differ in heads or MLP width, or that skip a block."""
    found = []
    for seed in range(200):
        cfg = supernet.space.sample(seed)
        kept = [i for i in range(4) if cfg.get(f"keep.{i}", True)]
        heads = {cfg[f"heads.{i}"] for i in kept}
        mlp = {cfg[f"mlp.{i}"] for i in kept}
        if not cfg["keep.1"] or len(heads) > 1 or len(mlp) > 1:
            found.append(cfg)
        if len(found) == wanted and any(not c["keep.1"] for c in found):
            return found
    raise AssertionError("no non-uniform configuration among 200 samples")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_static_and_eager_decode_the_tokens_of_generate_on_a_tiny_llama(seed):
    model = tiny_model(seed=seed)
    ids = input_ids(batch=2, length=10, seed=seed)
    n = 8
    ref = reference_tokens(model, ids, n)
    for runtime in ("static", "eager"):
        got = greedy_tokens(model, ids, n, runtime)
        assert got.shape == (2, n)
        assert torch.equal(got, ref), runtime


def test_static_and_eager_decode_the_tokens_of_generate_on_extracted_non_uniform_subnetworks():
    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, seed=1)
    configs = non_uniform_configs(supernet)
    names = set()
    for k, cfg in enumerate(configs):
        sub = extract(supernet, cfg)
        names.add(type(sub).__name__)
        assert sub.config.num_hidden_layers == sum(cfg.get(f"keep.{i}", True) for i in range(4))
        for seed in (k, k + 10):
            ids = input_ids(batch=1, length=9, seed=seed)
            ref = reference_tokens(sub, ids, 6)
            assert torch.equal(greedy_tokens(sub, ids, 6, "static"), ref), (cfg, seed)
            assert torch.equal(greedy_tokens(sub, ids, 6, "eager"), ref), (cfg, seed)
    # at least one of them is a per-layer (non-stock) architecture
    assert any(n.startswith("Lonas") for n in names), names


@pytest.mark.parametrize("runtime", ["static", "eager"])
def test_measure_reports_consistent_figures(runtime):
    model = tiny_model()
    stats = measure(model, runtime, batch_size=2, prompt_len=8, new_tokens=4, warmup=1, repeats=5, seed=0)
    assert isinstance(stats, LatencyStats)
    assert stats.runtime == runtime and stats.repeats == 5
    assert stats.latency_p90_ms >= stats.latency_ms > 0
    assert stats.prefill_ms > 0 and stats.decode_ms > 0
    # a request is its prefill plus 4 decode steps: the median total is at least the median prefill
    assert stats.latency_ms >= stats.prefill_ms
    one = measure(model, runtime, batch_size=1, prompt_len=4, new_tokens=1, warmup=0, repeats=1)
    assert one.repeats == 1 and one.latency_p90_ms == one.latency_ms > 0


def test_measure_rejects_unknown_runtimes_and_cuda_graph_on_cpu():
    model = tiny_model()
    kwargs = dict(batch_size=1, prompt_len=4, new_tokens=2, warmup=0, repeats=1)
    with pytest.raises(ValueError, match="'turbo'"):
        measure(model, "turbo", **kwargs)
    assert "cuda_graph" in RUNTIMES
    with pytest.raises(ValueError, match="'cuda_graph'.*CUDA"):
        measure(model, "cuda_graph", **kwargs)


def test_percentile_matches_numpy():
    rng = random.Random(0)
    for trial in range(50):
        values = [rng.uniform(-100, 100) for _ in range(rng.randint(1, 30))]
        if trial % 5 == 0:
            values += values[:3]  # ties
        for q in (0.0, 0.1, 0.5, 0.9, 1.0, rng.random()):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)), rel=1e-12, abs=1e-12)
