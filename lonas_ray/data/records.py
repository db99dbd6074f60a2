"""Data records: what a valid one is, how multiple-choice scores become choices, and cheap file reading.

Three record forms are understood:

* instruction: ``{instruction, input, output}`` (field names configurable, as
  in Alpaca); the answer is ``output``, instruction and input fill the prompt.
* multiple choice, the BIG-bench form: ``{input, target_scores: {choice: score}}``;
  the choices keep the mapping's order and the answer is the first choice
  with the highest score.
* generation, the BIG-bench form: ``{input, target}``, ``target`` one answer
  or a list of accepted answers; training uses the first, exact match accepts any.

The readers here use only ``json`` and ``pyarrow`` (no Arrow conversion of
whole records), so checking a file on the driver costs a parse and nothing more.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lonas_ray.config_io import ConfigError

SUFFIXES = (".json", ".jsonl", ".parquet")
SCORES_FIELD = "target_scores"
TARGET_FIELD = "target"


def choice_scores(value: Any) -> list[tuple[str, float]]:
    """``target_scores`` as (choice, score) pairs in their stored order; ``ValueError`` if malformed.

    Accepts a mapping (JSON; a Parquet struct, whose missing keys read as None
    and are dropped) or a list of pairs (a Parquet map).
    """
    if isinstance(value, Mapping):
        pairs = [(k, v) for k, v in value.items() if v is not None]
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise ValueError(f"must map each choice to a score, e.g. {{\"yes\": 1, \"no\": 0}}; got {value!r:.80}")
    if not pairs:
        raise ValueError("has no choices")
    for choice, score in pairs:
        if not isinstance(choice, str) or isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise ValueError(f"must map text to a number; got {choice!r}: {score!r}")
    if max(s for _, s in pairs) <= 0:
        raise ValueError("marks no choice correct (every score is <= 0)")
    return [(c, float(s)) for c, s in pairs]


def choices_and_label(value: Any) -> tuple[list[str], int]:
    """The choices of ``target_scores`` in order and the index of the (first) best one."""
    pairs = choice_scores(value)
    scores = [s for _, s in pairs]
    return [c for c, _ in pairs], scores.index(max(scores))


def targets_of(value: Any) -> list[str]:
    """The accepted answers of a generation record's ``target``: one text (or number) or a list of them."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError("is an empty list; give at least one answer")
    for item in items:
        if not _is_text(item):
            raise ValueError(f"must be text or a list of texts; got {item!r:.80}")
    return [str(item) for item in items]


def _present(record: Mapping, name: str) -> bool:
    return record.get(name) is not None


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _bigbench_problem(record: Mapping, input_field: str, field: str, what: str,
                      parse: Callable[[Any], Any]) -> str | None:
    """A BIG-bench record's problem: the question missing, the answer field missing, or ``parse`` rejecting it."""
    if not _present(record, input_field):
        return f"has no '{input_field}' field (the question)"
    if not _present(record, field):
        return f"has no '{field}' field ({what})"
    try:
        parse(record[field])
    except ValueError as exc:
        return f"'{field}' {exc}"
    return None


def record_problem(
    record: Any, fmt: str, *, instruction_field: str, input_field: str, answer_field: str
) -> str | None:
    """What is wrong with one record (a phrase after 'record N'), or None when it is usable."""
    if not isinstance(record, Mapping):
        return f"is a {type(record).__name__}, not an object with named fields"
    if fmt == "multiple_choice":
        return _bigbench_problem(record, input_field, SCORES_FIELD,
                                 "each choice with its score, e.g. {\"yes\": 1, \"no\": 0}", choice_scores)
    if fmt == "generation":
        return _bigbench_problem(record, input_field, TARGET_FIELD, "the answer, or a list of accepted answers",
                                 targets_of)
    if not _present(record, answer_field):
        return f"has no '{answer_field}' field (the answer); set data.answer_field if it is named otherwise"
    if not _is_text(record[answer_field]):
        return f"'{answer_field}' is a {type(record[answer_field]).__name__}, not text"
    if not _present(record, instruction_field) and not _present(record, input_field):
        return (
            f"has neither '{instruction_field}' nor '{input_field}' (the prompt); "
            "set data.instruction_field / data.input_field if they are named otherwise"
        )
    return None


def read_bigbench(path: Path) -> list[dict] | None:
    """The examples of a BIG-bench task file (a JSON object with 'examples'), or None for other files."""
    if path.suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # JSON lines in a .json file
    if isinstance(data, dict) and isinstance(data.get("examples"), list):
        return data["examples"]
    return None


def _json_lines(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None


def iter_file_records(path: Path, columns: Sequence[str] = ()) -> Iterator[Any]:
    """Every record of a .json, .jsonl or .parquet file, in order.

    ``columns`` limits what is read from Parquet (those present in its schema);
    JSON is parsed whole either way.
    """
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ConfigError(f"{path}: not a readable Parquet file ({exc})") from None
        schema = pf.schema_arrow
        wanted = [c for c in columns if c in schema.names] or None
        if wanted is None and columns:
            # None of the fields exist: one cheap column is enough to count the records.
            for batch in pf.iter_batches(columns=schema.names[:1]):
                yield from ({} for _ in range(batch.num_rows))
            return
        # A JSON column (what datasets writes for a Json feature) reads back as text.
        read = wanted or schema.names
        json_columns = [f.name for f in schema if isinstance(f.type, pa.JsonType) and f.name in read]
        for batch in pf.iter_batches(columns=wanted):
            for row in batch.to_pylist():
                for name in json_columns:
                    if row[name] is not None:
                        row[name] = json.loads(row[name])
                yield row
        return
    if path.suffix == ".jsonl":
        yield from _json_lines(path)
        return
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        yield from _json_lines(path)  # JSON lines in a .json file
        return
    if isinstance(data, dict) and isinstance(data.get("examples"), list):
        yield from data["examples"]  # BIG-bench task
    elif isinstance(data, list):
        yield from data
    else:
        raise ConfigError(
            f"{path}: the top level must be a list of records (or a BIG-bench task with an 'examples' list), "
            f"got a {type(data).__name__}"
        )
