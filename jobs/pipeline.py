"""`ray job submit` entrypoint: the whole pipeline (train, baseline, search, merge/export, report).

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/tiny.yaml --output s3://bucket/run
"""

import sys

from lonas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
