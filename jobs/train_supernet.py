"""`ray job submit` entrypoint: train the super-adapter.

    ray job submit --working-dir . -- python jobs/train_supernet.py --config jobs/configs/train_tiny.yaml
"""

import sys

from lonas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
