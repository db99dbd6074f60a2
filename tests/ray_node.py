"""A Ray worker node joining the cluster at GCS_ADDRESS on 127.0.0.1, as ``ray.cluster_utils.Cluster`` adds one,
in whatever namespaces this process was started in (tests start it under ``unshare --mount``).

    python tests/ray_node.py GCS_ADDRESS NUM_CPUS RESOURCES_JSON LABELS_JSON

Prints ``ready <node id>`` once the node runs, and keeps it up until SIGTERM or SIGINT. Not ``ray start``:
its CLI refuses to add a node while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray on loopback, and with the
variable on it moves every address to the machine's public IP.
"""

import json
import signal
import sys

from ray._private.node import Node
from ray._private.parameter import RayParams


def main() -> None:
    gcs, cpus, resources, labels = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    params = RayParams(node_ip_address="127.0.0.1", gcs_address=gcs, num_cpus=cpus, resources=resources,
                       labels=labels, object_store_memory=300_000_000)
    node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print("ready", node.node_id, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
