"""The results table: one Parquet file, one row per (sub-network, evaluation pool).

This is where the search meets the Pareto and export stages, so its columns
are a contract (``SCHEMA``); nothing downstream reads a trial's internals.

* ``subnet_id`` is the sub-network's id (``SearchSpace.subnet_id``) and
  ``config`` its configuration as a JSON string, so a row is self-contained.
* ``phase`` says why the row was evaluated: ``search`` (the pool's own search,
  which its budget counts) or ``cross`` (another pool's front member measured on
  this pool, see ``driver.follow_up``). A file written before this column existed
  is read with every row as ``search``.
* ``pool`` names the evaluation set; ``(subnet_id, pool)`` is the cache key:
  a configuration is never evaluated twice on a pool (``evaluated_ids``), and
  ``append_results`` refuses a second row for a key.
* ``timestamp`` is float64 seconds since the Unix epoch (``time.time()``):
  unambiguous (always UTC), sortable, and the same in pandas, Arrow and JSON.
* ``latency_ms`` / ``latency_p90_ms`` are one request (prefill + decode) in
  the pool's first runtime (``latency_runtime``); ``prefill_ms`` and
  ``decode_ms`` (per token) are its medians; ``latencies`` (JSON) holds every
  runtime measured, e.g. the eager figure next to the static-cache one.
* ``loss`` is the answer loss (per-token NLL of the right answer); ``task_loss``
  the loss that tracks correctness (multiple choice: the cross-entropy of the
  choice decision; otherwise the answer loss), see ``lonas_ray.search.quality``.
* ``params`` / ``nonzero_params`` / ``macs`` count the merged sub-network;
  ``weight_bytes`` its tensors as exported (INT-quantized linears at their
  bits plus one scale a group; a sparse model's zeros are stored, so they
  count), see ``lonas_ray.counting``.
* ``node_id`` is the Ray node that measured the row (placement is auditable).
* The numeric measurements may be null (e.g. latency not measured on a pool);
  the identity columns may not.

Appends are atomic (``atomic.atomic_file``: written beside the table, then renamed over it),
so a crash mid-write never leaves a half-written table. They are not locked:
one writer (the search driver) appends, trials report to it (pools searched at once append under one lock
in the driver).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lonas_ray.atomic import atomic_file, read_parquet
from lonas_ray.config_io import InputError

SCHEMA = pa.schema([
    pa.field("subnet_id", pa.string(), nullable=False),
    pa.field("config", pa.string(), nullable=False),
    pa.field("pool", pa.string(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
    pa.field("quality", pa.float64()),
    pa.field("quality_metric", pa.string(), nullable=False),
    pa.field("loss", pa.float64()),
    pa.field("task_loss", pa.float64()),
    pa.field("latency_ms", pa.float64()),
    pa.field("latency_p90_ms", pa.float64()),
    pa.field("latency_runtime", pa.string()),
    pa.field("prefill_ms", pa.float64()),
    pa.field("decode_ms", pa.float64()),
    pa.field("latencies", pa.string()),
    pa.field("params", pa.int64()),
    pa.field("nonzero_params", pa.int64()),
    pa.field("macs", pa.int64()),
    pa.field("weight_bytes", pa.int64()),
    pa.field("eval_examples", pa.int64()),
    pa.field("node_id", pa.string()),
    pa.field("eval_s", pa.float64()),
    pa.field("timestamp", pa.float64(), nullable=False),
])


PHASES = ("search", "cross")


class ResultsError(InputError, ValueError):
    """A results row or file breaks the contract; the message names the column or path and the fix."""


def _rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validate ``rows`` against ``SCHEMA`` and build a table, naming the first bad row and column."""
    names = set(SCHEMA.names)
    for i, row in enumerate(rows):
        missing = [n for n in SCHEMA.names if n not in row]
        unknown = sorted(set(row) - names)
        if missing or unknown:
            parts = [f"missing column(s) {', '.join(missing)}"] if missing else []
            parts += [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
            raise ResultsError(f"results row {i}: {'; '.join(parts)}; the columns are {', '.join(SCHEMA.names)}")
        try:
            json.loads(row["config"])
        except (TypeError, ValueError) as exc:
            raise ResultsError(f"results row {i}: column config must be a JSON string ({exc})") from exc
        if row["phase"] not in PHASES:
            raise ResultsError(f"results row {i}: column phase is {row['phase']!r}; it must be one of {PHASES}")
    arrays = []
    for field in SCHEMA:
        values = [row[field.name] for row in rows]
        if not field.nullable and any(v is None for v in values):
            raise ResultsError(f"results row {values.index(None)}: column {field.name} must not be null")
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise ResultsError(f"results: column {field.name} must hold {field.type} values ({exc})") from exc
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def read_results(path: str | Path) -> pa.Table:
    """The results table at ``path``; an empty table with ``SCHEMA`` when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        return SCHEMA.empty_table()
    try:
        table = read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsError(
            f"{path}: not a readable Parquet results file ({exc}); move it aside or restore it from a backup"
        ) from exc
    if "phase" not in table.column_names:  # written before rows said their phase: all were counted as search
        table = table.append_column("phase", pa.array(["search"] * table.num_rows, pa.string()))
    if set(table.column_names) != set(SCHEMA.names):
        raise ResultsError(
            f"{path}: columns {sorted(table.column_names)} do not match the results schema "
            f"{sorted(SCHEMA.names)}; it was written by another version or tool"
        )
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ResultsError(f"{path}: column types do not match the results schema ({exc})") from exc


def append_results(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` to the table at ``path`` atomically; on any error the old file is left as it was."""
    if not rows:
        return
    path = Path(path)
    new = _rows_to_table(rows)
    old = read_results(path)  # raises on a corrupt file before anything is written
    seen = set(zip(old["subnet_id"].to_pylist(), old["pool"].to_pylist()))
    for i, key in enumerate(zip(new["subnet_id"].to_pylist(), new["pool"].to_pylist())):
        if key in seen:
            raise ResultsError(
                f"results row {i}: subnet {key[0]} is already evaluated on pool {key[1]}; "
                "check evaluated_ids before evaluating"
            )
        seen.add(key)
    table = pa.concat_tables([old, new])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def check_space(path: str | Path, dims: Mapping[str, Sequence[Any]]) -> None:
    """``ResultsError`` when a row of the table at ``path`` is not a sub-network of the space whose dimensions and
    choices are ``dims``: a results file of another search (another space or model) must not be counted against
    this one's budget nor handed to its searcher."""
    table = read_results(path)
    for i, (sid, text) in enumerate(zip(table["subnet_id"].to_pylist(), table["config"].to_pylist())):
        config = json.loads(text)
        if set(config) != set(dims) or any(config[k] not in dims[k] for k in dims):
            other = sorted(set(config) ^ set(dims))
            why = (f"its dimensions differ ({', '.join(other[:4])}{', ...' if len(other) > 4 else ''})" if other
                   else "a value lies outside this space's choices")
            raise ResultsError(
                f"{path}: row {i} (sub-network {sid}) is not from this search space: {why}. The file belongs to "
                "another search (another space or model): give this one a new output directory, or move the "
                "file aside")


def evaluated_ids(path: str | Path, pool: str) -> set[str]:
    """Ids of the sub-networks already evaluated on ``pool``: the cache that keeps a search from repeating work."""
    table = read_results(path)
    return set(table.filter(pc.equal(table["pool"], pool))["subnet_id"].to_pylist())
