"""Placing evaluation trials on a hardware pool's nodes, and failing fast when no node can serve it.

Ray's recommended way to pin work to node types (since 2.49) is a label
selector; a cluster without labels can still tag its node types with a custom
resource (``pool_h100: 1``). Both forms end up in the Tune trial's placement
group: labels as ``bundle_label_selector``, the resource as a bundle entry of
``RESOURCE_UNIT`` (a node's one unit is a tag, not a capacity: how many
evaluators fit is decided by the CPUs and GPUs they ask for).

A trial whose placement group no node can satisfy stays PENDING forever, so
before a pool's trials are submitted ``wait_for_pool`` checks the live nodes
(label or resource, and enough CPUs/GPUs on that node for one evaluator) and
raises ``PoolError`` naming what the nodes do offer. On an autoscaling cluster
it instead places a placement group of one evaluator's bundle, with the pool's label
selector under label placement (exactly what a trial will ask for, so the
autoscaler adds the node type a trial needs), and waits ``wait_for_nodes_s`` for it:
by default 900 s when the cluster runs autoscaler v2 (the one that scales label
selectors, which lonas-ray's cluster files turn on) and 0 otherwise. Autoscaler v2
reports a placement group that no node type can ever host, by the group's id; that
fails at once, naming the pool, instead of after the whole wait. The group is removed
as soon as the node is there (or the wait ends), so nothing of the wait keeps a node
up: pools searched at once wait at once, each for its own group, and idle pool nodes
scale down after the search as the autoscaler's idle timeout says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ray.tune.stopper import Stopper

from lonas_ray.config_io import InputError
from lonas_ray.search.config import PoolSpec, pool_label, pool_resource
from lonas_ray.search.stop import stop_requested

log = logging.getLogger(__name__)


RESOURCE_UNIT = 0.01  # of the pool resource per evaluator: a node tagged `pool_h100: 1` hosts many evaluators
AUTOSCALING_WAIT_S = 900.0  # wait_for_nodes_s's default under autoscaler v2: a cloud GPU node boots in minutes


class PoolError(InputError, RuntimeError):
    """No node of the cluster can run the pool's evaluators; the message says what the nodes offer."""


@dataclass(frozen=True)
class Placement:
    pool: str
    mode: str  # "label" or "resource"
    label: dict[str, str]
    resource: str
    cpus: float
    gpus: float

    def bundle(self) -> dict[str, float]:
        b = {"CPU": self.cpus, "GPU": self.gpus}
        if self.mode == "resource":
            b[self.resource] = RESOURCE_UNIT
        return {k: v for k, v in b.items() if v}

    def task_options(self) -> dict:
        """``.options()`` of a Ray task that must run on one of the pool's nodes (a pre-search check)."""
        opts = {"num_cpus": min(self.cpus, 1) if self.cpus else 0, "num_gpus": 0}
        if self.mode == "resource":
            opts["resources"] = {self.resource: RESOURCE_UNIT}
        else:
            opts["label_selector"] = dict(self.label)
        return opts

    def trial_resources(self):
        """The ``PlacementGroupFactory`` a Tune trial of this pool asks for."""
        from ray import tune

        kwargs = {"bundle_label_selector": [self.label]} if self.mode == "label" else {}
        return tune.PlacementGroupFactory([self.bundle()], **kwargs)


def _has_label(node: dict, label: dict[str, str]) -> bool:
    labels = node.get("Labels") or {}
    return all(labels.get(k) == v for k, v in label.items())


def _fits(node: dict, cpus: float, gpus: float) -> bool:
    res = node.get("Resources") or {}
    return res.get("CPU", 0) >= cpus and res.get("GPU", 0) >= gpus


def serving_nodes(nodes: list[dict], placement: Placement) -> list[str]:
    """Ids of the live nodes that can host one evaluator of ``placement``."""
    out = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        if placement.mode == "label" and not _has_label(node, placement.label):
            continue
        if placement.mode == "resource" and (node.get("Resources") or {}).get(placement.resource, 0) < RESOURCE_UNIT:
            continue
        if _fits(node, placement.cpus, placement.gpus):
            out.append(node["NodeID"])
    return out


def resolve(name: str, pool: PoolSpec, nodes: list[dict]) -> Placement:
    """The pool's placement; ``auto`` picks labels when some live node carries them, else the resource."""
    label, resource = pool_label(name, pool), pool_resource(name, pool)
    mode = pool.placement
    if mode == "auto":
        labelled = any(n.get("Alive") and _has_label(n, label) for n in nodes)
        mode = "label" if labelled else "resource"
    return Placement(name, mode, label, resource, pool.cpus, pool.gpus)


def describe_nodes(nodes: list[dict]) -> str:
    parts = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        labels = {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}
        res = {k: v for k, v in (n.get("Resources") or {}).items()
               if not k.startswith(("node:", "memory", "object_store_memory", "accelerator_type"))}
        parts.append(f"node {n['NodeID'][:8]} labels={labels} resources={res}")
    return "; ".join(parts) or "no live nodes"


