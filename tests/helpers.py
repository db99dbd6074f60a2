"""Helpers tests import (not fixtures): tiny random-init models of each supported family, random adapters and
logit comparisons, a fresh interpreter for code that needs its own Ray, a Ray head started as users start one
and the tiny pipeline submitted to it, and the processes of Ray on this host."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lonas_ray.model_source import tiny_config

ROOT = Path(__file__).resolve().parents[1]

TINY = ROOT / "jobs" / "configs" / "tiny.yaml"
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# what the job does not need; .gpu/ holds the GPU runs' wheels and model parts (jobs/gpu_bench.sh), ~100 MB,
# with which `ray job submit` failed to upload the working directory here
EXCLUDES = [".git", ".venv", ".whl", ".gguf1", ".gguf2", ".gpu", "out", "__pycache__"]


def free_port(low: int = 20000) -> int:
    """A free port outside Ray's worker range (10002-19999)."""
    for port in range(low, low + 2000):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port")


RAY_DAEMONS = ("gcs_server", "raylet")  # what is left when a Ray cluster is not stopped


def ray_daemons() -> dict[int, str]:
    """pid -> command line of every Ray GCS server and raylet on this host (a user's own cluster included)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        name, cmd = p.info["name"] or "", p.info["cmdline"] or []
        if name in RAY_DAEMONS or any(Path(a).name in RAY_DAEMONS for a in cmd[:1]):
            out[p.pid] = " ".join(cmd)[:160]
    return out


def stop_processes(pids, timeout: float = 5) -> None:
    """Terminate ``pids`` and all their descendants, then kill what is still there after ``timeout`` seconds:
    only what a test started, never every Ray of the host as ``ray stop --force`` would."""
    import psutil

    family = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            family += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def processes_using(text: str) -> list[int]:
    """Pids of the processes whose command line mentions ``text`` (a Ray session's own temp dir)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if any(text in a for a in p.info["cmdline"] or [])]


# what a node serving tiny.yaml's pools cpu_a and cpu_b is started with
POOL_NODE = ("--labels=lonas/pool=cpu_a", '--resources={"pool_cpu_a": 1, "pool_cpu_b": 1}')


class Head:
    def __init__(self, tmp: Path, **env: str):
        self.env = {**os.environ, **ENV, **env}
        self.gcs, self.dashboard = free_port(26379), free_port(28265)
        self.metrics = free_port(self.dashboard + 1)
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.tmp = tmp
        # Ray's own temp dir, short (its socket paths must stay under 108 bytes) and this head's alone: `stop`
        # finds the processes to stop by it
        self.temp_dir = tempfile.mkdtemp(prefix="lonas-ray-", dir="/tmp")

    def ray(self, *args: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(Path(sys.executable).parent / "ray"), *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        assert not check or proc.returncode == 0, f"ray {' '.join(args[:2])}: exit {proc.returncode}\n" + \
            (proc.stdout + proc.stderr)[-3000:]
        return proc

    def start(self, pools: bool = True, num_cpus: int = 2, *extra: str) -> None:
        """The head; ``pools``: it also serves tiny.yaml's two pools (a one-node cluster); ``extra``: more
        ``ray start`` options."""
        self.ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs}",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
                 f"--metrics-export-port={self.metrics}", f"--num-cpus={num_cpus}", "--object-store-memory=400000000",
                 *(POOL_NODE if pools else ()), "--disable-usage-stats", f"--temp-dir={self.temp_dir}", *extra)

    def stop(self) -> None:
        """Stop this head and every process of its session (nodes added to it on this host, their workers)."""
        stop_processes(processes_using(self.temp_dir))

    def submit(self, out: Path | str, *extra: str, working_dir: bool = True, config: Path = TINY) -> str:
        """``ray job submit --no-wait`` of the tiny pipeline; returns the submission id. ``working_dir=False``:
        the code as installed instead of an uploaded copy (nodes sharing one host also share Ray's session
        directory, and a second node unpacking the same copy there races the driver importing from it)."""
        upload = [f"--working-dir={ROOT}", f"--runtime-env-json={json.dumps({'excludes': EXCLUDES})}"]
        proc = self.ray("job", "submit", f"--address={self.address}", "--no-wait", *(upload if working_dir else []),
                        "--", "python", "jobs/pipeline.py" if working_dir else str(ROOT / "jobs" / "pipeline.py"),
                        "--config", str(config), "--output", str(out), *extra)
        found = re.search(r"(raysubmit_\w+)", proc.stdout + proc.stderr)
        assert found, proc.stdout + proc.stderr
        return found.group(1)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address)

    def wait(self, job: str, timeout: float = 400) -> str:
        client, end = self.client(), time.time() + timeout
        while time.time() < end:
            status = str(client.get_job_status(job).value)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(1)
        raise TimeoutError(f"job {job} still running after {timeout} s:\n{client.get_job_logs(job)[-3000:]}")

    def scrape(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""


_CLI_BATCH = """
import contextlib, io, json, logging, sys, traceback
from lonas_ray.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    logging.root.handlers.clear()  # main's basicConfig binds the stream of this case
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc(file=err)  # what an uncaught error would have printed: the tests look for it
            code = "raised"
    import ray
    if ray.is_initialized():  # a case that started Ray leaves the next one a fresh process's start, as the CLI has
        ray.shutdown()
    results.append({"returncode": code, "stderr": err.getvalue()})
print("CLI-RESULTS " + json.dumps(results), flush=True)
"""


def lonas_cli_batch(argvs: list[list[str]], cwd: Path = ROOT, timeout: int = 600,
                    env: dict[str, str] | None = None) -> list[dict]:
    """``lonas-ray ARGV`` for each of ``argvs``, one after another in one fresh interpreter (``cli.main``, as the
    console script calls it): bad-input cases cost one import of torch and Ray, not one each. Per case: the exit
    code and what went to stderr (an uncaught exception's traceback included). ``env``: added to the environment."""
    proc = subprocess.run([sys.executable, "-c", _CLI_BATCH, json.dumps(argvs)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                           "TRANSFORMERS_OFFLINE": "1", **(env or {})})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CLI-RESULTS ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line[len("CLI-RESULTS "):])


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
    tb = proc.stderr.rfind("Traceback (most recent call last)")  # the error itself, not the progress bars after it
    assert proc.returncode == 0, proc.stderr[tb:tb + 4000] if tb >= 0 else proc.stderr[-3000:]
    return proc


def checkpoints(out: Path) -> list[str]:
    """The training checkpoints Ray Train has recorded in a training output directory, which a resumed run restores
    from (its snapshot: a step's files are written first, and the controller records them when it next takes the
    workers' reports, about every 2 s)."""
    try:
        snapshot = json.loads((out / "ray_results" / "train" / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or being written
        return []
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
