"""Load a ``DataSpec``'s files as Hugging Face datasets of prompts and answers.

Files are read with ``datasets.load_dataset("json" | "parquet")``. A BIG-bench
task file (a JSON object whose records sit under ``examples``) is read with
``json`` and built with ``Dataset.from_list``; its ``target_scores`` column is
stored as ``datasets.Json``, since every record has other keys and Arrow would
otherwise infer one struct field per distinct choice text. Parquet files with
a map column (``datasets`` cannot read those) are read with pyarrow the same way.

What comes out (``load_examples``):

* ``split="train"``: columns ``prompt``, ``answer`` (for multiple choice, the
  correct choice's text), the rows a trainer tokenizes.
* ``split="eval"``: ``prompt``, ``answer`` for instruction data; ``prompt``,
  ``choices`` (list, the record's order) and ``label`` (index of the correct
  choice) for multiple choice, for log-likelihood scoring; ``prompt``,
  ``answer`` (the first target) and ``targets`` (every accepted answer) for
  generation, for exact match.

Nothing is written to the datasets cache beyond what ``load_dataset`` itself
keeps: the mapped datasets stay in memory (fine-tuning sets are small).
"""

from __future__ import annotations

import logging
import random
import uuid
from pathlib import Path

import datasets

from lonas_ray.config_io import ConfigError
from lonas_ray.data import shipped
from lonas_ray.data.records import (
    SCORES_FIELD,
    TARGET_FIELD,
    choices_and_label,
    iter_file_records,
    read_bigbench,
    targets_of,
)
from lonas_ray.data.spec import DataSpec
from lonas_ray.data.templates import render

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")


def _from_records(examples: list[dict], fields: list[str]) -> datasets.Dataset:
    """Records read without ``datasets`` as a dataset of ``fields`` (absent: None), each a ``Json`` column."""
    from datasets.table import InMemoryTable

    features = datasets.Features({name: datasets.Json() for name in fields})
    columns = {name: [ex.get(name) if isinstance(ex, dict) else None for ex in examples] for name in fields}
    table = InMemoryTable.from_pydict(features.encode_batch(columns), schema=features.arrow_schema)
    # a fresh fingerprint: ``from_list`` would hash the table with dill, whose bytecode dump leaks
    # through Ray Train's print patch into the job's log
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=uuid.uuid4().hex)


def read_source(source: str, spec: DataSpec, split: str = "train") -> datasets.Dataset:
    """The raw records of one source; ``shipped:<task>`` gives its recorded train or test side."""
    fields = list(dict.fromkeys([spec.instruction_field, spec.input_field, spec.answer_field, SCORES_FIELD,
                                 TARGET_FIELD]))
    if shipped.is_shipped(source):
        name = shipped.task_name(source)
        examples = shipped.read_task(name)
        indices = shipped.split_indices(name, "train" if split == "train" else "test")
        return _from_records([examples[i] for i in indices], fields)
    path = Path(source)
    bigbench = read_bigbench(path)
    if bigbench is not None:
        return _from_records(bigbench, fields)
    if path.suffix == ".parquet":
        if _has_map_column(path):
            return _from_records(list(iter_file_records(path, fields)), fields)
        return datasets.load_dataset("parquet", data_files=str(path), split="train", keep_in_memory=True)
    return datasets.load_dataset("json", data_files=str(path), split="train", keep_in_memory=True)


def _has_map_column(path: Path) -> bool:
    """Whether a Parquet file has a map column (Spark writes dicts so), which ``datasets`` cannot read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return any(pa.types.is_map(f.type) for f in pq.read_schema(path))


def _subset(ds: datasets.Dataset, spec: DataSpec) -> datasets.Dataset:
    if spec.max_examples is None or len(ds) <= spec.max_examples:
        return ds
    keep = sorted(random.Random(spec.seed).sample(range(len(ds)), spec.max_examples))
    return ds.select(keep)


def load_examples(spec: DataSpec, split: str = "train") -> datasets.Dataset:
    """Prompts and answers (train) or prompts and choices (eval, multiple choice); see the module doc."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    source = spec.train if split == "train" else spec.eval
    if source is None:
        raise ConfigError("data.eval is not set: name an evaluation file or shipped:<task> in the data section")
    raw = read_source(source, spec, split)
    template = spec.prompt_template
    multiple_choice = spec.format == "multiple_choice"
    keep_choices = multiple_choice and split == "eval"

    def convert(record: dict, index: int) -> dict:
        problem = spec.record_problem(record)
        if problem:
            raise ConfigError(f"data.{split} {source}: record {index} (counting from 0) {problem}")
        instruction = record.get(spec.instruction_field)
        if multiple_choice:
            choices, label = choices_and_label(record[SCORES_FIELD])
            prompt = render(template, instruction=instruction, input=record[spec.input_field], choices=choices)
            if keep_choices:
                return {"prompt": prompt, "choices": choices, "label": label}
            return {"prompt": prompt, "answer": choices[label]}
        if spec.format == "generation":
            targets = targets_of(record[TARGET_FIELD])
            prompt = render(template, instruction=instruction, input=record[spec.input_field])
            if split == "eval":
                return {"prompt": prompt, "answer": targets[0], "targets": targets}
            return {"prompt": prompt, "answer": targets[0]}
        prompt = render(template, instruction=instruction, input=record.get(spec.input_field))
        return {"prompt": prompt, "answer": str(record[spec.answer_field])}

    examples = raw.map(
        convert, with_indices=True, remove_columns=raw.column_names, keep_in_memory=True,
        desc=f"{split} prompts", new_fingerprint=uuid.uuid4().hex,  # in memory, never cached: skip dill hashing
    )
    if len(examples) == 0:
        raise ConfigError(f"data.{split} {source}: no records")
    examples = _subset(examples, spec)
    log.info("%s data: %d examples from %s", split, len(examples), source)
    return examples
