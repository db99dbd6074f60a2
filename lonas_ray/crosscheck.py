"""An independent judge: lm-evaluation-harness scores a saved model on the examples lonas-ray's scorer used.

lonas-ray scores with its own code (``lonas_ray.search.quality``) because the
search needs a task loss and per-sub-network batching that lm-eval does not
give. So that a user need not trust that code, every exported checkpoint can be
scored again by ``lm-eval`` (its ``hf`` model over the saved directory, a local
task written here for the same examples and prompts) and the two compared
example by example:

* multiple choice: lm-eval's ``acc`` (``output_type: multiple_choice``, the
  choices appended to the prompt with no delimiter, summed log-likelihoods);
* generation: lm-eval's ``exact_match`` of ``generate_until`` with
  ``until: ["\\n"]``, the same new-token budget, leading and trailing whitespace
  ignored, any accepted answer counting (``multiple_target``).

lonas-ray cuts a prompt from the left when prompt + answer exceed
``data.cutoff_len``; lm-eval sees it whole, so the two can only agree on
examples that fit. ``Verdict.truncated`` counts those that do not (raise
``data.cutoff_len`` until it is 0).

The task file is the contract: ``<dir>/<name>.jsonl`` (one example per line:
``prompt`` and ``choices``/``label`` or ``targets``) and ``<dir>/<name>.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lonas_ray.search.metric import EXACT_METRIC, MC_METRIC

log = logging.getLogger(__name__)

LM_EVAL_METRIC = {MC_METRIC: "acc", EXACT_METRIC: "exact_match"}
JUDGE_FILE = "lm_eval.json"


@dataclass(frozen=True)
class Verdict:
    """Both judges on the same examples: their accuracies and how many examples they agree on."""

    metric: str  # lonas-ray's metric name
    examples: int
    lonas_quality: float
    lm_eval_quality: float
    lm_eval_metric: str
    agree: int  # examples both call right or both call wrong
    lm_eval_version: str
    truncated: int = 0  # examples whose prompt lonas-ray's scorer cut to data.cutoff_len (lm-eval sees them whole)

    @property
    def agreement(self) -> float:
        return self.agree / self.examples

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement}


def write_task(examples: Any, metric: str, directory: Path, name: str, max_gen_toks: int = 16) -> Path:
    """A local lm-eval task over ``examples`` (``load_examples(spec, "eval")`` rows, in order); returns the dir."""
    if metric not in LM_EVAL_METRIC:
        raise ValueError(f"lm-eval judges only {', '.join(LM_EVAL_METRIC)} (got {metric}): instruction data "
                         "without accepted answers has no lm-eval counterpart")
    directory.mkdir(parents=True, exist_ok=True)
    docs = directory / f"{name}.jsonl"
    with docs.open("w") as f:
        for ex in examples:
            doc = {"prompt": ex["prompt"]}
            doc.update({"choices": list(ex["choices"]), "label": int(ex["label"])} if metric == MC_METRIC
                       else {"targets": [str(t) for t in ex["targets"]]})
            f.write(json.dumps(doc) + "\n")
    task: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs)}},
        "test_split": "test",
        "doc_to_text": "prompt",
    }
    if metric == MC_METRIC:
        task.update(output_type="multiple_choice", doc_to_choice="choices", doc_to_target="label",
                    target_delimiter="", metric_list=[{"metric": "acc", "aggregation": "mean",
                                                       "higher_is_better": True}])
    else:
        task.update(output_type="generate_until", doc_to_target="targets",
                    generation_kwargs={"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
                    metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                  "regexes_to_ignore": [r"^\s+", r"\s+$"]}])
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return directory


def lm_eval_hits(model_dir: Path, task_dir: Path, name: str, metric: str, *, add_bos: bool,
                 batch_size: int = 8, device: str = "cpu") -> list[bool]:
    """Per example (the task file's order), whether lm-eval's ``hf`` model over ``model_dir`` got it right."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory and a local task: nothing to fetch
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import lonas_ray.merge.hf_classes  # noqa: F401  (per-layer exports load through the Auto classes)

    model = HFLM(pretrained=str(model_dir), batch_size=batch_size, device=device, dtype="float32",
                 add_bos_token=add_bos)
    out = simple_evaluate(model=model, tasks=[name], num_fewshot=0, log_samples=True,
                          task_manager=TaskManager(include_path=str(task_dir)), verbosity="WARNING")
    key = LM_EVAL_METRIC[metric]
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return [bool(s[key]) for s in samples]


@dataclass
class Scored:
    """lonas-ray's scorer on a saved model: the figures, which examples were right, and what was scored."""

    quality: Any  # search.quality.Quality
    right: list[bool] | None
    evalset: Any
    examples: Any  # load_examples(data, "eval"), all of them
    indices: list[int]  # the final examples among them
    tokenizer: Any


def score_saved(model_dir: Path, data: Any, quality: Any, *, batch_size: int = 8, device: str = "cpu") -> Scored:
    """Score a saved checkpoint on the final examples (``quality.final_examples`` of the seeded order)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lonas_ray.merge.hf_classes  # noqa: F401  (per-layer exports load through the Auto classes)
    from lonas_ray.data.load import load_examples
    from lonas_ray.search.quality import build_eval_set, score_examples, subset, subset_indices

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    examples = load_examples(data, "eval")
    full = build_eval_set(examples, tokenizer, data.cutoff_len)
    indices = subset_indices(len(full), quality.final_examples, quality.seed)
    evalset = subset(full, indices)
    with torch.no_grad():
        own, right = score_examples(model, evalset, batch_size, decode=tokenizer.decode)
    return Scored(own, right, evalset, examples, indices, tokenizer)


def cross_check(model_dir: Path, data: Any, quality: Any, work_dir: Path, *, batch_size: int = 8,
                device: str = "cpu", scored: Scored | None = None) -> Verdict:
    """Score ``model_dir`` with lonas-ray's scorer and with lm-eval on the final examples; compare them.

    ``data`` is a ``DataSpec``, ``quality`` a ``QualitySpec``: the same examples
    (``quality.final_examples`` of the seeded order) the exported models' figures use.
    ``scored``: ``score_saved``'s result for this model when the caller has it already.
    """
    import importlib.metadata

    from lonas_ray.data.tokenize import special_prefix
    from lonas_ray.search.quality import generation_budget

    scored = scored or score_saved(model_dir, data, quality, batch_size=batch_size, device=device)
    own, right, evalset, tokenizer = scored.quality, scored.right, scored.evalset, scored.tokenizer
    if right is None:
        raise ValueError(f"lm-eval judges only {', '.join(LM_EVAL_METRIC)} (got {own.metric})")
    final = scored.examples.select(scored.indices)
    name = "lonas_crosscheck"
    write_task(final, own.metric, work_dir, name,
               max_gen_toks=generation_budget(evalset) if own.metric == EXACT_METRIC else 16)
    theirs = lm_eval_hits(model_dir, work_dir, name, own.metric, add_bos=bool(special_prefix(tokenizer)),
                          batch_size=batch_size, device=device)
    if len(theirs) != len(right):
        raise RuntimeError(f"lm-eval scored {len(theirs)} examples, lonas-ray {len(right)}")
    return Verdict(own.metric, len(right), own.quality, sum(theirs) / len(theirs), LM_EVAL_METRIC[own.metric],
                   sum(a == b for a, b in zip(right, theirs)), importlib.metadata.version("lm_eval"),
                   truncated_examples(final, tokenizer, data.cutoff_len))


def truncated_examples(examples: Any, tokenizer: Any, cutoff_len: int) -> int:
    """How many examples have a prompt + answer (any choice, + eos for answers) longer than ``cutoff_len``."""
    from lonas_ray.data.tokenize import special_prefix

    fixed = len(special_prefix(tokenizer))
    count = 0
    for ex in examples:
        prompt = len(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
        answers = ex["choices"] if "choices" in ex else [ex["answer"]]
        extra = 0 if "choices" in ex else 1  # eos after a generated answer
        longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) + extra
        count += fixed + prompt + longest > cutoff_len
    return count
