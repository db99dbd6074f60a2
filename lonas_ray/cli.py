"""The ``lonas-ray`` command: one verb per workflow."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from lonas_ray.config_io import ConfigError


def _export(args) -> int:
    from lonas_ray.export_job import ExportJobConfig, run_export

    summary = run_export(ExportJobConfig.from_yaml(args.config), args.output)
    print(f"space: {summary['dimensions']} dimensions, {summary['space_size']:.3g} sub-networks")
    print(f"{'label':<10} {'subnet_id':<13} {'params':>12} {'MACs/token':>12} {'max rel err':>12}")
    for r in summary["subnets"]:
        err = f"{r['max_rel_err']:.2e}" if "max_rel_err" in r else "-"
        print(f"{r['label']:<10} {r['subnet_id']:<13} {r['params']:>12,} {r['macs_per_token']:>12,} {err:>12}")
    print(f"models and summary.json written under {args.output}")
    return 0


def _space(args) -> int:
    from lonas_ray.build import build_supernet
    from lonas_ray.export_job import ExportJobConfig

    space = build_supernet(ExportJobConfig.from_yaml(args.config).supernet).supernet.space
    kinds: dict[str, int] = {}
    for d in space.dims.values():
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    print(json.dumps({"size": space.size(), "dimensions": kinds, "heuristic": space.heuristic()}, indent=1))
    return 0


def _train(args) -> int:
    from lonas_ray.train.config import TrainConfig
    from lonas_ray.train.trainer import train

    cfg = TrainConfig.from_yaml(args.config)
    if args.output:
        cfg.output_dir = args.output
    result = train(cfg, address=args.address)
    print(f"trained super-network ({result.steps} steps) written to {result.supernet_dir}")
    return 0


def _search(args) -> int:
    from lonas_ray.search.config import SearchConfig
    from lonas_ray.search.driver import run_search

    cfg = SearchConfig.from_yaml(args.config)
    if args.output:
        cfg.output_dir = args.output
    result = run_search(cfg, address=args.address)
    for pool, info in result.summary["pools"].items():
        lat = info.get("latency", {})
        print(f"pool {pool}: {info['evaluated']} evaluated ({result.evaluated.get(pool, 0)} new), "
              f"latency front {lat.get('members', 0)} members, hypervolume {lat.get('hypervolume', float('nan')):.4g}, "
              f"pick {lat.get('pick')}")
    print(f"results.parquet, pareto.parquet and search_summary.json written under {result.output_dir}")
    return 0


COMMANDS = {
    "export": (_export, "build the super-network and export chosen sub-networks as verified HF models"),
    "space": (_space, "build the super-network and describe its search space"),
    "train": (_train, "train the super-adapter on Ray Train + DeepSpeed"),
    "search": (_search, "evaluate sub-networks on hardware pools with Ray Tune; write results and the Pareto set"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lonas-ray", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="YAML config file")
        if name == "export":
            p.add_argument("--output", required=True, help="output directory")
        if name in ("train", "search"):
            p.add_argument("--output", help="output directory (overrides output_dir in the config)")
            p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    if not (getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")):
        from lonas_ray.ray_env import prefer_loopback

        prefer_loopback()  # before anything imports ray
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as exc:
        print(f"lonas-ray: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
