"""The weight-sharing super-network: a Hugging Face causal LM with elastic parts.

``SuperNetwork(model, spec)`` swaps the block linears that carry an adapter or
are sliced by the space for ``ElasticLinear`` and the skippable blocks for
``SkippableBlock``, freezes the base, and from then on ``activate(config)``
selects a sub-network by setting integers on those modules. Nothing here knows
about Ray: training, search and merge all drive this class.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from lonas_ray.elastic.depth import SkippableBlock
from lonas_ray.elastic.linear import ElasticLinear
from lonas_ray.families import Family, decoder_layers, family_of, get_submodule
from lonas_ray.plan import SubnetPlan, make_plan
from lonas_ray.shape import ModelShape
from lonas_ray.space import SearchSpace, SpaceSpec, SubnetConfig

log = logging.getLogger(__name__)


class SuperNetwork(nn.Module):
    def __init__(self, model: nn.Module, space: SpaceSpec | SearchSpace):
        super().__init__()
        self.family: Family = family_of(model)
        self.shape = ModelShape.from_config(model.config)
        if isinstance(space, SpaceSpec):
            space = SearchSpace.resolve(space, self.shape)
        elif space.shape != self.shape:
            raise ValueError(f"the search space was sized for {space.shape}, but the model is {self.shape}")
        self.space = space
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        self.elastic: dict[tuple[int, str], ElasticLinear] = {}
        self.skippable: dict[int, SkippableBlock] = {}
        self._wrap()
        self._setters = self._compile_setters()
        self.active_config: SubnetConfig = {}
        self.compression: dict | None = None  # what lonas_ray.compress did to the base (for manifests)
        self.activate(space.maximal())

    # ---- construction

    def set_space(self, space: SpaceSpec | SearchSpace) -> None:
        """Switch to another space over the same adapters (e.g. one generated from importance).

        Newly elastic linears and blocks are wrapped; existing adapters are kept, so the
        LoRA settings (targets, r_max, alpha) must not change.
        """
        if isinstance(space, SpaceSpec):
            space = SearchSpace.resolve(space, self.shape)
        same = (space.target_modules, space.r_max, space.alpha) == (
            self.space.target_modules, self.space.r_max, self.space.alpha)
        if not same or space.shape != self.shape:
            raise ValueError("set_space keeps the adapters: targets, r_max, alpha and the model shape must not change")
        self.activate(self.space.maximal())  # leave every module at full size before re-planning
        self.space = space
        self._wrap()
        self._setters = self._compile_setters()
        self.activate(space.maximal())

    def _sliced_modules(self, layer: int) -> set[str]:
        fam, dims = self.family, self.space.dims
        out: set[str] = set()
        if f"heads.{layer}" in dims:
            out.update(fam.attn_modules)
        if f"mlp.{layer}" in dims:
            out.update(fam.mlp_modules)
        return out

    def _wrap(self) -> None:
        layers = decoder_layers(self.model, self.family)
        targets = set(self.space.target_modules)
        for i, layer in enumerate(layers):
            block = layer.block if isinstance(layer, SkippableBlock) else layer
            for name in sorted(targets | self._sliced_modules(i)):
                parent = get_submodule(block, self.family.parent_of(name))
                base = getattr(parent, name)
                if isinstance(base, ElasticLinear):
                    continue  # already elastic (set_space re-wraps only what is new)
                r_max = self.space.r_max if name in targets else 0
                wrapped = ElasticLinear(base, r_max, self.space.alpha, self.space.dropout)
                setattr(parent, name, wrapped)
                self.elastic[(i, name)] = wrapped
            if f"keep.{i}" in self.space.dims and i not in self.skippable:
                layers[i] = self.skippable[i] = SkippableBlock(block, get_submodule(block, self.family.attn))

    def _compile_setters(self) -> dict[str, Callable[[object], None]]:
        """One small closure per dimension that writes its choice into the modules it controls.

        Activation is on the training hot path (every step) and must stay far below a
        millisecond for 7B-sized models, so it is a loop over these closures; ``make_plan``
        is the reference these writes must agree with (a test checks that).
        """
        fam, hd, group = self.family, self.shape.head_dim, self.shape.heads_per_group
        setters: dict[str, Callable[[object], None]] = {}
        for name, dim in self.space.dims.items():
            i = dim.layer
            if dim.kind == "rank":
                slices = [self.elastic[(i, m)].active for m in dim.modules if self.elastic[(i, m)].r_max]

                def set_rank(r, slices=slices):
                    for s in slices:
                        s.rank = r
                setters[name] = set_rank
            elif dim.kind == "heads":
                q, k, v, o = (self.elastic[(i, m)].active for m in fam.attn_modules)

                def set_heads(h, q=q, k=k, v=v, o=o):
                    q.out_features = o.in_features = h * hd
                    k.out_features = v.out_features = (h // group) * hd
                setters[name] = set_heads
            elif dim.kind == "mlp":
                gate, up, down = (self.elastic[(i, m)].active for m in fam.mlp_modules)

                def set_mlp(w, gate=gate, up=up, down=down):
                    gate.out_features = up.out_features = down.in_features = w
                setters[name] = set_mlp
            else:
                state = self.skippable[i].state

                def set_keep(keep, state=state):
                    state.skip = not keep
                setters[name] = set_keep
        return setters

    # ---- activation

    def activate(self, config: SubnetConfig) -> None:
        """Make ``config`` the active sub-network (validated first: a bad config changes nothing)."""
        self.space.validate(config)
        setters = self._setters
        for name, value in config.items():
            setters[name](value)
        self.active_config = dict(config)

    def plan(self, config: SubnetConfig | None = None) -> SubnetPlan:
        """The slicing plan of ``config`` (default: the active sub-network)."""
        return make_plan(self.space, self.active_config if config is None else config)

    @contextlib.contextmanager
    def activated(self, config: SubnetConfig) -> Iterator[SubnetPlan]:
        """Activate ``config`` for a block of code, then restore the previous sub-network."""
        previous = self.active_config
        try:
            self.activate(config)
            yield self.plan()
        finally:
            self.activate(previous)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # ---- adapter state

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.elastic.values() for p in (m.lora_A, m.lora_B) if p is not None]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors keyed ``layers.<i>.<linear>.lora_{A,B}``: stable whatever the wrapper layout."""
        out = {}
        for (i, name), m in self.elastic.items():
            if m.r_max:
                out[f"layers.{i}.{name}.lora_A"] = m.lora_A.detach()
                out[f"layers.{i}.{name}.lora_B"] = m.lora_B.detach()
        return out

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter tensors saved by ``adapter_state_dict``; any mismatch is an error, not a partial load."""
        expected = self.adapter_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"adapter state does not match this super-network: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(f"adapter tensor {key} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(expected[key].shape)}")
        with torch.no_grad():
            for (i, name), m in self.elastic.items():
                if m.r_max:
                    m.lora_A.copy_(state[f"layers.{i}.{name}.lora_A"])
                    m.lora_B.copy_(state[f"layers.{i}.{name}.lora_B"])

    def linears(self, i: int) -> dict[str, nn.Module]:
        """Block ``i``'s linears by family name (``ElasticLinear`` where wrapped, else ``nn.Linear``)."""
        block, fam = self.block(i), self.family
        return {n: getattr(block.get_submodule(fam.parent_of(n)), n) for n in fam.linear_modules}

    def block(self, i: int) -> nn.Module:
        """Decoder block ``i`` without its skip wrapper."""
        layer = decoder_layers(self.model, self.family)[i]
        return layer.block if isinstance(layer, SkippableBlock) else layer
