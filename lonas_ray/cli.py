"""The ``lonas-ray`` command: one verb per workflow."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lonas_ray.config_io import ConfigError, InputError
from lonas_ray.storage import is_uri


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
    where = f"{cfg.output_dir.rstrip('/')}/supernet" if is_uri(cfg.output_dir) else result.supernet_dir
    print(f"trained super-network ({result.steps} steps) written to {where}")
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
    where = cfg.output_dir if is_uri(cfg.output_dir) else result.output_dir  # a URI, not the driver's copy
    print(f"results.parquet, pareto.parquet and search_summary.json written under {where}")
    return 0


QUICKSTART = "jobs/configs/quickstart.yaml"


def _quickstart_config() -> str:
    """The quick-start config of the checkout lonas-ray runs from (the embedded default of ``run``)."""
    from pathlib import Path

    import lonas_ray

    path = Path(lonas_ray.__file__).resolve().parents[1] / QUICKSTART
    if not path.is_file():
        raise ConfigError(f"no --config given and {QUICKSTART} is not beside this install; pass --config FILE")
    return str(path)


def _run(args) -> int:
    from lonas_ray.pipeline.config import PipelineConfig
    from lonas_ray.pipeline.driver import run_pipeline

    path = args.config or _quickstart_config()
    print(f"lonas-ray run: {path}", flush=True)
    fig = run_pipeline(PipelineConfig.from_yaml(path), output=args.output, address=args.address,
                       stop_after=args.stop_after)
    if fig is not None:
        print(summary_table(fig))
    return 0


def summary_table(fig: dict) -> str:
    """The final summary printed by ``run``: baseline and every exported model, per pool."""
    pools = fig["pools"]
    head = f"{'model':<22} {'quality':>8} {'params':>9}" + "".join(f" {p[:14] + ' ms':>17} {'x':>6}" for p in pools)
    lines = [head]
    base, zero = fig["baseline"], fig.get("zero_shot")
    for m in ([zero] if zero else []) + ([base] if base else []) + fig["models"]:
        name = "base model (zero-shot)" if m is zero else "baseline (plain LoRA)" if m is base else m["subnet_id"]
        cells = ""
        for p in pools:
            lat = m["latency"].get(p, {})
            ms = lat.get("latency_ms")
            speedup = f"{lat['speedup']:.2f}" if lat.get("speedup") else "-"
            cells += f" {ms if ms is None else round(ms, 2)!s:>17} {speedup:>6}"
        lines.append(f"{name:<22} {m['quality']:>8.4f} {m['params'] / 1e6:>8.2f}M{cells}")
    out = fig["output_dir"]
    for verdict in ("verdict", "deployment"):
        if fig.get(verdict):
            lines.append(fig[verdict]["text"])
    lines.append(f"models under {out}/models, report in {out}/report.md and {out}/pareto.png, figures in "
                 f"{out}/summary.json")
    return "\n".join(lines)


def _grafana_dashboard(args) -> int:
    from lonas_ray.grafana import to_json, write

    if args.out is None:
        print(to_json(), end="")
        return 0
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; remove it or give another --out (nothing was written)")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent} is not a directory; create it or give another --out")
    write(out)
    print(f"wrote the lonas-ray Grafana dashboard to {out}")
    return 0


def _config_reference(args) -> int:
    from lonas_ray.config_docs import render

    print(render(), end="")
    return 0


COMMANDS = {
    "export": (_export, "build the super-network and export chosen sub-networks as verified HF models"),
    "space": (_space, "build the super-network and describe its search space"),
    "train": (_train, "train the super-adapter on Ray Train + DeepSpeed"),
    "search": (_search, "evaluate sub-networks on hardware pools with Ray Tune; write results and the Pareto set"),
    "run": (_run, "the whole pipeline: train, baseline, search, merge/export, report (resumable)"),
    "grafana-dashboard": (_grafana_dashboard, "write the Grafana dashboard of lonas-ray's ray_lonas_* metrics"),
    "config-reference": (_config_reference, "print every config key with its type, default and meaning (Markdown; "
                                            "docs/configuration.md)"),
}


class _OwnOrSevere(logging.Filter):
    """What a user's terminal shows by default: lonas-ray's own records, and errors from anything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("lonas_ray") or record.levelno >= logging.ERROR


def configure_logging(level: str, verbose: bool) -> None:
    """lonas-ray's records at ``level`` on the terminal; the libraries' (Ray Tune and Train, DeepSpeed, torch and
    transformers warnings) only with ``verbose``, which also copies the Ray workers' output here."""
    from lonas_ray.ray_env import VERBOSE_ENV

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        handler.addFilter(_OwnOrSevere())
        logging.captureWarnings(True)  # FutureWarnings and the like become py.warnings records: filtered out
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # it prints through a handler of its own
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lonas-ray", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="lonas-ray's own log level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "grafana-dashboard":
            p.add_argument("--out", help="JSON file to write (default: standard output)")
            continue
        if name == "config-reference":
            continue
        p.add_argument("--config", required=name != "run",
                       help="YAML config file" + (f" (default: {QUICKSTART})" if name == "run" else ""))
        if name == "export":
            p.add_argument("--output", required=True, help="output directory")
        if name == "run":
            from lonas_ray.pipeline.stages import STAGES

            p.add_argument("--stop-after", choices=STAGES, help="stop after this stage (re-run to continue)")
        if name in ("train", "search", "run"):
            p.add_argument("--output", help="output directory (overrides output_dir in the config)")
            p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
            p.add_argument("--verbose", action="store_true",
                           help="also show the libraries' logs and warnings and the Ray workers' output (Ray Train's "
                           "per-step reports, DeepSpeed) here; by default they stay in the workers' log files")
    args = parser.parse_args(argv)
    if not (getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")):
        from lonas_ray.ray_env import prefer_loopback

        prefer_loopback()  # before anything imports ray
    configure_logging(args.log_level, getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as exc:
        print(f"lonas-ray: configuration error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:  # a results file, a super-network directory, a pool the cluster cannot run
        print(f"lonas-ray: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
