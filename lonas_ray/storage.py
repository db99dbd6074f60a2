"""Run output on storage every node reaches: a local path, or a URI such as ``s3://bucket/run``.

On a cluster without a shared disk the output directory must live where every node (and a re-submitted
job on a new head) can reach it. A URI output works like this:

- the driver works in a local copy (``$LONAS_RAY_CACHE/runs/<name>``, default ``~/.cache/lonas_ray/runs/``), which
  it fills from the URI when it starts (``pull``: resume after the head or its disk is gone) and mirrors
  back to it while it runs (``push``: every few seconds and at the end of each stage, so a killed job loses
  seconds of work, not a stage);
- Ray Train writes checkpoints straight to ``<uri>/ray_results`` (each worker uploads its own part) and
  resumes from there; training workers upload their ``ranks/`` logs; nothing a worker needs comes from
  the driver's disk (the prepared super-network and the teacher travel through Ray's object store);
- merge tasks upload each exported model straight to ``<uri>/models/<name>/`` (``upload_tree``, its manifest
  last) and hand the driver only the small files: a model's weights (``WEIGHT_SUFFIXES`` under
  ``WEIGHTS_UNDER``) never pass through the driver, its working copy or Ray's object store.

Any filesystem ``pyarrow.fs.FileSystem.from_uri`` knows works (``s3://``, ``gs://``, ``hdfs://``); its
credentials come from the usual environment (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server), which must reach the
driver and every node (``ray start``'s environment or the job's ``runtime_env.env_vars``). A path is a local
directory, and on a cluster it must be a mount every node shares.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lonas_ray.config_io import ConfigError

log = logging.getLogger(__name__)

# written by others straight to the URI (Ray Train's checkpoints, the training workers' logs), in the run or
# in a sub-run (baseline/): never deleted by the mirror
REMOTE_OWNED = ("ray_results/train/", "ranks/")
PUSH_EVERY_S = 5.0
# exported models' weights: written to the URI by the merge tasks, never held in the driver's working copy
WEIGHTS_UNDER = ("models/", "candidates/")
WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def is_uri(output: str | os.PathLike) -> bool:
    return isinstance(output, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", output) is not None \
        and not output.startswith("file://")


# the object stores and file systems pyarrow opens by URI; which need a bucket (or container) before the path
SCHEMES = {"s3": True, "gs": True, "gcs": True, "abfs": True, "abfss": True, "hdfs": False, "viewfs": False}
EXAMPLE = "s3://BUCKET/lonas-ray/run1"


def check_uri(uri: str, key: str = "output") -> None:
    """``ConfigError`` naming ``key``, the URI and the fix for every malformed form: an unknown scheme, no bucket,
    no path inside the bucket (a run must not own a whole bucket), query options or a fragment (endpoint and
    credentials come from the environment, never from the URI, so they never land in logs or the run's record)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"{key} '{uri}': unknown storage scheme '{scheme}://'; use one of "
                          f"{', '.join(s + '://' for s in SCHEMES)} (e.g. {EXAMPLE}), or a local path")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key} '{uri}' carries options after '?' (or a '#' fragment): give the plain URI "
                          f"{scheme}://{parts.netloc}{parts.path} and set the endpoint and credentials in the "
                          "environment (for S3: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    if SCHEMES[scheme] and not parts.netloc:
        raise ConfigError(f"{key} '{uri}' names no bucket; give the bucket and a path in it, e.g. {EXAMPLE}")
    if not parts.path.strip("/"):
        where = f"bucket '{parts.netloc}'" if SCHEMES[scheme] else "file system"
        raise ConfigError(f"{key} '{uri}' names no path inside the {where}; give one for this run, e.g. "
                          f"{scheme}://{parts.netloc or 'namenode'}/lonas-ray/run1")


def filesystem(uri: str, key: str = "output"):
    """(pyarrow filesystem, path inside it) of ``uri``, or a ConfigError that names the URI and the fix."""
    import pyarrow.fs as pafs

    check_uri(uri, key)
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises ArrowInvalid, OSError, ValueError)
        raise ConfigError(f"{key} '{uri}' is not a storage URI pyarrow can open ({exc}); give a local path or "
                          "a URI such as s3://bucket/run (credentials and endpoint from the environment)") from None


def check_not_in_job_copy(output: str | os.PathLike, cwd: str | os.PathLike | None = None,
                          key: str = "output") -> None:
    """A relative output inside a job's unpacked ``--working-dir`` lands in Ray's temporary copy of the code,
    named by its hash: the next job with changed code cannot see it, and resume is lost."""
    cwd = Path(cwd or os.getcwd())
    if not Path(output).is_absolute() and "runtime_resources" in cwd.parts:
        raise ConfigError(f"{key} '{output}' is relative, and this job runs in Ray's temporary copy of its working "
                          f"directory ({cwd}), which the next job with changed code cannot see: give an absolute "
                          "path every node shares, or a URI such as s3://bucket/run")


