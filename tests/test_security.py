"""What lonas-ray lets in: nothing loads pickled code from a file a user or a run hands it, configs are read with
a safe YAML loader, no shell strings, and the embedded Ray listens on loopback only."""

from __future__ import annotations

import ast
import ipaddress
import json
from pathlib import Path

import pytest

from helpers import ROOT, run_python

pytestmark = [pytest.mark.ray]

SOURCES = sorted([*(ROOT / "lonas_ray").rglob("*.py"), *(ROOT / "jobs").glob("*.py")])
# The one pickle read, and why it is allowed: Ray Tune's own experiment checkpoint format (Searcher.save/restore),
# which Tune reads only when a Tune run is restored; lonas-ray never restores one (every run starts a fresh Tune
# run and resumes from results.parquet), so the file it would read is one lonas-ray's own driver wrote.
ALLOWED = {("lonas_ray/search/searchers.py", "cloudpickle.load")}


def calls(path: Path):
    """(dotted name, call node) of every call in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # model.eval() is not eval()
            yield ".".join(reversed(parts)), node


def keyword(node: ast.Call, name: str):
    kw = next((k for k in node.keywords if k.arg == name), None)
    return None if kw is None or not isinstance(kw.value, ast.Constant) else kw.value.value


def test_no_file_is_unpickled_no_yaml_is_read_unsafely_and_no_shell_runs():
    found = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        for name, node in calls(path):
            where = f"{rel}:{node.lineno} {name}"
            if name == "torch.load" and keyword(node, "weights_only") is not True:
                found.append(f"{where} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load",
                        "marshal.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec",
                        "importlib.import_module", "__import__") and (rel, name) not in ALLOWED:
                found.append(where)
            if name.startswith(("subprocess.", "os.system", "os.popen")) and (
                    keyword(node, "shell") is True or name in ("os.system", "os.popen")):
                found.append(f"{where} runs a shell string")
    assert not found, "unsafe calls: " + "; ".join(found)
    assert len(SOURCES) > 50  # the scan saw the package


def test_the_scan_finds_what_it_looks_for(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import torch, yaml, subprocess\ntorch.load('x')\nyaml.load(open('c'))\n"
                       "subprocess.run('ls', shell=True)\ntorch.load('y', weights_only=True)\nmodel().eval()\n")
    names = [(name, keyword(node, "weights_only"), keyword(node, "shell")) for name, node in calls(planted)]
    assert ("torch.load", None, None) in names and ("yaml.load", None, None) in names
    assert ("subprocess.run", None, True) in names and ("torch.load", True, None) in names
    assert ("<expr>.eval", None, None) in names  # a method called eval is not the builtin


LISTENING = r"""
import json, os, psutil
from lonas_ray.ray_env import ensure_ray
import ray
ensure_ray(None, num_cpus=1, dashboard=True)
ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
session = ray._private.worker._global_node.get_session_dir_path()
ours |= {p.pid for p in psutil.process_iter(["cmdline"]) if any(session in a for a in p.info["cmdline"] or [])}
for pid in list(ours):
    try:
        ours |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
socks = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
         if c.status == psutil.CONN_LISTEN and c.pid in ours]
print(json.dumps(socks))
ray.shutdown()
"""


@pytest.mark.timeout(300)
def test_the_embedded_ray_and_its_dashboard_listen_on_loopback_only():
    """Every listening socket of an embedded Ray started by lonas-ray (GCS, raylet, object store, dashboard and
    its job server, metrics) is bound to loopback: nothing of it is reachable from another machine."""
    socks = json.loads(run_python(LISTENING, timeout=240).stdout.strip().splitlines()[-1])
    assert len(socks) >= 3, socks
    assert all(loopback(ip) for ip, _ in socks), socks


def loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or IPv4's loopback written as IPv6 (``::ffff:127.0.0.1``, how gRPC servers list it)."""
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)
