"""Every case of ``tests/bad_inputs.py`` through ``lonas-ray`` itself: exit 2 with the problem and the fix named, no
traceback, nothing written or overwritten; and ``docs/bad_input.md`` is the catalogue's current render."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bad_inputs import CASES, DOC, render
from helpers import lonas_cli_batch

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file and directory under ``directory``: its path and its content's hash ('dir' for a directory)."""
    return {str(p.relative_to(directory)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    tmp, argvs, before = tmp_path_factory.mktemp("bad-input"), [], []
    for i, case in enumerate(CASES):
        d = tmp / f"case{i}"
        d.mkdir()
        argvs.append(case.setup(d))
        before.append(snapshot(d))
    return tmp, lonas_cli_batch(argvs, timeout=800), before


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c.what for c in CASES])
def test_bad_input_exits_2_naming_the_problem_without_a_traceback_and_writes_nothing(refused, i):
    tmp, runs, before = refused
    run, case = runs[i], CASES[i]
    assert run["returncode"] == 2, run["stderr"][-3000:]
    assert case.message in run["stderr"], run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    assert snapshot(tmp / f"case{i}") == before[i]


def test_the_catalogue_covers_every_kind_of_input_with_at_least_30_cases():
    from bad_inputs import DUPLICATES, PREFLIGHT, TYPES, URIS

    assert len(CASES) >= 30
    assert {c.category for c in CASES} == {"config", "model source", "data", "checkpoints and results", "output",
                                           TYPES, DUPLICATES, URIS, PREFLIGHT}
    assert len({c.what for c in CASES}) == len(CASES)
    # issue 39: at least three cases of each class, and wrong types in at least three keys of every config section
    # (zero_shot has one key)
    for category in (TYPES, DUPLICATES, URIS, PREFLIGHT):
        assert sum(c.category == category for c in CASES) >= 3, category
    sections = [c.what.split(".")[0] for c in CASES if c.category == TYPES]
    for section in ("train", "pools", "search", "quality", "data", "supernet", "export", "baseline"):
        assert sections.count(section) >= 3, section


def test_the_docs_table_is_the_catalogues_current_render():
    assert DOC.read_text() == render(), "docs/bad_input.md is stale: run `python tests/bad_inputs.py`"