def _under(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(("/" + rel).find("/" + p) >= 0 for p in prefixes)


def _skip(rel: str) -> bool:
    """Work in progress that must not be mirrored: atomic writes' temporaries."""
    parts = rel.split("/")
    return any(p.endswith(".partial") or (p.startswith(".") and p.endswith(".tmp")) for p in parts)


def local_files(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under ``root``."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if not _skip(rel):
                try:
                    st = p.stat()
                except FileNotFoundError:  # replaced while we looked
                    continue
                found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def _exists(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _put(fs, local: Path, path: str) -> None:
    """``local`` to ``path`` of ``fs`` (whole: object stores have no append), directories made as needed."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)


def _get(fs, path: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)


def is_weights(rel: str) -> bool:
    """A file a merge task leaves at the URI only (a model's tensors), by its path in the run."""
    return _under(rel, WEIGHTS_UNDER) and rel.endswith(WEIGHT_SUFFIXES)


def _last_ordered(rels, last: str | None) -> list[str]:
    """``rels`` sorted with ``last`` (a manifest) at the end: a directory copied in this order and cut short
    never holds its manifest, so it never looks whole."""
    return sorted(rels, key=lambda rel: (rel == last, rel))


def upload_tree(src: Path, uri: str, last: str | None = None) -> None:
    """Replace the directory at ``uri`` by ``src``'s files, ``last`` uploaded after all the others."""
    fs, root = filesystem(uri)
    if _exists(fs, root):
        fs.delete_dir(root)
    for rel in _last_ordered(local_files(src), last):
        _put(fs, src / rel, f"{root}/{rel}")


def upload_file(local: Path, uri: str) -> None:
    """One file to ``uri``."""
    fs, path = filesystem(uri)
    _put(fs, local, path)


def download_file(uri: str, local: Path) -> bool:
    """``uri``'s file to ``local`` if it exists there; whether it did."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    _get(fs, path, local)
    return True


def check_writable_dir(path: Path, key: str = "output") -> None:
    """``ConfigError`` when ``path`` is not a directory this process can write, or cannot be created as one;
    checked before any work, and without creating anything."""
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a directory: give a directory (new, or a run's to resume)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be written: this user may not write {existing}; give a directory "
                          "you can write, or fix its permissions")


@dataclass
class RunStorage:
    """Where a run's output lives (``uri``, None for a plain path) and the driver's working copy (``local``)."""

    local: Path
    uri: str | None = None
    pushed: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event | None = field(default=None, repr=False)

    @classmethod
    def open(cls, output: str | os.PathLike, key: str = "output", writable: bool = True) -> RunStorage:
        """``key``: what the user called it (errors name it); ``writable``: a local path must be a directory this
        process can write or create (an input, such as ``supernet_dir``, only needs to be readable)."""
        if not is_uri(output):
            check_not_in_job_copy(output, key=key)
            if writable:
                check_writable_dir(Path(output), key)
            return cls(Path(output).resolve())
        check_uri(str(output), key)  # as the user wrote it, before anything is made of it
        uri = str(output).rstrip("/")
        filesystem(uri, key)  # a URI pyarrow cannot open fails before any work
        from lonas_ray.model_source import cache_root

        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.split("://", 1)[1])[-80:]
        local = cache_root() / "runs" / f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
        return cls(local.resolve(), uri)

    def child(self, name: str) -> RunStorage:
        """A sub-directory of the run as a storage of its own (the baseline's training run)."""
        return RunStorage(self.local / name, f"{self.uri}/{name}" if self.uri else None)

    @property
    def name(self) -> str:
        """The run's name (metric tags): the URI's or the directory's last part."""
        return self.uri.rsplit("/", 1)[-1] if self.uri else self.local.name

    @property
    def shared(self) -> str:
        """What other nodes are given: the URI, or the local path (which must then be a shared mount)."""
        return self.uri or str(self.local)

    def path(self, rel: str) -> str:
        return f"{self.shared}/{rel}"

    # -- directories that hold weights the working copy lacks ---------------------------------------------------
    def sizes(self, rel: str) -> dict[str, int]:
        """Path -> size of every file under the run's directory ``rel``: the working copy's, and at a URI also
        those only the URI holds (exported weights)."""
        import pyarrow.fs as pafs

        found = {r: size for r, (size, _) in local_files(self.local / rel).items()} \
            if (self.local / rel).is_dir() else {}
        if self.uri is not None:
            fs, root = filesystem(self.uri)
            base = f"{root}/{rel}"
            for f in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True)):
                if f.type == pafs.FileType.File:
                    found.setdefault(f.path[len(base):].lstrip("/"), f.size)
        return found

    def remove(self, rel: str) -> None:
        """Remove the run's directory ``rel`` from the working copy and the URI, weights included."""
        with self._lock:
            shutil.rmtree(self.local / rel, ignore_errors=True)
            if self.uri is not None:
                fs, root = filesystem(self.uri)
                if _exists(fs, f"{root}/{rel}"):
                    fs.delete_dir(f"{root}/{rel}")
            for r in [r for r in self.pushed if r.startswith(rel.rstrip("/") + "/")]:
                del self.pushed[r]

    def copy_tree(self, src: str, dst: str, last: str | None = None) -> None:
        """Replace the run's directory ``dst`` by a copy of ``src``: in the working copy, and at a URI by the
        storage itself (server-side: weights do not pass through this process), ``last`` copied last."""
        from lonas_ray.atomic import atomic_dir

        with self._lock:
            if self.uri is not None:
                import pyarrow.fs as pafs

                fs, root = filesystem(self.uri)
                if _exists(fs, f"{root}/{dst}"):
                    fs.delete_dir(f"{root}/{dst}")
                base = f"{root}/{src}"
                listed = fs.get_file_info(pafs.FileSelector(base, recursive=True))
                rels = [f.path[len(base):].lstrip("/") for f in listed if f.type == pafs.FileType.File]
                for rel in _last_ordered(rels, last):
                    fs.create_dir(f"{root}/{dst}/{rel}".rsplit("/", 1)[0], recursive=True)
                    fs.copy_file(f"{base}/{rel}", f"{root}/{dst}/{rel}")
            with atomic_dir(self.local / dst) as tmp:
                shutil.copytree(self.local / src, tmp, dirs_exist_ok=True)
            now = local_files(self.local / dst)  # already at the URI: the mirror need not upload them again
            self.pushed.update({f"{dst}/{r}": stat for r, stat in now.items()})

    # -- mirroring ----------------------------------------------------------------------------------------
    def pull(self) -> int:
        """Fill the local copy with what the URI holds and the local copy lacks or holds in another size; the
        number of files fetched. A new run (nothing at the URI yet) fetches nothing. A local run's directory is
        left alone (the stages create it once their checks pass: bad input writes nothing)."""
        if self.uri is None:
            return 0
        import pyarrow.fs as pafs

        fs, root = filesystem(self.uri)
        try:  # the first word with the storage: unreachable, refused or unknown is said before anything is made
            info = fs.get_file_info(root)
        except OSError as exc:
            raise ConfigError(f"storage '{self.uri}' cannot be reached ({exc}); check that the bucket exists and "
                              "that the endpoint and credentials are in this process's environment (for S3: "
                              "AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
        self.local.mkdir(parents=True, exist_ok=True)
        if info.type == pafs.FileType.NotFound:
            return 0
        fetched = 0
        for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            if f.type != pafs.FileType.File:
                continue
            rel = f.path[len(root):].lstrip("/")
            if _under(rel, ("ray_results/",)) or _skip(rel) or is_weights(rel):
                continue  # Ray Train reads its checkpoints from the URI itself; Tune's logs are not resumed
            dst = self.local / rel
            if not dst.is_file() or dst.stat().st_size != f.size:
                tmp = dst.with_name(f".{dst.name}.pull.tmp")
                _get(fs, f.path, tmp)  # the filesystem and listing already in hand: no lookup per file
                os.replace(tmp, dst)
                fetched += 1
            st = dst.stat()
            self.pushed[rel] = (st.st_size, st.st_mtime_ns)
        if fetched:
            log.info("resumed %d files from %s into %s", fetched, self.uri, self.local)
        return fetched

    def push(self) -> int:
        """Mirror the local copy to the URI: new and changed files up, files the local copy no longer has
        removed (except what others write there, ``REMOTE_OWNED``); the number of files uploaded."""
        if self.uri is None:
            return 0
        with self._lock:
            fs, root = filesystem(self.uri)
            now = local_files(self.local)
            changed = [rel for rel, stat in now.items() if self.pushed.get(rel) != stat]
            for rel in changed:
                _put(fs, self.local / rel, f"{root}/{rel}")
                self.pushed[rel] = now[rel]
            for rel in [r for r in self.pushed if r not in now]:
                if not _under(rel, REMOTE_OWNED):
                    try:
                        fs.delete_file(f"{root}/{rel}")
                    except FileNotFoundError:
                        pass
                del self.pushed[rel]
            return len(changed)

    def start_mirroring(self, every_s: float = PUSH_EVERY_S) -> None:
        """Push in the background every ``every_s`` seconds until ``stop_mirroring``."""
        if self.uri is None or self._stop is not None:
            return
        self._stop = threading.Event()

        def loop(stop: threading.Event) -> None:
            while not stop.wait(every_s):
                try:
                    self.push()
                except Exception as exc:  # noqa: BLE001  (a transient storage error: the next round retries)
                    log.warning("mirroring %s to %s failed, retrying: %s", self.local, self.uri, exc)

        threading.Thread(target=loop, args=(self._stop,), name="lonas-storage-mirror", daemon=True).start()

    def stop_mirroring(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        self.push()