def _autoscaling_state():
    """Autoscaler v2's last report (``autoscaler_pb2.AutoscalingState``), or None when no v2 autoscaler runs."""
    import ray
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    try:
        reply = GetClusterStatusReply.FromString(
            GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
    except Exception as exc:  # noqa: BLE001  (an older GCS, or a transient error: treat as no v2 report)
        log.debug("no autoscaler status: %s", exc)
        return None
    state = reply.autoscaling_state
    return state if state.autoscaler_state_version > 0 else None


def autoscaling() -> bool:
    """Whether an autoscaler (v2) may still add nodes to this cluster."""
    return _autoscaling_state() is not None


def bundles_that_fit(nodes: list[dict], bundle: dict[str, float]) -> int:
    """How many copies of ``bundle`` (Ray resources) the live ``nodes`` hold at once, each on one node."""
    total = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        res = node.get("Resources") or {}
        total += int(min((res.get(k, 0) / v for k, v in bundle.items() if v > 0), default=0) + 1e-9)
    return total


def shortfall(bundle: dict[str, float], count: int) -> tuple[int, list[dict]] | None:
    """None when the live nodes hold ``count`` copies of ``bundle`` at once, or an autoscaler may add nodes; else
    (how many they hold, the nodes): the preflight of work Ray would otherwise hold pending for ever."""
    import ray

    nodes = ray.nodes()
    room = bundles_that_fit(nodes, bundle)
    return None if room >= count or autoscaling() else (room, nodes)


def wait_seconds(pool: PoolSpec) -> float:
    """The pool's ``wait_for_nodes_s``, or its default for this cluster (``AUTOSCALING_WAIT_S`` under v2)."""
    if pool.wait_for_nodes_s is not None:
        return pool.wait_for_nodes_s
    return AUTOSCALING_WAIT_S if _autoscaling_state() is not None else 0.0


def _infeasible(group_id: str) -> bool:
    """Whether autoscaler v2 reports placement group ``group_id`` as one no node type can host."""
    state = _autoscaling_state()
    return state is not None and any(g.details.startswith(group_id)
                                     for g in state.infeasible_gang_resource_requests)


def wait_for_pool(name: str, pool: PoolSpec) -> tuple[Placement, list[str]]:
    """The pool's placement and the nodes that serve it now; ``PoolError`` if none does in time, or at once
    when autoscaler v2 reports that no node type of the cluster can host the pool's evaluators."""
    import ray

    nodes = ray.nodes()
    placement = resolve(name, pool, nodes)
    serving = serving_nodes(nodes, placement)
    if serving:
        return placement, serving
    wait_s = wait_seconds(pool)
    infeasible = False
    if wait_s > 0:
        from ray.util.placement_group import placement_group, remove_placement_group

        label = [dict(placement.label)] if placement.mode == "label" else None
        group = placement_group([placement.bundle()], bundle_label_selector=label, name=f"lonas-wait-{name}")
        log.info("pool %s: no node yet; waiting up to %.0f s for the autoscaler to add one for %s", name, wait_s,
                 placement.bundle() | ({"label": label[0]} if label else {}))
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline:
                if group.wait(timeout_seconds=min(2.0, max(0.1, deadline - time.monotonic()))):
                    break
                if _infeasible(group.id.hex()):
                    infeasible = True
                    break
        finally:
            remove_placement_group(group)  # the node stays for the trials; the group would pin it for good
        nodes = ray.nodes()
        placement = resolve(name, pool, nodes)
        serving = serving_nodes(nodes, placement)
        if serving:
            return placement, serving
    want = f"label {placement.label}" if placement.mode == "label" else f"resource {placement.resource}"
    if infeasible:
        raise PoolError(
            f"pool '{name}': no node type of this cluster can run an evaluator ({want}, {pool.cpus:g} CPU, "
            f"{pool.gpus:g} GPU), says the autoscaler; the cluster has: {describe_nodes(nodes)}. Add a node type "
            f"with the label {{{next(iter(placement.label))}: {name}}} and the resource {placement.resource} to the "
            "cluster config, or lower the pool's cpus/gpus.")
    raise PoolError(
        f"pool '{name}': no live node can run an evaluator ({want}, {pool.cpus:g} CPU, {pool.gpus:g} GPU) after "
        f"waiting {wait_s:.0f} s; the cluster has: {describe_nodes(nodes)}. Add or label a node for the pool, lower "
        "the pool's cpus/gpus, or set wait_for_nodes_s on an autoscaling cluster."
    )


class PoolWatch(Stopper):
    """A Tune stopper that ends a pool's run when no live node can host its evaluators any more.

    A trial whose placement group no node can satisfy stays PENDING forever, so without this a
    pool whose node is lost mid-search (a spot node reclaimed, a crashed host) would hang the
    search. Checked every ``every_s`` seconds; the run stops once the pool has had no serving
    node for ``grace_s`` (its ``wait_seconds``: 0 on a fixed cluster, the autoscaler's boot time
    under v2, when a replacement node may come). ``lost`` then holds the reason, which the
    driver raises as ``PoolError``. Plain data, so Tune may pickle it with the run.
    """

    def __init__(self, placement: Placement, grace_s: float, every_s: float = 2.0):
        self.placement, self.grace_s, self.every_s = placement, grace_s, every_s
        self.checked = self.gone_since = None
        self.lost: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        return result.get("training_iteration", 0) >= 1  # one trial is one evaluation

    def stop_all(self) -> bool:
        if self.lost is not None or stop_requested():
            return True
        now = time.monotonic()
        if self.checked is not None and now - self.checked < self.every_s:
            return False
        self.checked = now
        import ray

        nodes = ray.nodes()
        if serving_nodes(nodes, self.placement):
            self.gone_since = None
            return False
        self.gone_since = self.gone_since or now
        if now - self.gone_since < self.grace_s:
            return False
        self.lost = (f"pool '{self.placement.pool}': its nodes were lost mid-run and none came back within "
                     f"{self.grace_s:.0f} s (the cluster has: {describe_nodes(nodes)}); its rows so far are kept, "
                     "re-run to continue once the pool has a node again")
        log.error("%s", self.lost)
        return True
