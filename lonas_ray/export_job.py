"""Build a super-network and export chosen sub-networks as verified Hugging Face models.

The core workflow end to end on one machine, no Ray needed: load -> wrap ->
importance reorder -> (generated) space -> for each chosen sub-network: extract,
merge, save, reload, and check that the reloaded model computes what the
activated super-network computes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lonas_ray.build import SupernetSpec, build_supernet
from lonas_ray.calibration import calibration_batch
from lonas_ray.config_io import ConfigError, YamlConfig, help_field, to_dict
from lonas_ray.merge.gguf_export import check_formats, check_gguf_source, gguf_options
from lonas_ray.merge.save import save_subnetwork
from lonas_ray.space import SearchSpace, SubnetConfig

log = logging.getLogger(__name__)

NAMED = ("maximal", "heuristic", "minimal")


@dataclass
class ExportJobConfig(YamlConfig):
    supernet: SupernetSpec = help_field(help="how to build the super-network")
    subnets: list[str] = help_field(
        default_factory=lambda: ["maximal", "heuristic", "minimal"],
        help="sub-networks to export: maximal, heuristic, minimal, or random:N",
    )
    seed: int = help_field(0, help="seed for random sub-networks")
    verify: bool = help_field(True, help="reload every export and compare its logits with the super-network's")
    with_adapter: bool = help_field(True, help="also export the unmerged base + a stock-PEFT adapter")
    formats: list[str] = help_field(
        default_factory=lambda: ["hf"], help="hf (always) and optionally gguf: model.gguf beside it for llama.cpp "
        "(Llama/Mistral families, dense or sparse bases)")

    def __post_init__(self):
        check_formats(self.formats, "formats")
        if "gguf" in self.formats:
            check_gguf_source(self.supernet.model, "formats")
        for s in self.subnets:
            if s in NAMED:
                continue
            kind, _, n = s.partition(":")
            if kind != "random" or not n.isdigit() or int(n) < 1:
                raise ConfigError(f"subnets entry '{s}' is not one of {', '.join(NAMED)} or random:N")


def chosen_subnets(space: SearchSpace, names: list[str], seed: int) -> dict[str, SubnetConfig]:
    """Label -> configuration, without duplicates (a tiny space may map two labels to one net)."""
    out: dict[str, SubnetConfig] = {}
    ids: set[str] = set()
    for name in names:
        if name in NAMED:
            candidates = [(name, getattr(space, name)())]
        else:
            n = int(name.split(":")[1])
            candidates = [(f"random{k}", space.sample(seed * 1000 + k)) for k in range(n)]
        for label, cfg in candidates:
            sid = space.subnet_id(cfg)
            if sid not in ids:
                ids.add(sid)
                out[label] = cfg
    return out


def run_export(cfg: ExportJobConfig, output: str | Path) -> dict:
    """Run the job; writes ``space.json``, ``models/<subnet_id>/`` and ``summary.json`` under ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    built = build_supernet(cfg.supernet)
    supernet = built.supernet
    supernet.space.save(output / "space.json")
    build_s = time.perf_counter() - t0
    probe = calibration_batch(built.tokenizer, supernet.shape.vocab_size, 2, 32, seed=cfg.seed + 1)
    probe = {k: probe[k] for k in ("input_ids", "attention_mask")}
    gguf = gguf_options(cfg.supernet.model) if "gguf" in cfg.formats else None
    rows = []
    for label, sub in chosen_subnets(supernet.space, cfg.subnets, cfg.seed).items():
        sid = supernet.space.subnet_id(sub)
        out_dir = output / "models" / sid
        t = time.perf_counter()
        manifest = save_subnetwork(supernet, sub, out_dir, tokenizer=built.tokenizer, with_adapter=cfg.with_adapter,
                                   gguf=gguf)
        row = {"label": label, "subnet_id": sid, "path": str(out_dir), "export_s": time.perf_counter() - t,
               **manifest["counts"], "architecture": manifest["architecture"]}
        if cfg.verify:
            with torch.no_grad(), supernet.activated(sub):
                ref = supernet(**probe).logits.float()
            reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=ref.dtype)
            with torch.no_grad():
                got = reloaded(**probe).logits.float()
            row["max_rel_err"] = float((got - ref).abs().max() / ref.abs().max())
        rows.append(row)
        log.info("exported %s (%s): %d params, %d MACs/token", label, sid, row["params"], row["macs_per_token"])
    summary = {
        "config": to_dict(cfg),
        "space_size": supernet.space.size(),
        "dimensions": len(supernet.space.dims),
        "build_s": build_s,
        "subnets": rows,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
