"""Starting or joining Ray the way lonas-ray wants it: no usage statistics, loopback when local."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
               object_store_memory: int | None = None, resources: dict | None = None) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` if given, else start an embedded local Ray on 127.0.0.1."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address)
        return
    # Ray replaces 127.0.0.1 by the machine's interface address unless told that this is a
    # single-machine "cluster" (the switch it uses on macOS/Windows): keep an embedded Ray on loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        object_store_memory=object_store_memory,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
    )
    log.info("started a local Ray: %s", ray.cluster_resources())
