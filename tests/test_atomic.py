"""Atomic files and directories: a failed write leaves the previous version and no debris."""

import json
import threading
import time

import pytest

from lonas_ray.atomic import atomic_dir, atomic_file, write_json


def test_a_directory_is_replaced_whole_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_directory_write_keeps_the_old_one_and_removes_the_partial(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old" and not (target / "half.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_file_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "stages.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("boom")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stages.json"]


def test_results_read_while_the_search_appends_are_always_whole_tables(tmp_path):
    """A reader (a test, a user, a dashboard script) racing the driver's appends and compaction never sees a broken
    table, a row twice or a row lost."""
    from lonas_ray.search.results import SCHEMA, append_results, compact_results, read_results

    path = tmp_path / "results.parquet"
    row = {name: None for name in SCHEMA.names}
    row.update(subnet_id="s0", config="{}", pool="p", phase="search", quality_metric="mc_accuracy", timestamp=0.0)
    append_results(path, [row])
    done = threading.Event()
    errors: list[Exception] = []
    counts: list[int] = []

    def read_until_done():
        while not done.is_set():
            try:
                counts.append(read_results(path).num_rows)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for i in range(1, 150):
            append_results(path, [dict(row, subnet_id=f"s{i}")])
            time.sleep(0.005)  # rows come as trials finish
            if i == 75:
                compact_results(path)  # and the parts are folded into one while the reader reads
    finally:
        done.set()
        reader.join(timeout=60)
    assert not errors, errors[:3]
    assert len(counts) > 10 and counts == sorted(counts)
    assert read_results(path).num_rows == 150
