"""Directories as ``{relative path: bytes}``: how super-networks and exported models travel through
Ray's object store, so worker nodes need no shared file system with the driver."""

from __future__ import annotations

from pathlib import Path

from lonas_ray.atomic import atomic_dir


def read_tree(directory: str | Path, *, recursive: bool = True,
              skip_suffixes: tuple[str, ...] = ()) -> dict[str, bytes]:
    """``skip_suffixes``: files whose names end so are left out (and not read)."""
    root = Path(directory)
    files = root.rglob("*") if recursive else root.iterdir()
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(files)
            if f.is_file() and not (skip_suffixes and f.name.endswith(skip_suffixes))}


def write_tree(files: dict[str, bytes], directory: str | Path) -> Path:
    """Write ``files`` under ``directory``, which appears whole or not at all."""
    target = Path(directory)
    with atomic_dir(target) as tmp:
        for rel, content in files.items():
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise ValueError(f"refusing to write {rel!r} outside {target}")
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return target
