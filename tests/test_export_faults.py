"""A merge task that fails, on real Ray: the other merges finish, the failed model is named and never looks
exported, and a re-run exports only what is missing."""

from __future__ import annotations

import os

import pytest
import yaml

from helpers import ROOT
from lonas_ray.build import SupernetSpec, load_prepared, prepare_once
from lonas_ray.config_io import from_dict
from lonas_ray.merge.save import MANIFEST
from lonas_ray.pipeline.config import ExportSpec
from lonas_ray.pipeline.export import ExportError, export_models
from lonas_ray.storage import RunStorage

pytestmark = [pytest.mark.timeout(600), pytest.mark.ray]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from lonas_ray.ray_env import ensure_ray

    ensure_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def test_a_failed_merge_lets_the_others_finish_is_named_and_a_rerun_does_only_it(local_ray, tmp_path):
    raw = yaml.safe_load((ROOT / "jobs/configs/search_tiny.yaml").read_text())
    prepared = prepare_once(from_dict(SupernetSpec, raw["supernet"], where="supernet"), tmp_path / "prepared")
    space = load_prepared(prepared)[1]
    jobs = {"a": (prepared, space.maximal()), "b": (prepared, space.heuristic()), "c": (prepared, space.minimal())}
    storage, spec = RunStorage.open(tmp_path / "run"), ExportSpec()
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "b").write_text("a file where b's model directory must go: b's task cannot put its model there")

    with pytest.raises(ExportError, match=r"^1 of 3 exports failed: b: .*a re-run exports only what is missing"):
        export_models(jobs, storage, "models", spec)
    assert (models / "a" / MANIFEST).is_file() and (models / "c" / MANIFEST).is_file()
    assert (models / "b").is_file()  # nothing of b that looks like an export
    kept = {n: os.stat(models / n / MANIFEST).st_mtime_ns for n in ("a", "c")}

    (models / "b").unlink()
    manifests = export_models(jobs, storage, "models", spec)
    assert set(manifests) == {"a", "b", "c"} and (models / "b" / MANIFEST).is_file()
    assert {n: os.stat(models / n / MANIFEST).st_mtime_ns for n in ("a", "c")} == kept  # not redone


def test_a_merge_whose_worker_is_killed_is_run_again_and_leaves_nothing_behind(local_ray, tmp_path):
    """SIGKILL a merge task's worker mid-merge (as the OOM killer would): Ray runs the task again, every model is
    exported whole, and the killed attempt's working directory is gone."""
    import threading
    import time

    import psutil

    from lonas_ray.pipeline.export import LEFTOVER_GLOB

    raw = yaml.safe_load((ROOT / "jobs/configs/search_tiny.yaml").read_text())
    prepared = prepare_once(from_dict(SupernetSpec, raw["supernet"], where="supernet"), tmp_path / "prepared")
    space = load_prepared(prepared)[1]
    jobs = {"a": (prepared, space.maximal()), "b": (prepared, space.minimal())}
    storage, models = RunStorage.open(tmp_path / "run"), tmp_path / "run" / "models"
    killed: list[int] = []

    def kill_the_first_merge() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for proc in psutil.process_iter(["cmdline"]):
                title = " ".join(proc.info["cmdline"] or [])
                if title.startswith("ray::lonas-merge") and any(models.glob(LEFTOVER_GLOB)):
                    proc.kill()  # its working directory exists: it is mid-merge
                    killed.append(proc.pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_first_merge, daemon=True)
    killer.start()
    manifests = export_models(jobs, storage, "models", ExportSpec())
    killer.join(5)
    assert killed, "no merge was seen running"
    assert set(manifests) == {"a", "b"} and all((models / n / MANIFEST).is_file() for n in ("a", "b"))
    assert not list(models.glob(LEFTOVER_GLOB))
