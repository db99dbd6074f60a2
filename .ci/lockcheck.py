"""The lock file (constraints.txt): print what is installed, check it against the lock, or write a new lock.

Why a pip constraints file and not a requirements lock: ``pip install -c`` pins
every package *if* it is installed, so the README's one set-up line stays
``pip install -e ".[dev]"`` and the project's own bounds (pyproject.toml) still
decide what is installed; the file only fixes which release each one is.

  python .ci/lockcheck.py check    versions of the packages failures come from, then every pin vs what is installed
  python .ci/lockcheck.py freeze   write the lock from the active environment (after the suite passed on it)
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
# Shown first in CI logs: a new release of one of these is what usually breaks the suite.
KEY = ("torch", "transformers", "peft", "ray", "deepspeed", "datasets", "pyarrow", "optuna")
# Not pinned: the project itself, and pip's own tooling (the venv brings its own).
UNPINNED = {"lonas-ray", "pip", "setuptools", "wheel"}
HEADER = """\
# The exact releases lonas-ray's suite last passed on (Python 3.11, CPU, Linux x86-64).
# Used as `pip install -c constraints.txt ...` by the README's set-up and .ci/run;
# `.ci/lockcheck.py check` compares it with what is installed. Do not edit by hand:
# `.ci/upgrade` installs the newest releases pyproject.toml allows, runs the suite and rewrites this file.
# torch is pinned without its local label (+cpu), so a CUDA build of the same release satisfies it.
"""


def installed() -> dict[str, str]:
    """Canonical name -> version of every distribution in the active environment."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def read_lock(text: str) -> list[Requirement]:
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins.append(Requirement(line))
    return pins


def mismatches(pins: list[Requirement], have: dict[str, str]) -> list[str]:
    """One line per pin the environment does not satisfy (missing, or another release)."""
    out = []
    for pin in pins:
        version = have.get(canonicalize_name(pin.name))
        if version is None:
            out.append(f"{pin.name}: locked {pin.specifier}, not installed")
        elif not pin.specifier.contains(Version(version), prereleases=True):
            out.append(f"{pin.name}: locked {pin.specifier}, installed {version}")
    return out


def freeze_text(have: dict[str, str]) -> str:
    lines = []
    for name in sorted(have):
        if name in UNPINNED:
            continue
        version = Version(have[name])
        lines.append(f"{name}=={version.public}")  # public: drop +cpu / +cu128
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("check", "freeze"))
    parser.add_argument("--lock", type=Path, default=LOCK, help="the constraints file (default: %(default)s)")
    args = parser.parse_args(argv)
    have = installed()
    if args.action == "freeze":
        args.lock.write_text(freeze_text(have))
        print(f"wrote {args.lock} ({len(have) - len(UNPINNED & set(have))} pins)")
        return 0
    print("python " + sys.version.split()[0])
    print(" ".join(f"{name}=={have.get(name, 'missing')}" for name in KEY))
    if not args.lock.is_file():
        print(f"error: lock file {args.lock} not found; write one with `.ci/lockcheck.py freeze`", file=sys.stderr)
        return 2
    bad = mismatches(read_lock(args.lock.read_text()), have)
    if bad:
        print(f"error: the environment differs from {args.lock.name}:\n  " + "\n  ".join(bad), file=sys.stderr)
        print("fix: reinstall with `pip install -c constraints.txt ...` (README set-up), or run .ci/upgrade "
              "and commit the lock it writes", file=sys.stderr)
        return 1
    print(f"{args.lock.name}: all pins match")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
