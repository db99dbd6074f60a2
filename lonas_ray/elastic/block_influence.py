"""Block influence: how much each decoder block changes the hidden state it is given.

``BI_i = 1 - mean over real tokens of cos(x_i, y_i)``, with ``x_i`` the block's input and
``y_i`` its output (ShortGPT, arXiv 2403.03853; Minitron ranks depth the same way). A block
whose output is nearly its input adds little, so skipping it costs little: ``depth.auto: N``
makes the N least influential blocks skippable. Depth is the axis that buys real latency in
eager and static-cache decoding (fewer blocks, fewer kernel launches: docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from lonas_ray.families import decoder_layers


@torch.no_grad()
def block_influence(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    """``BI`` of every decoder block of ``model`` on ``batch`` (padding excluded), in layer order."""
    layers = decoder_layers(model)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i: int):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            seen[i] = (x.float(), y.float())
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    mask = batch["attention_mask"].bool()
    out = []
    for i in range(len(layers)):
        x, y = seen[i]
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)[mask]
        out.append(float(1.0 - cos.mean()))
    return out


def influence_order(scores: list[float]) -> list[int]:
    """Block indices, least influential first (ties: the later block, whose removal disturbs less)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], -i))


def least_influential(scores: list[float], n: int) -> list[int]:
    """The ``n`` blocks of least influence (``influence_order``), in layer order."""
    return sorted(influence_order(scores)[:n])
