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
it asks the autoscaler for one evaluator's bundle (``request_resources``, with the
pool's label selector under label placement) and waits ``wait_for_nodes_s`` for the
node to join: by default 900 s when the cluster runs autoscaler v2 (the one that
scales label selectors, which lonas-ray's cluster files turn on) and 0 otherwise.
Autoscaler v2 reports a request that no node type can ever satisfy; that fails at
once, naming the pool, instead of after the whole wait. The request is withdrawn
(``release_requests``) when the search is done, so idle pool nodes scale back down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from lonas_ray.search.config import PoolSpec, pool_label, pool_resource

log = logging.getLogger(__name__)


RESOURCE_UNIT = 0.01  # of the pool resource per evaluator: a node tagged `pool_h100: 1` hosts many evaluators
AUTOSCALING_WAIT_S = 900.0  # wait_for_nodes_s's default under autoscaler v2: a cloud GPU node boots in minutes


class PoolError(RuntimeError):
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


_STANDING_REQUEST = [False]  # whether this process left a request_resources standing


def release_requests() -> bool:
    """Withdraw this process's standing ``request_resources``, so the autoscaler may scale pools back down.

    A request persists until replaced: without this, the last pool's nodes would
    stay up after the search. Returns whether there was one to withdraw.
    """
    if not _STANDING_REQUEST[0]:
        return False
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])
    _STANDING_REQUEST[0] = False
    log.info("withdrew the standing resource request: idle pool nodes may scale down")
    return True


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


def wait_seconds(pool: PoolSpec) -> float:
    """The pool's ``wait_for_nodes_s``, or its default for this cluster (``AUTOSCALING_WAIT_S`` under v2)."""
    if pool.wait_for_nodes_s is not None:
        return pool.wait_for_nodes_s
    return AUTOSCALING_WAIT_S if _autoscaling_state() is not None else 0.0


def _infeasible(bundle: dict[str, float]) -> bool:
    """Whether autoscaler v2 reported a standing request for ``bundle`` as one no node type can satisfy."""
    state = _autoscaling_state()
    if state is None:
        return False
    for constraint in state.infeasible_cluster_resource_constraints:
        for request in constraint.resource_requests:
            shape = dict(request.request.resources_bundle)
            if all(abs(shape.get(k, 0) - v) < 1e-9 for k, v in bundle.items()):
                return True
    return False


def wait_for_pool(name: str, pool: PoolSpec) -> tuple[Placement, list[str]]:
    """The pool's placement and the nodes that serve it now; ``PoolError`` if none does in time, or at once
    when autoscaler v2 reports that no node type of the cluster can host the pool."""
    import ray

    wait_s = wait_seconds(pool)
    deadline = time.monotonic() + wait_s
    requested, infeasible = None, False
    while True:
        nodes = ray.nodes()
        placement = resolve(name, pool, nodes)
        serving = serving_nodes(nodes, placement)
        if serving:
            return placement, serving
        if time.monotonic() >= deadline:
            break
        if requested is None:
            from ray.autoscaler.sdk import request_resources

            requested = placement.bundle()
            if placement.mode == "label":  # what autoscaler v2 scales; v1 ignores label selectors
                request_resources(bundles=[requested], bundle_label_selectors=[dict(placement.label)])
            else:
                request_resources(bundles=[requested])  # a no-op without an autoscaler
            _STANDING_REQUEST[0] = True
            log.info("pool %s: no node yet; asked the autoscaler for %s, waiting up to %.0f s", name, requested, wait_s)
        elif _infeasible(requested):
            infeasible = True
            break
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    want = f"label {placement.label}" if placement.mode == "label" else f"resource {placement.resource}"
    if infeasible:
        release_requests()
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
