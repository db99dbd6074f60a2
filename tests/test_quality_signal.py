"""Quality that tracks correctness: the choice cross-entropy, exact match of greedy generations, Wilson intervals."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from test_search_quality_latency import CUTOFF, MC_EXAMPLES, bos_tokenizer, choice_logprob, hand_prefix, mc_dataset

from helpers import tiny_model
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.search.quality import (
    EXACT_METRIC,
    MC_METRIC,
    answer_matches,
    build_eval_set,
    choice_cross_entropy,
    evaluate_quality,
    greedy_continuations,
    subset,
)
from lonas_ray.stats import wilson_interval

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["What is 1 plus 2?", "Say it:", "A longer question, so that the batch needs left padding?", "x"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


# --------------------------------------------------------------------------- intervals


def test_wilson_interval_matches_published_values_and_stays_in_bounds():
    # Wilson 95 % intervals as tabulated (e.g. Newcombe 1998, table I)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    # more examples, a narrower interval around the same accuracy
    width = [hi - lo for lo, hi in (wilson_interval(20, 40), wilson_interval(200, 400))]
    assert width[1] < width[0] / 3
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


# --------------------------------------------------------------------------- multiple choice


def test_choice_cross_entropy_by_hand():
    scores = [torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64), torch.tensor([-0.5, -0.1], dtype=torch.float64)]
    first = -(-1.0 - math.log(math.exp(-1.0) + math.exp(-2.0) + math.exp(-3.0)))
    second = -(-0.1 - math.log(math.exp(-0.5) + math.exp(-0.1)))
    assert choice_cross_entropy(scores, [0, 1]) == pytest.approx((first + second) / 2, rel=1e-12)
    # only the gap between choices counts: shifting every choice's log-likelihood changes nothing
    shifted = [s - 7.0 for s in scores]
    assert choice_cross_entropy(shifted, [0, 1]) == pytest.approx(choice_cross_entropy(scores, [0, 1]), rel=1e-12)


def test_mc_task_loss_is_the_decision_cross_entropy_of_independent_single_row_scores(model):
    tok = bos_tokenizer()
    labels = [k % len(c) for k, (_, c) in enumerate(MC_EXAMPLES)]
    prefix = hand_prefix(tok)
    expected = []
    for (prompt, choices), label in zip(MC_EXAMPLES, labels):
        context = prefix + tok(prompt, add_special_tokens=False)["input_ids"]
        s = [choice_logprob(model, context, tok(c, add_special_tokens=False)["input_ids"])[0] for c in choices]
        expected.append(-(s[label] - math.log(sum(math.exp(v) for v in s))))
    evalset = build_eval_set(mc_dataset(MC_EXAMPLES, labels), tok, cutoff_len=CUTOFF)
    q = evaluate_quality(model, evalset, batch_size=3)
    assert q.metric == MC_METRIC
    assert q.task_loss == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert q.hits == round(q.quality * q.examples)


def test_copying_a_listed_choice_lowers_the_answer_loss_but_not_the_task_loss():
    """The failure the answer loss had: a model that likes every listed choice alike looks better but is not."""
    model = torch.tensor([-2.0, -2.5, -2.5], dtype=torch.float64)  # log-likelihoods; the right choice is 0
    copier = model + 1.5  # every listed choice 1.5 nats more likely: the answer loss falls from 2.0 to 0.5 ...
    assert -copier[0] < -model[0]
    assert choice_cross_entropy([copier], [0]) == pytest.approx(choice_cross_entropy([model], [0]))  # ... not this
    better = torch.tensor([-2.0, -4.0, -4.0], dtype=torch.float64)  # the right choice further ahead: this falls
    assert choice_cross_entropy([better], [0]) < choice_cross_entropy([model], [0])


# --------------------------------------------------------------------------- generation


def test_answer_matching_takes_the_first_line_stripped():
    assert answer_matches(" 551\nQuestion: What is", ["551"])
    assert answer_matches("four", ["4", "four"])
    assert not answer_matches("5510", ["551"])
    assert not answer_matches("\n551", ["551"])  # an empty first line is a wrong answer
    assert not answer_matches("", ["551"])


def generation_set(tok, targets):
    ds = datasets.Dataset.from_list([{"prompt": p, "answer": t[0], "targets": t} for p, t in zip(PROMPTS, targets)])
    return build_eval_set(ds, tok, cutoff_len=CUTOFF)


@torch.no_grad()
def one_by_one(model, tok, prompt: str, n: int) -> str:
    """An independent greedy continuation: one unpadded prompt, no cache, argmax token by token."""
    ids = tok(prompt)["input_ids"]
    for _ in range(n):
        nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        ids.append(nxt)
    return tok.decode(ids[len(tok(prompt)["input_ids"]):])


def test_exact_match_scores_greedy_generation_in_left_padded_batches(model):
    tok = bos_tokenizer()
    probe = generation_set(tok, [["?"]] * len(PROMPTS))
    n = max(len(r["input_ids"]) - len(p) for r, p in zip(probe.rows, probe.prompts)) + 2
    own = [one_by_one(model, tok, p, n) for p in PROMPTS]
    # the batched, left-padded generate gives the same continuations as one prompt at a time
    for batch in (1, 3):
        got = greedy_continuations(model, probe.prompts, n, probe.pad_id, probe.eos_id, batch_size=batch)
        assert [tok.decode(g) for g in got] == own
    # Exact match on decoded text. A random model rarely ends a line, so decode keeps 3 characters and ends the
    # line there: label two examples with those characters of the model's own output, two with something else.
    def decode(ids):
        return tok.decode(ids)[:3] + "\nmore"

    heads = [o[:3] for o in own]
    right = [k for k, h in enumerate(heads) if len(h) == 3 and h.strip() == h][:2]
    assert len(right) == 2, heads
    targets = [[heads[k] + "x", heads[k]] if k in right else ["not"] for k in range(len(PROMPTS))]
    evalset = generation_set(tok, targets)
    assert evalset.metric == EXACT_METRIC
    q = evaluate_quality(model, evalset, batch_size=2, decode=decode)
    assert (q.quality, q.hits, q.examples) == (0.5, 2, 4)
    assert q.task_loss == q.loss > 0
    one = evaluate_quality(model, subset(evalset, [right[1]]), batch_size=1, decode=decode)
    assert one.quality == 1.0 and one.metric == EXACT_METRIC
    none = evaluate_quality(model, subset(evalset, [k for k in range(4) if k not in right]), decode=decode)
    assert none.quality == 0.0 and none.hits == 0
    with pytest.raises(ValueError, match="decode"):
        evaluate_quality(model, evalset)


def test_byte_tokenizer_sets_have_no_prefix_and_still_score():
    tok = byte_tokenizer()
    evalset = generation_set(tok, [["a"]] * len(PROMPTS))
    assert evalset.prompts[0] == list(PROMPTS[0].encode())
    q = evaluate_quality(tiny_model(), evalset, decode=tok.decode)
    assert q.examples == len(PROMPTS) and 0.0 <= q.quality <= 1.0
