"""Write a quantized sub-network as one compressed-tensors ``pack-quantized`` (W4A16) checkpoint.

Stock ``transformers`` (with the ``compressed-tensors`` package installed) loads
it with ``AutoModelForCausalLM.from_pretrained(dir)``, and vLLM lists the
format. The library does the packing; lonas-ray supplies its own integers and
scales: the extracted model's linears already hold ``q * s`` (the merged
weight put on the base's grid, ``ElasticLinear.merged_weight``) and carry ``s``
(``quant.attach_scale``), so the compressor's ``round(W / s)`` gives back
exactly the ``q`` that training used and the reloaded model computes what the
fake-quantized super-network computed.

Loaded in transformers' default mode, the weights are unpacked to dense on the
first forward: on CPU the saving is on disk and in transfer, not in speed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lonas_ray.quant import scale_of

FORMAT = "pack-quantized"


def quantized_linears(model: nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
    """Module name -> (scales, bits) of every linear that carries group scales."""
    return {name: q for name, m in model.named_modules() if isinstance(m, nn.Linear) and (q := scale_of(m))}


def save_int4(model: nn.Module, out_dir: str | Path) -> dict:
    """Compress ``model`` in place into pack-quantized tensors and save it; returns the quantization facts."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    quant = quantized_linears(model)
    groups = {m.in_features // s.shape[1] for name, (s, _) in quant.items() for m in [model.get_submodule(name)]}
    bits = {b for _, b in quant.values()}
    if len(groups) != 1 or bits != {4}:
        raise ValueError(f"the INT4 export needs 4-bit linears of one group size, got bits {bits}, groups {groups}")
    group = groups.pop()
    dense = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in quant]
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=group))
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": scheme}, ignore=dense, quantization_status=QuantizationStatus.FROZEN))
    with torch.no_grad():
        for name, (scale, _) in quant.items():
            module = model.get_submodule(name)
            module.weight_scale.data.copy_(scale.to(module.weight_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=FORMAT)
    compressor.compress_model(model)
    model.save_pretrained(out_dir)
    compressor.update_config(str(out_dir))
    return {"format": f"compressed-tensors {FORMAT}", "bits": 4, "group_size": group, "symmetric": True,
            "quantized_linears": len(quant), "dense_linears": dense}
