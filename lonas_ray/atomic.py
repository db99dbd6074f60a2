"""Files and directories that appear whole or not at all.

A resumed run, another process or a user reading the output directory never sees
half a result, and a crash mid-write leaves the previous version in place: the
new one is written beside its target and then renamed over it. Readers of a file
that may be replaced while they read take one snapshot of it (``read_parquet``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """A fresh sibling directory to fill; it replaces ``target`` on success and is removed on error."""
    target = Path(target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` on success and is removed on error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def read_parquet(path: str | Path):
    """A Parquet table read from one snapshot of the file's bytes.

    ``pq.read_table(path)`` opens the path more than once (footer, then pages), so a
    reader racing an atomic replace can pair one version's footer with the next's
    pages and fail to deserialize them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(Path(path).read_bytes()))
