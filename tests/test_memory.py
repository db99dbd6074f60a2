"""Peak memory as workers report it (``lonas_ray.memory``) and a pool's evaluator profile (``figures``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lonas_ray.memory import largest, peak_memory
from lonas_ray.pipeline.figures import evaluator_profile


def test_the_peak_resident_set_grows_by_what_the_process_touched_and_never_falls():
    code = ("import os\n"
            "from lonas_ray.memory import peak_rss_mib\n"
            "now = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
            "block = b'x' * (512 * 2**20)\n"  # written, so every page is resident
            "during = peak_rss_mib()\n"
            "del block\n"
            "print(now, during, peak_rss_mib())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    resident_before, during, after = map(float, out.stdout.split())
    assert during >= resident_before + 500  # the 512 MiB block on top of what was resident
    assert after == during  # a high-water mark: freeing the block does not lower it


def test_without_cuda_the_gpu_peak_is_none_not_zero():
    import torch

    record = peak_memory()
    assert record["peak_rss_mib"] > 0
    if not torch.cuda.is_available():
        assert record["peak_gpu_mib"] is None


def test_largest_takes_each_peak_over_the_workers_and_keeps_none_where_none_had_one():
    got = largest([{"peak_rss_mib": 900.0, "peak_gpu_mib": None}, None, {"peak_rss_mib": 1200.5},
                   {"peak_rss_mib": 300.0, "peak_gpu_mib": 4000.0, "step": 7}])
    assert got == {"peak_rss_mib": 1200.5, "peak_gpu_mib": 4000.0}
    assert largest([]) == {"peak_rss_mib": None, "peak_gpu_mib": None}


def _row(**profile):
    return {"profile": json.dumps(profile)}


def test_an_evaluator_profile_splits_the_pools_busy_time_and_gives_evaluations_per_minute():
    rows = [_row(load_s=20.0, switch_s=2.0, score_s=6.0, time_s=2.0, peak_rss_mib=1000.0, peak_gpu_mib=None),
            _row(load_s=0.0, switch_s=2.0, score_s=6.0, time_s=2.0, peak_rss_mib=1100.0, peak_gpu_mib=None),
            _row(load_s=0.0, switch_s=2.0, score_s=6.0, time_s=2.0, peak_rss_mib=1050.0, peak_gpu_mib=None),
            {"profile": None}]  # a row from before profiles: left out, not counted as free
    p = evaluator_profile(rows)
    assert p["evaluations"] == 3
    assert p["seconds"] == {"load_s": 20.0, "switch_s": 6.0, "score_s": 18.0, "time_s": 6.0}
    assert p["per_minute"] == pytest.approx(60 * 3 / 50)
    assert p["share"]["score_s"] == pytest.approx(0.36)
    assert (p["peak_rss_mib"], p["peak_gpu_mib"]) == (1100.0, None)
    assert evaluator_profile([{"profile": None}]) is None
