"""The data layer: shipped split, config checks, loading, loss mask, padding, byte tokenizer, toy task."""

from __future__ import annotations

import json
import logging
import runpy
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import processors
from transformers import AutoTokenizer

from lonas_ray.config_io import ConfigError, from_dict, to_dict
from lonas_ray.data import shipped
from lonas_ray.data.byte_tokenizer import byte_tokenizer
from lonas_ray.data.load import load_examples
from lonas_ray.data.spec import DataSpec, check_data
from lonas_ray.data.templates import DEFAULT_TEMPLATES, render
from lonas_ray.data.tokenize import IGNORE_INDEX, build_train_dataset, collate, encode, special_prefix
from lonas_ray.data.toy import write_toy_task
from lonas_ray.model_source import ModelSource, load_model, smollm2_cache_dir

ROOT = Path(__file__).resolve().parents[1]
SOCIAL_IQA = ROOT / "lonas_ray" / "assets" / "bigbench" / "social_iqa.json"

INSTRUCTION_RECORDS = [
    {"instruction": "Reverse the letters.", "input": "abc", "output": "cba"},
    {"instruction": "Say hello.", "input": "", "output": "héllo 日本"},
    {"instruction": "Add.", "input": "2 + 3", "output": "5"},
]
MC_RECORDS = [
    {"input": "Sky colour?", "target_scores": {"green": 0, "blue": 1}},
    {"input": "2 + 2?", "target_scores": {"4": 1, "5": 0, "22": 0}},
]


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def spec(**kw) -> DataSpec:
    return from_dict(DataSpec, kw, where="data")


def shipped_spec(**kw) -> DataSpec:
    return spec(train="shipped:social_iqa", eval="shipped:social_iqa", format="multiple_choice", **kw)


def bos_tokenizer():
    """A byte tokenizer that, like Llama's, puts <s> in front of every text."""
    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


# --- the shipped split -------------------------------------------------------------------------

@pytest.mark.parametrize("task", shipped.TASKS)
def test_recorded_split_is_a_fresh_computation_and_a_partition(task):
    data = json.loads(shipped.task_path(task).read_text())
    examples = data["examples"]
    recorded = json.loads(shipped.split_path(task).read_text())
    assert recorded == shipped.compute_split(examples)
    train, test = set(recorded["train"]), set(recorded["test"])
    assert not train & test
    assert train | test == set(range(len(examples)))
    assert len(recorded["train"]) == len(train) and len(recorded["test"]) == len(test)
    assert 0.75 < len(train) / len(examples) < 0.85
    # equal questions never straddle the split
    side = {}
    for i, ex in enumerate(examples):
        assert side.setdefault(ex["input"], i in train) == (i in train)
    if task.startswith("rg_"):  # generated: the generator, its config and seed travel with the examples
        assert data["generator"]["seed"] == 0 and data["generator"]["size"] == len(examples)
        assert "reasoning-gym==" in data["source"] and "Apache-2.0" in data["source"]
    else:
        assert "canary" in data  # BIG-bench's canary string travels with every copy
    assert len(examples) == {"social_iqa": 1954, "intent_recognition": 693}.get(task, 1000)


def test_shipped_generation_task_loads_prompts_answers_and_accepted_targets():
    s = spec(train="shipped:arithmetic_3_digit_addition", eval="shipped:arithmetic_3_digit_addition",
             format="generation")
    train, test = load_examples(s, "train"), load_examples(s, "eval")
    split = shipped.read_split("arithmetic_3_digit_addition")
    assert len(train) == len(split["train"]) and len(test) == len(split["test"])
    assert train.column_names == ["prompt", "answer"] and test.column_names == ["prompt", "answer", "targets"]
    record = shipped.read_task("arithmetic_3_digit_addition")[split["test"][0]]
    assert test[0]["prompt"] == DEFAULT_TEMPLATES["generation"].format(input=record["input"])
    assert test[0]["targets"] == [record["target"]] and test[0]["answer"] == record["target"]
    a, b = (int(x) for x in record["input"].removeprefix("What is ").rstrip("?").split(" plus "))
    assert int(test[0]["answer"]) == a + b


def test_generation_files_accept_one_answer_or_a_list(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"input": "How many legs has a cat?", "target": ["four", "4"]},
                                               {"input": "2+2?", "target": 4}])
    s = spec(train=str(path), eval=str(path), format="generation")
    check_data(s)
    train, test = load_examples(s, "train"), load_examples(s, "eval")
    assert train["answer"] == ["four", "4"]
    assert test["targets"] == [["four", "4"], ["4"]]


