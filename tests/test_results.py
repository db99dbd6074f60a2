"""The results table: append/read round trip, row validation, atomic appends, corrupt files, the evaluation cache."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lonas_ray.search import results
from lonas_ray.search.results import SCHEMA, ResultsError, append_results, evaluated_ids, read_results


def row(subnet_id="s0", pool="val", **overrides):
    base = {
        "subnet_id": subnet_id, "config": json.dumps({"rank.0.qv": 8}), "pool": pool, "phase": "search",
        "quality": 0.5, "quality_metric": "accuracy", "loss": 1.25, "task_loss": 0.9,
        "latency_ms": 3.5, "latency_p90_ms": 4.0,
        "latency_runtime": "static", "prefill_ms": 1.5, "decode_ms": 0.5, "latencies": "{}",
        "node_id": "n0", "eval_s": 0.1, "params": 1000, "nonzero_params": 900, "macs": 20000, "weight_bytes": 4000,
        "eval_examples": 64, "outcomes": json.dumps([1, 0, 1]), "profile": None, "timestamp": 1.7e9,
    }
    return {**base, **overrides}


def tree(path) -> dict[str, bytes]:
    """What a table is on disk: its parts' bytes by name (a one-file table: its own)."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_missing_file_reads_as_an_empty_table_with_the_schema(tmp_path):
    table = read_results(tmp_path / "none.parquet")
    assert table.num_rows == 0 and table.schema == SCHEMA
    assert evaluated_ids(tmp_path / "none.parquet", "val") == set()


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "sub" / "results.parquet"
    first = [row("s0"), row("s1", latency_ms=None)]
    append_results(path, first)
    append_results(path, [row("s2", pool="test")])
    append_results(path, [])  # a no-op
    table = read_results(path)
    assert table.schema == SCHEMA
    assert table.to_pylist() == first + [row("s2", pool="test")]
    assert [p.name for p in path.parent.iterdir()] == ["results.parquet"]  # no temp files left
    assert len(list(path.glob("part-*.parquet"))) == len(list(path.iterdir())) == 2  # a part an append
    assert pq.read_table(path).num_rows == 3  # the directory reads as one table with stock tools too


def test_an_append_reads_nothing_already_written_and_compaction_keeps_every_row(tmp_path, monkeypatch):
    """Why an append costs the same at a thousand rows as at ten: it writes one part and reads no earlier one
    (the keys it has seen are kept); compaction then folds the parts into one, every row as it was."""
    path = tmp_path / "r.parquet"
    append_results(path, [row("s0")])
    reads = []
    real = results.read_parquet
    monkeypatch.setattr(results, "read_parquet", lambda p: reads.append(p) or real(p))
    for i in range(1, 20):
        append_results(path, [row(f"s{i}")])
    assert reads == [] and len(list(path.glob("part-*.parquet"))) == 20
    with pytest.raises(ResultsError, match="s3 is already evaluated"):  # the kept keys still refuse a repeat
        append_results(path, [row("s3")])
    before = read_results(path).to_pylist()
    results.compact_results(path)
    assert [p.name for p in path.iterdir()] == [p.name for p in path.glob("part-*.parquet")] and \
        len(list(path.iterdir())) == 1
    assert read_results(path).to_pylist() == before


def test_a_table_changed_or_made_again_behind_the_writers_back_is_read_afresh(tmp_path):
    """The kept keys hold only while nobody else wrote: a table removed and made again takes a row it had."""
    import shutil

    path = tmp_path / "r.parquet"
    append_results(path, [row("s0"), row("s1")])
    shutil.rmtree(path)
    append_results(path, [row("s0")])  # not "already evaluated": the keys were of the removed table
    pq.write_table(pa.Table.from_pylist([row("s5")], schema=SCHEMA), path / "part-9-other.parquet")  # another writer
    with pytest.raises(ResultsError, match="s5 is already evaluated"):
        append_results(path, [row("s5")])
    assert sorted(read_results(path)["subnet_id"].to_pylist()) == ["s0", "s5"]


def test_a_reader_racing_compaction_sees_each_row_once(tmp_path):
    path = tmp_path / "r.parquet"
    append_results(path, [row("s0"), row("s1")])
    append_results(path, [row("s2")])
    parts = sorted(path.glob("part-*.parquet"))
    both = pa.concat_tables([pq.read_table(p) for p in parts])
    pq.write_table(both, path / "part-9999999999999999999-compact.parquet")  # written, the old not yet removed
    assert read_results(path)["subnet_id"].to_pylist() == ["s0", "s1", "s2"]


