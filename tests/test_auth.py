"""Ray's token authentication (on by default in Ray 2.60 clusters): lonas-ray's driver joining with ``--address``,
and its job submitted with ``ray job submit``, both work against a head started with tokens on, and both are
refused without the token, with an error that says what to set."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, TINY, Head

pytestmark = [pytest.mark.timeout(600), pytest.mark.ray, pytest.mark.slow]


def search_config(path, out) -> str:
    raw = yaml.safe_load((ROOT / "jobs/configs/search_tiny.yaml").read_text())
    raw["pools"] = {"cpu_a": {**raw["pools"]["local"], "evaluators": 1}}  # what Head's node serves
    raw["pools"]["cpu_a"]["latency"].update(repeats=2, warmup=0, prompt_len=8, new_tokens=2)
    raw.update(search={"strategy": "random", "budget": 2}, quality={"examples": 8, "final_examples": 8},
               output_dir=str(out))
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_head_with_token_authentication_takes_lonas_ray_and_its_jobs_with_the_token_only(tmp_path):
    token = secrets.token_hex(16)
    head = Head(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(tmp_path))
    no_token = {k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN"}  # HOME: no ~/.ray/auth_token either
    lonas = [sys.executable, "-m", "lonas_ray.cli", "search", "--address", f"127.0.0.1:{head.gcs}"]
    try:
        head.start()
        ok = subprocess.run([*lonas, "--config", search_config(tmp_path / "a.yaml", tmp_path / "a")], env=head.env,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert (tmp_path / "a" / "pareto.parquet").is_file()

        refused = subprocess.run([*lonas, "--config", search_config(tmp_path / "b.yaml", tmp_path / "b")],
                                 env=no_token, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "token" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr, refused.stderr[-3000:]
        assert "Traceback" not in refused.stderr and not (tmp_path / "b").exists()
        pipeline = subprocess.run([sys.executable, "-m", "lonas_ray.cli", "run", "--config", str(TINY), "--output",
                                   str(tmp_path / "d"), "--address", f"127.0.0.1:{head.gcs}"],
                                  env=no_token, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert pipeline.returncode == 2 and "RAY_AUTH_TOKEN" in pipeline.stderr, pipeline.stderr[-3000:]
        assert "Traceback" not in pipeline.stderr and not (tmp_path / "d").exists()  # the pipeline writes nothing

        cfg = search_config(tmp_path / "c.yaml", tmp_path / "c")
        submit = ["job", "submit", f"--address={head.address}", "--", "python", "-m", "lonas_ray.cli", "search",
                  "--config", cfg]
        job = head.ray(*submit, timeout=300, check=False)
        assert job.returncode == 0 and (tmp_path / "c" / "pareto.parquet").is_file(), job.stdout[-3000:]
        head.env = no_token
        denied = head.ray(*submit, timeout=120, check=False)
        assert denied.returncode != 0
        assert "auth" in (denied.stdout + denied.stderr).lower(), denied.stdout[-2000:] + denied.stderr[-2000:]
    finally:
        head.stop()