def test_make_split_script_checks_the_recorded_split(capsys):
    main = runpy.run_path(str(ROOT / "jobs" / "make_split.py"), run_name="make_split")["main"]
    assert main(["--check"]) == 0
    assert "matches" in capsys.readouterr().out


# --- templates ---------------------------------------------------------------------------------

def test_template_rendering():
    text = render(DEFAULT_TEMPLATES["instruction"], instruction=" Reverse. ", input="abc\n")
    assert text == "### Instruction:\nReverse.\n\n### Input:\nabc\n\n### Response:\n"
    mc = render(DEFAULT_TEMPLATES["multiple_choice"], input="Sky colour? ", choices=["green", "blue"])
    assert mc == "Question: Sky colour?\nChoices:\n- green\n- blue\nAnswer:\n"
    assert render("{{literal}} {input}|{instruction}|", input="x") == "{literal} x||"
    assert spec(train="shipped:social_iqa", format="multiple_choice").prompt_template == DEFAULT_TEMPLATES[
        "multiple_choice"]
    assert spec(train="shipped:social_iqa", format="multiple_choice", template="Q: {input}\nA:\n").prompt_template \
        == "Q: {input}\nA:\n"


# --- loading -----------------------------------------------------------------------------------

def test_shipped_social_iqa_train_and_eval():
    s = shipped_spec()
    check_data(s)
    train, evals = load_examples(s, "train"), load_examples(s, "eval")
    split = shipped.read_split("social_iqa")
    assert len(train) == len(split["train"]) and len(evals) == len(split["test"])
    assert len(train) + len(evals) == 1954
    assert train.column_names == ["prompt", "answer"]
    assert evals.column_names == ["prompt", "choices", "label"]
    examples = shipped.read_task("social_iqa")
    for row, i in zip(evals, split["test"]):
        scores = examples[i]["target_scores"]
        assert row["choices"] == list(scores)
        assert scores[row["choices"][row["label"]]] == 1 == max(scores.values())
        assert examples[i]["input"].strip() in row["prompt"]
        assert all(f"- {c}\n" in row["prompt"] for c in row["choices"])
    for row, i in zip(train, split["train"]):
        scores = examples[i]["target_scores"]
        assert scores[row["answer"]] == 1


@pytest.mark.parametrize("kind", ["json", "jsonl", "parquet", "jsonl_in_json"])
def test_instruction_files_load_alike(tmp_path, kind):
    if kind == "json":
        path = write_json(tmp_path / "d.json", INSTRUCTION_RECORDS)
    elif kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)
    elif kind == "jsonl_in_json":
        path = write_jsonl(tmp_path / "d.json", INSTRUCTION_RECORDS)
    else:
        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(INSTRUCTION_RECORDS), path)
    s = spec(train=str(path), eval=str(path))
    check_data(s)
    for split in ("train", "eval"):
        rows = load_examples(s, split)
        assert rows.column_names == ["prompt", "answer"]
        assert rows["answer"] == [r["output"] for r in INSTRUCTION_RECORDS]
        assert rows["prompt"] == [
            render(DEFAULT_TEMPLATES["instruction"], instruction=r["instruction"], input=r["input"])
            for r in INSTRUCTION_RECORDS
        ]


@pytest.mark.parametrize("kind", ["bigbench", "json", "jsonl", "parquet_struct", "parquet_map", "parquet_json"])
def test_multiple_choice_files_load_alike(tmp_path, kind):
    if kind == "bigbench":
        path = write_json(tmp_path / "task.json", {"canary": "x", "examples": MC_RECORDS})
    elif kind == "json":
        path = write_json(tmp_path / "d.json", MC_RECORDS)
    elif kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", MC_RECORDS)
    elif kind == "parquet_struct":  # what pandas writes: one struct field per distinct choice, nulls elsewhere
        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(MC_RECORDS), path)
    elif kind == "parquet_map":
        path = tmp_path / "d.parquet"
        rows = [{"input": r["input"], "target_scores": list(r["target_scores"].items())} for r in MC_RECORDS]
        schema = pa.schema([("input", pa.string()), ("target_scores", pa.map_(pa.string(), pa.int64()))])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    else:  # what datasets writes for a Json column
        path = tmp_path / "d.parquet"
        datasets.load_dataset("json", data_files=str(write_jsonl(tmp_path / "src.jsonl", MC_RECORDS)),
                              split="train").to_parquet(str(path))
    s = spec(train=str(path), eval=str(path), format="multiple_choice")
    check_data(s)
    evals = load_examples(s, "eval")
    assert evals["label"] == [1, 0]
    assert [sorted(c) for c in evals["choices"]] == [sorted(r["target_scores"]) for r in MC_RECORDS]
    if kind != "parquet_struct":  # a struct's field order is the union's, not each record's
        assert evals["choices"] == [list(r["target_scores"]) for r in MC_RECORDS]
    assert load_examples(s, "train")["answer"] == ["blue", "4"]


