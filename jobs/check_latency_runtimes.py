"""Check that every latency runtime decodes the same tokens (the timed loop computes the real thing).

    python jobs/check_latency_runtimes.py --out runtimes_check.json   (on a GPU machine: includes cuda_graph)

A runtime that replays a stale CUDA graph or ignores the cache position would still be fast; this
compares each runtime's greedy continuation with eager decoding on the maximal and minimal
sub-networks of a SmolLM2-shaped random-weight model, in float32 so numerics cannot excuse a mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.build import SupernetSpec, build_supernet  # noqa: E402
from lonas_ray.config_io import from_dict, load_yaml  # noqa: E402
from lonas_ray.merge.extract import extract  # noqa: E402
from lonas_ray.search.latency import RUNTIMES, greedy_tokens  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="jobs/configs/bench_search_gpu.yaml")
    p.add_argument("--skip", default="compiled")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    spec = from_dict(SupernetSpec, load_yaml(args.config)["supernet"], where="supernet")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    supernet = build_supernet(spec).supernet.to(device)
    runtimes = [r for r in RUNTIMES if r not in args.skip.split(",") and (device.type == "cuda" or r != "cuda_graph")]
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0)).to(device)
    out = {"device": str(torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"), "checks": []}
    ok = True
    for label in ("maximal", "minimal"):
        model = extract(supernet, getattr(supernet.space, label)()).float()
        ref = greedy_tokens(model, ids, 16, "eager")
        for runtime in runtimes:
            got = greedy_tokens(model, ids, 16, runtime)
            same = bool(torch.equal(got, ref))
            ok &= same
            out["checks"].append({"subnet": label, "runtime": runtime, "same_tokens_as_eager": same})
    out["all_equal"] = ok
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
