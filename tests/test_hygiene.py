"""The test suite's own hygiene: a module that leaves Ray running fails, and what it left is stopped."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, ray_daemons

pytestmark = [pytest.mark.ray]

LEAKY = """
import ray


def test_connects_and_forgets_to_shut_down():
    ray.init(num_cpus=1, include_dashboard=False)
    assert ray.is_initialized()
"""


@pytest.mark.timeout(300)
def test_a_module_that_leaves_ray_running_fails_and_its_ray_is_stopped(tmp_path):
    """Run under this suite's conftest, a test that calls ray.init and never ray.shutdown passes itself, but its
    module then errors naming what was left, and no GCS server or raylet of it outlives the run."""
    for name in ("conftest.py", "helpers.py"):
        shutil.copy(ROOT / "tests" / name, tmp_path / name)
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    before = set(ray_daemons())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 passed, 1 error" in out, out
    assert "test_leaky left Ray running: this process is still connected" in out, out
    assert not set(ray_daemons()) - before