def test_max_examples_is_a_seeded_subset():
    a = load_examples(shipped_spec(max_examples=50, seed=1), "train")
    b = load_examples(shipped_spec(max_examples=50, seed=1), "train")
    c = load_examples(shipped_spec(max_examples=50, seed=2), "train")
    assert len(a) == 50 and a["prompt"] == b["prompt"] and a["prompt"] != c["prompt"]
    assert len(load_examples(shipped_spec(max_examples=5000), "eval")) == len(shipped.read_split("social_iqa")["test"])


def test_relative_paths_become_absolute_and_round_trip(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)
    monkeypatch.chdir(tmp_path)
    s = spec(train="d.jsonl", cutoff_len=64)
    assert s.train == str(tmp_path / "d.jsonl")
    monkeypatch.chdir(ROOT)  # a Ray worker runs elsewhere and rebuilds the spec from to_dict
    assert from_dict(DataSpec, to_dict(s)) == s


# --- tokenization ------------------------------------------------------------------------------

@pytest.mark.parametrize("make_tokenizer", [byte_tokenizer, bos_tokenizer], ids=["plain", "bos"])
def test_loss_mask_is_exactly_the_answer(tmp_path, make_tokenizer):
    tok = make_tokenizer()
    path = write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)
    s = spec(train=str(path), cutoff_len=256)
    rows = build_train_dataset(s, tok)
    examples = load_examples(s, "train")
    assert rows.column_names == ["input_ids", "labels", "attention_mask"]
    prefix = special_prefix(tok)
    assert prefix == ([tok.bos_token_id] if make_tokenizer is bos_tokenizer else [])
    for row, ex in zip(rows, examples):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) == len(row["attention_mask"]) and set(row["attention_mask"]) == {1}
        start = labels.index(next(x for x in labels if x != IGNORE_INDEX))
        assert all(x == IGNORE_INDEX for x in labels[:start])
        assert labels[start:] == ids[start:]
        assert ids[: len(prefix)] == prefix
        assert tok.decode(ids[len(prefix):start]) == ex["prompt"]
        assert tok.decode(labels[start:]) == ex["answer"] + tok.eos_token
        assert ids[-1] == tok.eos_token_id


def test_cutoff_truncates_the_prompt_from_the_left(tmp_path):
    tok = byte_tokenizer()
    records = [{"instruction": "Copy.", "input": "x" * 300 + "END", "output": "the answer"}]
    s = spec(train=str(write_jsonl(tmp_path / "d.jsonl", records)), cutoff_len=32)
    row = build_train_dataset(s, tok)[0]
    assert len(row["input_ids"]) == 32
    kept = [x for x in row["labels"] if x != IGNORE_INDEX]
    assert tok.decode(kept) == "the answer</s>"
    prompt = load_examples(s, "train")[0]["prompt"]
    assert tok.decode(row["input_ids"][: 32 - len(kept)]) == prompt[-(32 - len(kept)):]
    assert prompt.endswith("END\n\n### Response:\n")


def test_an_answer_longer_than_the_cutoff_is_cut_with_a_warning(tmp_path, caplog):
    row, cut = encode(list(range(10)), list(range(100, 140)), cutoff_len=16, prefix=[254], eos_id=255)
    assert cut and len(row["input_ids"]) == 16
    assert row["input_ids"] == [254, 3, 4, 5, 6, 7, 8, 9, *range(100, 108)]  # half the room for the prompt's tail
    assert row["labels"] == [IGNORE_INDEX] * 8 + list(range(100, 108))
    records = [{"instruction": "Talk.", "input": "", "output": "y" * 100}]
    s = spec(train=str(write_jsonl(tmp_path / "d.jsonl", records)), cutoff_len=40)
    with caplog.at_level(logging.WARNING, logger="lonas_ray.data.tokenize"):
        rows = build_train_dataset(s, byte_tokenizer())
    assert len(rows[0]["input_ids"]) == 40
    assert "1 of 1 answers" in caplog.text and "cutoff_len" in caplog.text


