"""Write one sub-network to disk as a standard Hugging Face model (plus, optionally, a PEFT adapter).

Layout of ``out_dir``:
  config.json, model.safetensors, generation_config.json  the merged model
  tokenizer files                                        when a tokenizer is given
  lonas_subnet.json                                      subnet id, configuration, counts
  peft/base/, peft/adapter/                              sliced unmerged base + stock-PEFT adapter (optional)

The directory appears whole or not at all: everything is written to a sibling
temporary directory that is renamed into place at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from lonas_ray.atomic import atomic_dir
from lonas_ray.counting import count_subnet
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.merge.extract import extract
from lonas_ray.merge.peft_export import export_peft_adapter
from lonas_ray.space import SubnetConfig

MANIFEST = "lonas_subnet.json"


def save_subnetwork(supernet: SuperNetwork, config: SubnetConfig, out_dir: str | Path, *,
                    tokenizer=None, with_adapter: bool = False) -> dict:
    """Extract, merge and save sub-network ``config``; returns the manifest written beside it."""
    supernet.space.validate(config)  # before anything is written
    with atomic_dir(out_dir) as tmp:
        return _write(supernet, config, tmp, tokenizer, with_adapter)


def _write(supernet: SuperNetwork, config: SubnetConfig, tmp: Path, tokenizer, with_adapter: bool) -> dict:
    model = extract(supernet, config, merge=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    manifest = {
        "subnet_id": supernet.space.subnet_id(config),
        "config": config,
        "counts": count_subnet(supernet, config).to_dict(),
        "architecture": type(model).__name__,
        "source_model_type": supernet.model.config.model_type,
    }
    if with_adapter and any(s.rank for layer in supernet.plan(config).layers for s in layer.linears.values()):
        base = extract(supernet, config, merge=False)
        base.save_pretrained(tmp / "peft" / "base")
        export_peft_adapter(supernet, base, tmp / "peft" / "adapter", config)
        manifest["peft"] = {"base": "peft/base", "adapter": "peft/adapter"}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
