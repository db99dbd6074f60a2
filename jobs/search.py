"""`ray job submit` entrypoint: evaluate sub-networks on the hardware pools and write the Pareto set.

    ray job submit --working-dir . -- python jobs/search.py --config jobs/configs/search_tiny.yaml
"""

import sys

from lonas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
