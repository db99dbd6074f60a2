"""Channel and head importance, and the permutation that puts the important ones first.

Elastic widths keep "the first k" channels, so before training the super-adapter
we sort each layer's MLP channels and GQA groups by importance measured on a
calibration batch. The permutation moves producer rows (gate/up, q/k/v, their
biases and lora_B rows) and consumer columns (down, o, their lora_A columns)
together, so the permuted network computes exactly what the original did.

Scores: ``grad`` is first-order Taylor importance, sum of |w * dL/dw| over the
weights a channel owns; ``activation`` is the L2 norm of the channel's
activation (the input of down_proj / o_proj) over the batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from lonas_ray.elastic.linear import ElasticLinear, base_linear
from lonas_ray.elastic.supernet import SuperNetwork

METHODS = ("grad", "activation")


@dataclass
class Importance:
    """Per-layer scores: ``mlp[i]`` has one per intermediate channel, ``heads[i]`` one per GQA group."""

    mlp: list[torch.Tensor]
    heads: list[torch.Tensor]

    def to_dict(self) -> dict:
        return {"mlp": [t.tolist() for t in self.mlp], "heads": [t.tolist() for t in self.heads]}

    @classmethod
    def from_dict(cls, data: dict) -> Importance:
        return cls([torch.tensor(v) for v in data["mlp"]], [torch.tensor(v) for v in data["heads"]])


def _parts(module: nn.Module) -> tuple[nn.Linear, ElasticLinear | None]:
    return base_linear(module), (module if isinstance(module, ElasticLinear) else None)


def _group_rows(supernet: SuperNetwork, query: bool) -> int:
    """Rows of q (query=True) or of k/v owned by one GQA group."""
    shape = supernet.shape
    return shape.head_dim * (shape.heads_per_group if query else 1)


def _per_channel(t: torch.Tensor, dim: int, group: int = 1) -> torch.Tensor:
    """Sum |t| over everything but ``dim`` (rows 0 / columns 1), then over consecutive blocks of ``group``."""
    s = t.abs().float().sum(dim=1 - dim) if t.dim() == 2 else t.abs().float()
    return s.view(-1, group).sum(dim=1)


@contextlib.contextmanager
def _grad_on_base(supernet: SuperNetwork, layers: list[dict[str, nn.Module]]):
    weights = [_parts(m)[0].weight for lin in layers for m in lin.values()]
    adapters = supernet.adapter_parameters()
    saved = [p.grad for p in adapters]  # scoring must not leave gradients in a training run
    for w in weights:
        w.requires_grad_(True)
        w.grad = None
    try:
        yield
    finally:
        for w in weights:
            w.requires_grad_(False)
            w.grad = None
        for p, g in zip(adapters, saved):
            p.grad = g


def score(supernet: SuperNetwork, batch: dict[str, torch.Tensor], method: str = "grad") -> Importance:
    """Importance of every MLP channel and GQA group of the maximal network on ``batch``."""
    if method not in METHODS:
        raise ValueError(f"unknown importance method '{method}'; choose one of {', '.join(METHODS)}")
    fam, n = supernet.family, supernet.shape.num_layers
    layers = [supernet.linears(i) for i in range(n)]
    q_rows, kv_rows = _group_rows(supernet, True), _group_rows(supernet, False)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with supernet.activated(supernet.space.maximal()):
        if method == "grad":
            with _grad_on_base(supernet, layers):
                labels = batch.get("labels", batch["input_ids"])
                supernet(**inputs, labels=labels).loss.backward()
                mlp, heads = [], []
                for lin in layers:
                    wg = {k: (_parts(m)[0].weight * _parts(m)[0].weight.grad) for k, m in lin.items()}
                    mlp.append(
                        _per_channel(wg[fam.gate], 0) + _per_channel(wg[fam.up], 0) + _per_channel(wg[fam.down], 1))
                    heads.append(
                        _per_channel(wg[fam.q], 0, q_rows) + _per_channel(wg[fam.k], 0, kv_rows)
                        + _per_channel(wg[fam.v], 0, kv_rows) + _per_channel(wg[fam.o], 1, q_rows)
                    )
            return Importance([t.detach() for t in mlp], [t.detach() for t in heads])
        sums: dict[tuple[int, str], torch.Tensor] = {}

        def hook(key):
            def fn(_module, args):
                x = args[0].detach().float()
                sq = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
                sums[key] = sums.get(key, 0) + sq
            return fn

        handles = [
            layers[i][name].register_forward_pre_hook(hook((i, name))) for i in range(n) for name in (fam.down, fam.o)
        ]
        try:
            with torch.no_grad():
                supernet(**inputs)
        finally:
            for h in handles:
                h.remove()
        mlp = [sums[(i, fam.down)].sqrt() for i in range(n)]
        heads = [sums[(i, fam.o)].view(-1, q_rows).sum(1).sqrt() for i in range(n)]
        return Importance(mlp, heads)


def _take(t: torch.Tensor | None, index: torch.Tensor, dim: int) -> None:
    if t is not None:
        with torch.no_grad():
            t.copy_(t.index_select(dim, index.to(t.device)))


def _permute_out(module: nn.Module, rows: torch.Tensor) -> None:
    base, elastic = _parts(module)
    _take(base.weight, rows, 0)
    _take(base.bias, rows, 0)
    if elastic is not None and elastic.r_max:
        _take(elastic.lora_B, rows, 0)


def _permute_in(module: nn.Module, cols: torch.Tensor) -> None:
    base, elastic = _parts(module)
    _take(base.weight, cols, 1)
    if elastic is not None and elastic.r_max:
        _take(elastic.lora_A, cols, 1)


def _expand(order: torch.Tensor, block: int) -> torch.Tensor:
    """Group order -> row order when each group owns ``block`` consecutive rows."""
    return (order[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def reorder(supernet: SuperNetwork, importance: Importance) -> dict[str, list[list[int]]]:
    """Permute every layer so channels and groups are in descending importance; returns the permutations."""
    fam = supernet.family
    q_rows, kv_rows = _group_rows(supernet, True), _group_rows(supernet, False)
    perms: dict[str, list[list[int]]] = {"mlp": [], "heads": []}
    for i in range(supernet.shape.num_layers):
        lin = supernet.linears(i)
        order = torch.argsort(importance.mlp[i].float(), descending=True, stable=True)
        for name in (fam.gate, fam.up):
            _permute_out(lin[name], order)
        _permute_in(lin[fam.down], order)
        groups = torch.argsort(importance.heads[i].float(), descending=True, stable=True)
        q_order, kv_order = _expand(groups, q_rows), _expand(groups, kv_rows)
        _permute_out(lin[fam.q], q_order)
        _permute_out(lin[fam.k], kv_order)
        _permute_out(lin[fam.v], kv_order)
        _permute_in(lin[fam.o], q_order)
        perms["mlp"].append(order.tolist())
        perms["heads"].append(groups.tolist())
    return perms