def test_collate_right_pads_every_input_form(tmp_path):
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [8], "attention_mask": [1]},
    ]
    expected = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 253, 253]]),
        "labels": torch.tensor([[-100, 6, 7], [8, -100, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
    }
    ds = datasets.Dataset.from_list(rows)
    for batch in (rows, ds, ds.select([0, 1]), ds[0:2]):
        out = collate(batch, pad_id=253)
        assert set(out) == set(expected)
        for name, tensor in expected.items():
            assert out[name].dtype == torch.long and torch.equal(out[name], tensor), name


def test_real_smollm2_tokenizer_masks_exactly(tmp_path):
    load_model(ModelSource(kind="smollm2"))  # converts and caches it on first use (set-up installs the package)
    tok = AutoTokenizer.from_pretrained(smollm2_cache_dir(), local_files_only=True)
    s = spec(train=str(write_jsonl(tmp_path / "d.jsonl", INSTRUCTION_RECORDS)))
    for row, ex in zip(build_train_dataset(s, tok), load_examples(s, "train")):
        start = next(i for i, x in enumerate(row["labels"]) if x != IGNORE_INDEX)
        assert tok.decode(row["input_ids"][:start]) == ex["prompt"]
        assert tok.decode(row["labels"][start:]) == ex["answer"] + tok.eos_token


# --- bad input fails on the driver, by name ----------------------------------------------------

def _bad_spec_cases(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", INSTRUCTION_RECORDS)
    return [
        (dict(train=str(tmp_path / "nope.jsonl")), f"file not found: {tmp_path / 'nope.jsonl'}"),
        (dict(train=str(good), eval=str(tmp_path / "gone.json")), "data.eval file not found"),
        (dict(train=str(write_jsonl(tmp_path / "d.csv", []))), "unsupported type"),
        (dict(train=str(good), format="mcq"), "data.format 'mcq' is unknown; use one of instruction"),
        (dict(train=str(good), template="{question}\n"), "unknown placeholder(s) {question}"),
        (dict(train=str(good), template="{input\n"), "malformed"),
        (dict(train=str(good), template="{} {input}\n"), "unknown placeholder(s) {}"),
        (dict(train=str(good), template="{input!r}\n"), "conversion or format spec"),
        (dict(train=str(good), template="{input}\n{choices}\n"), "format 'instruction' allows {instruction}, {input}"),
        (dict(train=str(good), template="Answer:\n"), "neither {instruction} nor {input}"),
        (dict(train="shipped:social_iqa", format="multiple_choice", template="{instruction}\n"), "lacks {input}"),
        (dict(train="shipped:nope", format="multiple_choice"), "not a shipped task; use one of shipped:social_iqa"),
        (dict(train="shipped:social_iqa"), "set format: multiple_choice"),
        (dict(train="shipped:arithmetic_3_digit_addition", format="multiple_choice"),
         "is a generation task but data.format is 'multiple_choice': set format: generation"),
        (dict(train="shipped:intent_recognition", template="Q: {instruction}\n", format="multiple_choice"),
         "lacks {input}"),
        (dict(train=str(good), cutoff_len=2), "cutoff_len must be an integer >= 4"),
        (dict(train=str(good), max_examples=0), "max_examples must be a positive integer"),
        (dict(train=str(good), answer_field=""), "answer_field must be a non-empty field name"),
        (dict(train=str(good), trian="x"), "unknown key(s) 'trian' (did you mean 'train'?)"),
    ]


def test_bad_specs_raise_config_errors_naming_the_problem(tmp_path):
    for kwargs, message in _bad_spec_cases(tmp_path):
        with pytest.raises(ConfigError) as err:
            spec(**kwargs)
        assert message in str(err.value), (kwargs, str(err.value))


BAD_RECORDS = [  # format, records, message, whether Parquet can hold the records
    ("instruction", [INSTRUCTION_RECORDS[0], INSTRUCTION_RECORDS[1], {"instruction": "x", "input": "y"}],
     "record 2 (counting from 0) has no 'output' field (the answer)", True),
    ("instruction", [{"instruction": "x", "output": ["a", "b"]}],
     "record 0 (counting from 0) 'output' is a list", True),
    ("instruction", [{"prompt": "x", "output": "y"}], "has neither 'instruction' nor 'input'", True),
    ("multiple_choice", [MC_RECORDS[0], {"input": "q"}],
     "record 1 (counting from 0) has no 'target_scores' field", True),
    ("multiple_choice", [{"question": "q", "target_scores": {"a": 1}}],
     "record 0 (counting from 0) has no 'input'", True),
    ("multiple_choice", [{"input": "q", "target_scores": {"a": 0, "b": 0}}], "marks no choice correct", True),
    ("multiple_choice", [{"input": "q", "target_scores": ["a", "b"]}], "must map each choice to a score", False),
    ("multiple_choice", [{"input": "q", "target_scores": {}}], "has no choices", False),
    ("generation", [{"input": "q", "target": "a"}, {"input": "q"}], "record 1 (counting from 0) has no 'target'", True),
    ("generation", [{"question": "q", "target": "a"}], "record 0 (counting from 0) has no 'input'", True),
    ("generation", [{"input": "q", "target": []}], "'target' is an empty list", False),
    ("generation", [{"input": "q", "target": [{"a": 1}]}], "'target' must be text or a list of texts", False),
]


@pytest.mark.parametrize(
    "fmt, records, message, suffix",
    [(f, r, m, suffix) for f, r, m, parquet in BAD_RECORDS for suffix in (".jsonl", ".parquet")
     if parquet or suffix == ".jsonl"],
)
def test_bad_records_fail_check_data_and_loading(tmp_path, fmt, records, message, suffix):
    path = tmp_path / f"bad{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    s = spec(train=str(path), format=fmt)
    with pytest.raises(ConfigError) as err:
        check_data(s)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)
    with pytest.raises(ConfigError) as err:  # a worker that skipped the check fails the same way
        load_examples(s, "train")
    assert message in str(err.value)


def test_malformed_files_fail_check_data(tmp_path):
    bad_line = tmp_path / "d.jsonl"
    bad_line.write_text(json.dumps(INSTRUCTION_RECORDS[0]) + "\n{oops\n")
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        check_data(spec(train=str(bad_line)))
    not_records = write_json(tmp_path / "d.json", {"data": INSTRUCTION_RECORDS})
    with pytest.raises(ConfigError, match="top level must be a list of records"):
        check_data(spec(train=str(not_records)))
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ConfigError, match="holds no records"):
        check_data(spec(train=str(empty)))
    with pytest.raises(ConfigError, match="data.eval is not set"):
        load_examples(spec(train=str(write_jsonl(tmp_path / "g.jsonl", INSTRUCTION_RECORDS))), "eval")


# --- byte tokenizer ----------------------------------------------------------------------------

def test_byte_tokenizer_round_trips_and_saves(tmp_path):
    tok = byte_tokenizer()
    assert len(tok) == 256
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (253, 254, 255)
    text = "héllo wörld\n\t日本 🎉 {x} </s> <s> <pad> \x00\x7f"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # id = byte, no specials added
    assert max(ids) < 253 and tok.decode(ids) == text
    assert tok.decode([104, 105, 255], skip_special_tokens=True) == "hi"
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, len(loaded)) == (253, 255, 256)


# --- toy task ----------------------------------------------------------------------------------

def test_toy_task_is_deterministic_and_learnable(tmp_path):
    a = write_toy_task(tmp_path / "a.jsonl", n=64, seed=3)
    b = write_toy_task(tmp_path / "b.jsonl", n=64, seed=3)
    assert a.read_text() == b.read_text()
    records = [json.loads(line) for line in a.read_text().splitlines()]
    assert all(r["output"] == r["input"][::-1] for r in records)

    tok = byte_tokenizer()
    rows = build_train_dataset(spec(train=str(write_toy_task(tmp_path / "t.jsonl", n=256, seed=0)), cutoff_len=96), tok)
    # One thread: on a shared 2-core machine, two threads' barriers can wait on a descheduled peer for ages.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = _train_tiny(rows, tok.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses  # about 5.0 -> 2.3 (answer alphabet and end learnt; copying comes later)


def _train_tiny(rows, pad_id: int, steps: int = 40) -> list[float]:
    model, _ = load_model(ModelSource(kind="tiny", seed=0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        batch = collate(rows.select(torch.randint(len(rows), (16,), generator=gen).tolist()), pad_id)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
