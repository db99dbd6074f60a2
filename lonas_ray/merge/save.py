"""Write one sub-network to disk as a standard Hugging Face model (plus, optionally, a PEFT adapter).

Layout of ``out_dir``:
  config.json, model.safetensors, generation_config.json  the merged model
  tokenizer files                                        when a tokenizer is given
  lonas_subnet.json                                      subnet id, configuration, counts, and the size of
                                                         every other file (``files``: how a reader, or a resumed
                                                         export, tells a whole copy from a partial one)
  model.gguf                                             the same model for llama.cpp (optional, Llama/Mistral;
                                                         ``merge/gguf_export.py``)
  peft/base/, peft/adapter/                              sliced unmerged base + stock-PEFT adapter (optional;
                                                         not for SparsePEFT / QA: stock LoRA cannot mask a delta)

A quantized super-network's merge is written as one compressed-tensors
pack-quantized INT4 checkpoint (``merge/compressed.py``); a sparse one as
ordinary safetensors with its zeros. ``lonas_subnet.json`` records the
compression (sparsity, pattern, bits, group size, where the scales come from)
and the bytes of the weight files.

The directory appears whole or not at all: everything is written to a sibling
temporary directory that is renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lonas_ray.atomic import atomic_dir
from lonas_ray.counting import count_subnet
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.merge.compressed import quantized_linears, save_int4
from lonas_ray.merge.extract import extract
from lonas_ray.merge.gguf_export import GGUF_FILE, check_gguf_family, write_gguf
from lonas_ray.merge.peft_export import export_peft_adapter
from lonas_ray.space import SubnetConfig

MANIFEST = "lonas_subnet.json"
SCALES_PROVENANCE = ("round-to-nearest absmax scale per group of the (pruned) base, computed once when the "
                     "super-network was built; the merged weight is rounded onto that same grid")

log = logging.getLogger(__name__)


def save_subnetwork(supernet: SuperNetwork, config: SubnetConfig, out_dir: str | Path, *,
                    tokenizer=None, with_adapter: bool = False, gguf: dict | None = None) -> dict:
    """Extract, merge and save sub-network ``config``; returns the manifest written beside it.

    ``gguf``: ``{"pre": ..., "dtype": ...}`` (``write_gguf``'s options) also writes ``model.gguf``.
    """
    supernet.space.validate(config)  # before anything is written
    if gguf is not None:
        check_gguf_family(supernet.family.name)
    with atomic_dir(out_dir) as tmp:
        return _write(supernet, config, tmp, tokenizer, with_adapter, gguf)


def align_eos(model, tokenizer) -> None:
    """Make the model's end-of-sequence id the tokenizer's, so every engine stops where lonas-ray's scorer does.

    A tiny model's config keeps its own eos id while it is trained and scored
    with the byte tokenizer (eos 255): ``generate`` would then run past the
    tokenizer's eos, and lm-eval's batched generation (which decodes without
    special tokens) would read on past the answer. Real models' ids already agree.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return
    gen = model.generation_config
    current = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    if eos in current:
        return
    model.config.eos_token_id = gen.eos_token_id = eos
    if tokenizer.pad_token_id is not None and gen.pad_token_id is None:
        model.config.pad_token_id = gen.pad_token_id = tokenizer.pad_token_id


def _write(supernet: SuperNetwork, config: SubnetConfig, tmp: Path, tokenizer, with_adapter: bool,
           gguf: dict | None) -> dict:
    model = extract(supernet, config, merge=True)
    if tokenizer is not None:
        align_eos(model, tokenizer)
    architecture = type(model).__name__
    compression = dict(supernet.compression or {})
    if quantized_linears(model):
        compression["export"] = save_int4(model, tmp)
        compression["scales"] = SCALES_PROVENANCE
    else:
        model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    manifest = {
        "subnet_id": supernet.space.subnet_id(config),
        "config": config,
        "counts": count_subnet(supernet, config).to_dict(),
        "architecture": architecture,
        "source_model_type": supernet.model.config.model_type,
        "weight_bytes": sum(f.stat().st_size for f in tmp.glob("*.safetensors")),
    }
    if compression:
        manifest["compression"] = compression
    if gguf is not None:
        path = write_gguf(tmp, tmp / GGUF_FILE, **gguf)
        manifest["gguf"] = {"file": GGUF_FILE, "bytes": path.stat().st_size, **gguf}
    masked = any(m.mask_adapter or m.qa for m in supernet.elastic.values())
    if with_adapter and masked:
        log.warning("not writing peft/: a SparsePEFT / QA adapter's delta is masked or rounded, which stock "
                    "PEFT LoRA cannot express; the merged model is the export")
        manifest["peft"] = None
    elif with_adapter and any(s.rank for layer in supernet.plan(config).layers for s in layer.linears.values()):
        base = extract(supernet, config, merge=False)
        base.save_pretrained(tmp / "peft" / "base")
        export_peft_adapter(supernet, base, tmp / "peft" / "adapter", config)
        manifest["peft"] = {"base": "peft/base", "adapter": "peft/adapter"}
    manifest["files"] = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*"))
                         if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
