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
* ``latencies`` also carries, per runtime, every measured repeat (``samples_ms``, the speed-ups' intervals),
  the p10, and the hardware lease the timing held (``lease``, ``lease_wait_s``: ``lonas_ray.lease``).
* ``outcomes`` (JSON, accuracy metrics only) is which examples were right, 0/1 in the order of the seeded
  subset the row was scored on: rows scored on the same examples are compared pair by pair (the deployment
  verdict's paired intervals). Null for other metrics and in tables written before it existed.
* ``profile`` (JSON) is where the evaluation's time and memory went: ``switch_s`` (slice and merge the
  sub-network, count it), ``score_s``, ``time_s`` (every runtime's timing, lease waits included), ``load_s``
  (the evaluator's own load: on its first row, 0 after, so a pool's rows sum to its evaluators' whole time), and
  the evaluator process's ``peak_rss_mib`` / ``peak_gpu_mib`` so far (``lonas_ray.memory``). Null in tables
  written before it existed.
* ``node_id`` is the Ray node that measured the row (placement is auditable).
* The numeric measurements may be null (e.g. latency not measured on a pool);
  the identity columns may not.

On disk ``results.parquet`` is a directory of Parquet parts (``part-*.parquet``), the layout pyarrow, pandas,
DuckDB and Spark read as one table (``pq.read_table("results.parquet")``): an append writes one small part, so it
costs the same at a thousand rows as at ten, where rewriting one file grew with the table. A part is written
beside its name and renamed into place (``atomic.atomic_file``; the temporary's leading dot hides it from
readers), so a crash mid-append never leaves half a row. ``compact_results`` folds the parts into one when a
search ends; a reader that races it may see a row twice (kept once) or a part vanish (it lists again). A file
written before the directory layout is read as it is and becomes the first part at the next append.

Appends are not locked: one writer (the search driver) appends, trials report to it (pools searched at once
append under one lock in the driver), and it keeps the keys it has seen so an append reads nothing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
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
    pa.field("outcomes", pa.string()),
    pa.field("profile", pa.string()),
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


PART_GLOB = "part-*.parquet"


def _legacy(path: Path) -> Path:
    """Where a one-file table waits while it becomes the first part (a crash then leaves it readable here)."""
    return path.with_name(f".{path.name}.legacy")


def _check_columns(table: pa.Table, where: Path) -> pa.Table:
    if "phase" not in table.column_names:  # written before rows said their phase: all were counted as search
        table = table.append_column("phase", pa.array(["search"] * table.num_rows, pa.string()))
    if "outcomes" not in table.column_names:  # written before rows kept their examples' outcomes
        table = table.append_column("outcomes", pa.nulls(table.num_rows, pa.string()))
    if "profile" not in table.column_names:  # written before rows said where their time went
        table = table.append_column("profile", pa.nulls(table.num_rows, pa.string()))
    if set(table.column_names) != set(SCHEMA.names):
        raise ResultsError(
            f"{where}: columns {sorted(table.column_names)} do not match the results schema "
            f"{sorted(SCHEMA.names)}; it was written by another version or tool"
        )
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ResultsError(f"{where}: column types do not match the results schema ({exc})") from exc


def _read_file(path: Path) -> pa.Table:
    try:
        table = read_parquet(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ResultsError(
            f"{path}: not a readable Parquet results file ({exc}); move it aside or restore it from a backup"
        ) from exc
    return _check_columns(table, path)


def _keys(table: pa.Table) -> list[tuple[str, str]]:
    """A table's row keys, (subnet_id, pool): a sub-network is evaluated once on a pool."""
    return list(zip(table["subnet_id"].to_pylist(), table["pool"].to_pylist()))


def _unique(table: pa.Table) -> pa.Table:
    """Each (subnet_id, pool) once: a reader that lists the parts while they are compacted sees some rows twice."""
    keys = _keys(table)
    if len(set(keys)) == len(keys):
        return table
    first: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return table.take(sorted(first.values()))


def read_results(path: str | Path) -> pa.Table:
    """The results table at ``path``; an empty table with ``SCHEMA`` when it does not exist yet."""
    path = Path(path)
    if path.is_file():
        return _read_file(path)
    if not path.exists():
        legacy = _legacy(path)
        return _read_file(legacy) if legacy.is_file() else SCHEMA.empty_table()
    import pyarrow.dataset as ds

    for _ in range(100):  # a part compacted away between listing and reading: list again
        files = sorted(str(p) for p in path.glob(PART_GLOB))
        if not files:
            return SCHEMA.empty_table()
        try:  # parts never change once in place, so one dataset read of them all (no snapshot needed)
            table = ds.dataset(files, format="parquet").to_table()
        except FileNotFoundError:
            time.sleep(0.01)  # the compaction removing the parts is under way
            continue
        except (pa.ArrowException, OSError) as exc:
            raise ResultsError(
                f"{path}: a part is not a readable Parquet results part ({exc}); move the directory aside or "
                "restore it from a backup"
            ) from exc
        return _unique(_check_columns(table, path))
    raise ResultsError(f"{path}: its parts kept changing while being read; is another process compacting it?")


# keys already in a table this process appends to, by path, with the directory's (inode, mtime) after this process's
# last write: an append reads nothing while they hold; a table another process changed, or one removed and made
# again, is read afresh
_KEYS: dict[Path, tuple[tuple[int, int], set[tuple[str, str]]]] = {}


def _as_directory(path: Path) -> None:
    """Turn a one-file table (written before the directory layout) into a directory whose first part it is."""
    if not path.is_file():
        path.mkdir(parents=True, exist_ok=True)
        return
    table = _read_file(path)  # raises on a corrupt file before anything moves
    staging = path.with_name(f".{path.name}.partial")
    staging.mkdir(exist_ok=True)
    pq.write_table(table, staging / "part-0000000000000000000-legacy.parquet")
    os.replace(path, _legacy(path))
    os.replace(staging, path)
    _legacy(path).unlink()


def _new_part(path: Path) -> Path:
    """A part's name: sorted by when it was written, unique across writers."""
    return path / f"part-{time.time_ns():019d}-{uuid.uuid4().hex[:8]}.parquet"


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _known_keys(path: Path) -> set[tuple[str, str]]:
    cached = _KEYS.get(path)
    if cached is None or cached[0] != _stamp(path):
        table = read_results(path)
        cached = (_stamp(path), set(_keys(table)))
        _KEYS[path] = cached
    return cached[1]


def append_results(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` to the table at ``path`` as one new part, atomically; on any error nothing is written."""
    if not rows:
        return
    path = Path(path).absolute()
    new = _rows_to_table(rows)
    if not path.is_dir():
        if _legacy(path).is_file() and not path.exists():  # a conversion cut short: finish it
            os.replace(_legacy(path), path)
        _as_directory(path)
    seen, batch = _known_keys(path), set()
    keys = _keys(new)
    for i, key in enumerate(keys):
        if key in seen or key in batch:
            raise ResultsError(
                f"results row {i}: subnet {key[0]} is already evaluated on pool {key[1]}; "
                "check evaluated_ids before evaluating"
            )
        batch.add(key)
    with atomic_file(_new_part(path)) as tmp:
        pq.write_table(new, tmp)
    seen.update(keys)
    _KEYS[path] = (_stamp(path), seen)


def compact_results(path: str | Path) -> None:
    """Fold the parts of the table at ``path`` into one (fewer files to list, read and upload); the rows as they
    were. The new part is in place before the old ones go, so a reader never misses a row."""
    path = Path(path)
    parts = sorted(path.glob(PART_GLOB)) if path.is_dir() else []
    if len(parts) < 2:
        return
    table = pa.concat_tables([_read_file(p) for p in parts])
    with atomic_file(_new_part(path)) as tmp:
        pq.write_table(table, tmp)
    for p in parts:
        p.unlink()


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
