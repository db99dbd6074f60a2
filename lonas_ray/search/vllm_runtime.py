"""The ``vllm`` latency runtime: a sub-network timed the way vLLM serves it, from lonas-ray's evaluators.

vLLM's CPU build pins an older transformers than lonas-ray, so it cannot run in
the evaluator's own process: the extracted sub-network is saved to a temporary
directory (config.json + safetensors, the export format, so lonas-ray's vLLM
plugin loads per-layer shapes) and ``lonas_ray.serving.vllm_latency`` times it in
vLLM's environment (``latency.vllm_python``, made by ``jobs/make_vllm_env.sh``)
with the pool's request shape. Each measurement starts a vLLM engine (tens of
seconds on a CPU): use it where the engine is what the model will be served
with and the search budget allows it, ``static`` / ``cuda_graph`` otherwise.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from lonas_ray.search.latency import LatencyStats, percentile

ENGINE_TIMEOUT_S = 1800


class VllmRuntimeError(RuntimeError):
    """vLLM's environment is missing or its measurement failed: the message names which and the fix."""


def check_vllm_python(python: str, pool: str = "") -> Path:
    """``python`` must be an interpreter with vLLM and lonas-ray's plugin (``jobs/make_vllm_env.sh``)."""
    where = f"pool {pool}: " if pool else ""
    path = Path(python)
    if not python or not path.is_file():
        raise VllmRuntimeError(f"{where}latency runtime vllm needs vLLM's environment, and latency.vllm_python "
                               f"{python!r} is not a file on this node: build one with `bash jobs/make_vllm_env.sh "
                               "DIR` (in the pool's image) and set latency.vllm_python: DIR/bin/python")
    probe = subprocess.run([str(path), "-c", "import vllm, lonas_ray.serving.vllm_plugin"], capture_output=True,
                           text=True, timeout=300)
    if probe.returncode:
        raise VllmRuntimeError(f"{where}{python} cannot import vllm and lonas-ray's plugin "
                               f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no output'}): "
                               "rebuild it with `bash jobs/make_vllm_env.sh DIR`")
    return path


def measure_vllm(model, python: str, *, batch_size: int, prompt_len: int, new_tokens: int, warmup: int,
                 repeats: int) -> LatencyStats:
    """Time ``model`` (a Hugging Face model, e.g. an extracted sub-network) served by vLLM's offline engine."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory(prefix="lonas-vllm-") as d:
        model_dir = Path(d) / "model"
        model.save_pretrained(model_dir)
        request = {"models": [str(model_dir)], "batch_size": batch_size, "prompt_len": prompt_len,
                   "new_tokens": new_tokens, "warmup": warmup, "repeats": repeats, "dtype": dtype}
        (Path(d) / "request.json").write_text(json.dumps(request))
        proc = subprocess.run([python, "-m", "lonas_ray.serving.vllm_latency", str(Path(d) / "request.json"),
                               str(Path(d) / "out.json")], capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
        if proc.returncode:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise VllmRuntimeError(f"vLLM could not time the sub-network (exit {proc.returncode}):\n{tail}")
        (row,) = json.loads((Path(d) / "out.json").read_text())
    samples = [float(t) for t in row.get("repeats_ms", ())]
    return LatencyStats(runtime="vllm", latency_ms=row["latency_ms"], latency_p90_ms=row["latency_p90_ms"],
                        prefill_ms=row["prefill_ms"], decode_ms=row["decode_ms"], repeats=repeats,
                        prefill_p90_ms=row["prefill_p90_ms"], decode_p90_ms=row["decode_p90_ms"],
                        latency_p10_ms=percentile(samples, 0.1) if samples else None, samples_ms=tuple(samples))
