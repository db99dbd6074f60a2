"""Compute and record the fixed train/test split of the shipped BIG-bench tasks.

    python jobs/make_split.py            # (re)write lonas_ray/assets/bigbench/<task>.split.json
    python jobs/make_split.py --check    # exit 1 if a recorded split differs from a fresh one

The split is a pure function of each example's ``input`` (see
``lonas_ray.data.shipped.SPLIT_METHOD``); it is recorded so that it stays
visible in review and fixed even if the rule's code changes.
"""

from __future__ import annotations

import argparse
import json
import sys

from lonas_ray.data import shipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=shipped.TASKS, action="append", help="task(s); default: all shipped")
    parser.add_argument("--check", action="store_true", help="compare with the recorded split, write nothing")
    args = parser.parse_args(argv)
    status = 0
    for task in args.task or shipped.TASKS:
        split = shipped.compute_split(shipped.read_task(task))
        path = shipped.split_path(task)
        if args.check:
            same = path.is_file() and json.loads(path.read_text(encoding="utf-8")) == split
            print(f"{path}: {'matches' if same else 'DIFFERS from'} a fresh computation")
            status |= 0 if same else 1
            continue
        # One key a line, each list on one line: small, and still readable in a diff.
        text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in split.items()) + "\n}\n"
        path.write_text(text, encoding="utf-8")
        print(f"{path}: {len(split['train'])} train, {len(split['test'])} test")
    return status


if __name__ == "__main__":
    sys.exit(main())
