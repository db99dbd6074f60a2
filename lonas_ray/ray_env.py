"""Starting or joining Ray the way lonas-ray wants it: no usage statistics, loopback when local."""

from __future__ import annotations

import logging
import os

from lonas_ray.config_io import InputError

log = logging.getLogger(__name__)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# "1": the workers' output (Ray Train's per-step reports, DeepSpeed, evaluators, merges) is copied to this
# driver's terminal as Ray does by default; otherwise it stays in the workers' log files (``lonas-ray --verbose``)
VERBOSE_ENV = "LONAS_RAY_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def prefer_loopback() -> None:
    """Make a Ray started by this process bind its node to 127.0.0.1.

    Ray replaces 127.0.0.1 by the machine's interface address unless told that this is a
    single-machine "cluster" (the switch it uses on macOS/Windows). Ray reads the switch when
    it is first imported, so call this before importing ray, and only when no cluster will be
    joined (on a real cluster the driver must advertise its real address).
    """
    os.environ.setdefault(LOOPBACK_ENV, "0")


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
               object_store_memory: int | None = None, resources: dict | None = None,
               labels: dict | None = None) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS`` if given, else start an embedded local Ray on 127.0.0.1.

    ``resources`` and ``labels`` apply to an embedded Ray only (a cluster's nodes have
    their own). Returns True when this call started an embedded Ray.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        prefer_loopback()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        log.info("joining the Ray cluster at %s", address)
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address)
        except AuthenticationError as exc:  # Ray's message names where the token is looked for
            raise InputError(f"the Ray cluster at {address} refused this driver: {exc}") from None
        _quiet_terminal()
        _install_dashboard()
        return False
    context = ray.init(
        address="local",  # a new embedded Ray, never a stray one some other process left running
        num_cpus=num_cpus,
        resources=resources,
        labels=labels,
        include_dashboard=None if dashboard else False,  # None: the dashboard where ray[default]'s parts are
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        object_store_memory=object_store_memory,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
    )
    log.info("started a local Ray: %s", ray.cluster_resources())
    _quiet_terminal()
    if dashboard and context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
        _install_dashboard()
    elif dashboard:  # a minimal Ray (no aiohttp, say): run without the dashboard rather than not at all
        print("no Ray dashboard: this Ray lacks ray[default]'s dashboard packages; the run goes on without it",
              flush=True)
    return True


def _quiet_terminal() -> None:
    """Unless ``verbose``: copy only the workers' progress bars to this terminal, and say in the first lines a user
    reads where the rest went."""
    if verbose():
        return
    import ray

    _forward_only_progress_bars()
    node = getattr(ray._private.worker, "_global_node", None)
    where = f"{node.get_logs_dir_path()} on each node" if node is not None else "each node's Ray session logs"
    print(f"workers' logs (training, evaluators, merges): {where}, and the Ray dashboard's Logs page; "
          "--verbose shows them here", flush=True)


def _forward_only_progress_bars() -> None:
    """Ray copies every line its workers print to the driver's terminal (Ray Train's per-step report lines,
    DeepSpeed's and torch's warnings, each once per worker), or with ``log_to_driver=False`` none, which loses the
    training bar: ``tqdm_ray`` bars travel as those lines. Ray has no public switch for "bars only", so this
    replaces the driver's handler of worker lines (``ray_print_logs``, the name Ray removes at shutdown) by one that
    passes the bar states on to Ray's own printer and drops the rest. Ray's private names: pinned by the lock
    (ray 2.60); a Ray without them keeps its default (every line shown)."""
    try:
        from ray._private import worker as ray_worker
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

        dispatcher, show = ray_worker.global_worker_stdstream_dispatcher, ray_worker.print_to_stdstream
    except (ImportError, AttributeError):
        log.warning("this Ray's log forwarding is not the one lonas-ray knows: every worker line is shown")
        return

    def bars_only(data: dict) -> None:
        lines = [line for line in data.get("lines", []) if RAY_TQDM_MAGIC in line]
        if lines:
            show({**data, "lines": lines}, ignore_prefix=False)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", bars_only)


def _install_dashboard() -> None:
    """lonas-ray's Grafana dashboard beside Ray's own (``lonas_ray.grafana``), in the background."""
    from lonas_ray.grafana import install_in_background

    install_in_background()