def test_a_one_file_table_becomes_the_first_part_even_when_cut_short(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([row("s0")], schema=SCHEMA), path)
    append_results(path, [row("s1")])
    assert path.is_dir() and read_results(path)["subnet_id"].to_pylist() == ["s0", "s1"]
    # a conversion cut between its two renames leaves the old file beside the name: still read, then finished
    cut = tmp_path / "cut.parquet"
    pq.write_table(pa.Table.from_pylist([row("s0")], schema=SCHEMA), tmp_path / ".cut.parquet.legacy")
    assert read_results(cut)["subnet_id"].to_pylist() == ["s0"]
    append_results(cut, [row("s1")])
    assert read_results(cut)["subnet_id"].to_pylist() == ["s0", "s1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.parquet", "r.parquet"]


def test_a_row_of_an_unknown_phase_is_refused_naming_the_phases(tmp_path):
    path = tmp_path / "r.parquet"
    with pytest.raises(ResultsError, match=r"row 0: column phase is 'final'; it must be one of \('search', 'cross'\)"):
        append_results(path, [row("s0", phase="final")])
    assert not path.exists()


def test_a_file_written_before_rows_had_a_phase_reads_every_row_as_search(tmp_path):
    path = tmp_path / "old.parquet"
    old = pa.Table.from_pylist([row("s0"), row("s1")], schema=SCHEMA).drop_columns(["phase"])
    pq.write_table(old, path)
    assert read_results(path)["phase"].to_pylist() == ["search", "search"]
    append_results(path, [row("s2", phase="cross")])  # and it is continued with the column
    assert read_results(path)["phase"].to_pylist() == ["search", "search", "cross"]


def test_a_file_written_before_rows_kept_their_outcomes_reads_them_as_null(tmp_path):
    path = tmp_path / "results.parquet"
    old = pa.Table.from_pylist([row("s0"), row("s1")], schema=SCHEMA).drop_columns(["outcomes"])
    pq.write_table(old, path)
    assert read_results(path)["outcomes"].to_pylist() == [None, None]
    append_results(path, [row("s2")])
    assert read_results(path)["outcomes"].to_pylist() == [None, None, "[1, 0, 1]"]


def test_a_file_written_before_rows_kept_their_profile_reads_it_as_null(tmp_path):
    path = tmp_path / "results.parquet"
    old = pa.Table.from_pylist([row("s0")], schema=SCHEMA).drop_columns(["outcomes", "profile"])
    pq.write_table(old, path)
    assert read_results(path)["profile"].to_pylist() == [None]
    append_results(path, [row("s1", profile='{"score_s": 1.0}')])
    assert read_results(path)["profile"].to_pylist() == [None, '{"score_s": 1.0}']


def test_evaluated_ids_are_per_pool(tmp_path):
    path = tmp_path / "r.parquet"
    append_results(path, [row("s0", "val"), row("s1", "val"), row("s0", "test")])
    assert evaluated_ids(path, "val") == {"s0", "s1"}
    assert evaluated_ids(path, "test") == {"s0"}
    assert evaluated_ids(path, "other") == set()


def test_the_same_subnet_is_never_appended_twice_on_a_pool(tmp_path):
    path = tmp_path / "r.parquet"
    append_results(path, [row("s0")])
    with pytest.raises(ResultsError, match="s0 is already evaluated on pool val"):
        append_results(path, [row("s1"), row("s0")])
    with pytest.raises(ResultsError, match="s1 is already evaluated"):
        append_results(path, [row("s1"), row("s1")])
    assert read_results(path)["subnet_id"].to_pylist() == ["s0"]


@pytest.mark.parametrize("bad, message", [
    ({k: v for k, v in row().items() if k != "macs"}, "missing column.*macs"),
    ({**row(), "accuracy": 0.3}, "unknown column.*accuracy"),
    (row(config="{not json"), "config must be a JSON string"),
    (row(config={"a": 1}), "config must be a JSON string"),
    (row(pool=None), "pool must not be null"),
    (row(params="many"), "params must hold int64"),
    (row(quality="high"), "quality must hold double"),
])
def test_bad_rows_raise_naming_the_column_and_leave_the_file_alone(tmp_path, bad, message):
    path = tmp_path / "r.parquet"
    append_results(path, [row("s0")])
    before = tree(path)
    with pytest.raises(ValueError, match=message):
        append_results(path, [row("s1"), bad])
    assert tree(path) == before


def test_a_failed_write_leaves_the_old_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "r.parquet"
    append_results(path, [row("s0")])
    before = tree(path)

    def half_write(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(results.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        append_results(path, [row("s1")])
    assert tree(path) == before  # no temporary part left either
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]


def test_a_corrupt_file_raises_naming_the_path_and_is_left_untouched(tmp_path):
    path = tmp_path / "r.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(ResultsError, match="r.parquet: not a readable Parquet"):
        read_results(path)
    with pytest.raises(ResultsError, match="r.parquet"):
        append_results(path, [row("s0")])
    with pytest.raises(ResultsError, match="r.parquet"):
        evaluated_ids(path, "val")
    assert path.read_bytes() == b"this is not parquet"


def test_a_parquet_file_with_other_columns_is_rejected(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"subnet_id": ["s0"]}), path)
    with pytest.raises(ResultsError, match="do not match the results schema"):
        read_results(path)
