"""Atomic files and directories: a failed write leaves the previous version and no debris."""

import json

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
