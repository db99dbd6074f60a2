"""Run output on a URI (lonas_ray.storage): the driver's working copy mirrored to an S3-compatible server (moto's,
on loopback), resumed from it into a fresh copy, and the bad URIs and locations refused with the fix named."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import ROOT, TINY, Head, lonas_cli_batch
from lonas_ray import storage as storage_module
from lonas_ray.config_io import ConfigError
from lonas_ray.pipeline.export import already_exported, deliver
from lonas_ray.storage import RunStorage, check_not_in_job_copy, download_file, upload_file, upload_tree

pytestmark = [pytest.mark.timeout(300), pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3():
    """An S3 server on loopback with a bucket ``lonas``; the environment pyarrow (and Ray's workers) read."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("lonas")
    try:
        yield env, fs
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def remote_files(fs, prefix: str) -> dict[str, bytes]:
    found = {}
    for f in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True)):
        if f.type == pafs.FileType.File:
            with fs.open_input_stream(f.path) as src:
                found[f.path[len(prefix) + 1:]] = src.read()
    return found


def test_a_uri_run_is_mirrored_to_storage_and_resumed_into_a_fresh_copy(s3, tmp_path, monkeypatch):
    _, fs = s3
    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path / "head1"))
    run = RunStorage.open("s3://lonas/runs/a")
    assert run.uri == "s3://lonas/runs/a" and run.local.is_relative_to(tmp_path / "head1")
    assert run.name == "a" and run.shared == "s3://lonas/runs/a" and run.path("ray_results") == "s3://lonas/runs/a/ray_results"
    assert run.pull() == 0  # a new run: nothing there yet
    (run.local / "models" / "m1").mkdir(parents=True)
    (run.local / "models" / "m1" / "config.json").write_text("{}")
    (run.local / "stages.json").write_text('{"train": {}}')
    (run.local / "models" / "m2.partial").mkdir()  # an atomic write in progress
    (run.local / "models" / "m2.partial" / "w").write_text("half")
    (run.local / ".results.parquet.x.tmp").write_text("half")
    assert run.push() == 2
    assert remote_files(fs, "lonas/runs/a") == {"models/m1/config.json": b"{}", "stages.json": b'{"train": {}}'}
    assert run.push() == 0  # nothing changed, nothing sent
    (tmp_path / "rank0.jsonl").write_text("a\n")  # a training worker's log, uploaded by the worker itself
    upload_file(tmp_path / "rank0.jsonl", "s3://lonas/runs/a/ranks/rank0.jsonl")
    (run.local / "stages.json").write_text('{"train": {}, "search": {}}')
    os.utime(run.local / "stages.json", ns=(1, 1))  # a rewrite is seen by size or time
    (run.local / "models" / "m1" / "config.json").unlink()  # gone locally (a model no longer chosen)
    assert run.push() == 1
    assert remote_files(fs, "lonas/runs/a") == {"stages.json": b'{"train": {}, "search": {}}',
                                                "ranks/rank0.jsonl": b"a\n"}  # what workers wrote stays

    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path / "head2"))  # another head, an empty disk
    again = RunStorage.open("s3://lonas/runs/a")
    assert again.local != run.local and again.pull() == 2
    assert (again.local / "stages.json").read_text() == '{"train": {}, "search": {}}'
    assert (again.local / "ranks" / "rank0.jsonl").read_text() == "a\n"
    assert again.push() == 0  # what it pulled is not sent back
    assert again.child("baseline").uri == "s3://lonas/runs/a/baseline"
    assert again.child("baseline").local == again.local / "baseline"
    assert download_file("s3://lonas/runs/a/nothing", tmp_path / "n") is False and not (tmp_path / "n").exists()


def model_dir(path: Path, config: dict) -> Path:
    """A model directory as the merge writes it: weights, small files, and the manifest listing their sizes."""
    (path / "peft" / "adapter").mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": b"w" * 1000, "model.gguf": b"g" * 300,
             "peft/adapter/adapter_model.safetensors": b"a" * 50, "tokenizer.json": b"{}"}
    for rel, data in files.items():
        (path / rel).write_bytes(data)
    manifest = {"config": config, "files": {rel: len(data) for rel, data in files.items()}}
    (path / "lonas_subnet.json").write_text(json.dumps(manifest))
    return path


def test_a_model_exported_to_a_uri_run_keeps_its_weights_at_the_uri_only(s3, tmp_path, monkeypatch):
    """The merge task uploads the model (the manifest last) and hands the driver only the files that are not
    weights; the working copy, its mirror and a resumed copy never hold the weights, yet the export counts as
    whole, is copied server-side (recover-then-rank's winner) and removed everywhere when no longer chosen."""
    _, fs = s3
    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path / "head1"))
    run = RunStorage.open("s3://lonas/runs/m")
    run.pull()
    small = deliver(model_dir(tmp_path / "built", {"depth": 1}), {"uri": "s3://lonas/runs/m/candidates/c1"})
    assert set(small) == {"config.json", "tokenizer.json", "lonas_subnet.json"}  # the driver's share
    assert set(remote_files(fs, "lonas/runs/m/candidates/c1")) == set(small) | {
        "model.safetensors", "model.gguf", "peft/adapter/adapter_model.safetensors"}
    from lonas_ray.transfer import write_tree

    write_tree(small, run.local / "candidates" / "c1")
    assert already_exported(run, "candidates/c1", {"depth": 1}, gguf={})
    assert not already_exported(run, "candidates/c1", {"depth": 2})  # another configuration

    run.push()  # the mirror neither uploads weights it never had nor deletes those at the URI
    assert "model.safetensors" in remote_files(fs, "lonas/runs/m/candidates/c1")
    run.copy_tree("candidates/c1", "models/c1", last="lonas_subnet.json")
    assert remote_files(fs, "lonas/runs/m/models/c1") == remote_files(fs, "lonas/runs/m/candidates/c1")
    assert sorted(p.name for p in (run.local / "models" / "c1").iterdir()) == \
        ["config.json", "lonas_subnet.json", "tokenizer.json"]
    assert run.push() == 0  # copied at the URI already

    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path / "head2"))  # a resumed run on a new head
    again = RunStorage.open("s3://lonas/runs/m")
    again.pull()
    assert not list(again.local.rglob("*.safetensors")) and not list(again.local.rglob("*.gguf"))
    assert already_exported(again, "models/c1", {"depth": 1})
    fs.delete_file("lonas/runs/m/models/c1/model.gguf")  # a copy cut short: not whole, exported again
    assert not already_exported(again, "models/c1", {"depth": 1})
    again.remove("models/c1")
    assert not remote_files(fs, "lonas/runs/m/models/c1") and not (again.local / "models" / "c1").exists()
    again.push()
    assert remote_files(fs, "lonas/runs/m/candidates/c1")  # only what was removed is gone


def test_an_upload_cut_short_never_leaves_a_manifest(s3, tmp_path, monkeypatch):
    _, fs = s3
    src = model_dir(tmp_path / "built", {"depth": 1})
    put, sent = storage_module._put, []

    def failing_put(fs_, local, path):
        if len(sent) == 3:
            raise OSError("connection reset")
        sent.append(path)
        put(fs_, local, path)

    monkeypatch.setattr(storage_module, "_put", failing_put)
    with pytest.raises(OSError):
        upload_tree(src, "s3://lonas/cut/m", last="lonas_subnet.json")
    assert len(remote_files(fs, "lonas/cut/m")) == 3 and "lonas_subnet.json" not in remote_files(fs, "lonas/cut/m")


def test_a_model_delivered_on_the_drivers_node_is_renamed_into_place_else_sent_back(tmp_path):
    """Without Ray (this process is no Ray node) ``node: None`` is the driver's own node."""
    target = tmp_path / "out" / "models" / "m"
    target.parent.mkdir(parents=True)
    assert deliver(model_dir(tmp_path / "a", {}), {"path": str(target), "node": None}) == {}
    assert (target / "model.safetensors").stat().st_size == 1000 and not (tmp_path / "a").exists()
    sent = deliver(model_dir(tmp_path / "b", {}), {"path": str(tmp_path / "elsewhere"), "node": "another-node"})
    assert len(sent["model.safetensors"]) == 1000 and not (tmp_path / "elsewhere").exists()


def test_a_local_path_is_its_own_working_copy_and_mirrors_nothing(tmp_path):
    run = RunStorage.open(tmp_path / "out")
    assert run.uri is None and run.local == (tmp_path / "out").resolve() and run.shared == str(run.local)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("x")
    assert run.pull() == 0 and run.push() == 0


def test_a_supernet_dir_uri_that_holds_no_super_network_is_named_not_a_traceback(s3, tmp_path, monkeypatch):
    from lonas_ray.config_io import ConfigError
    from lonas_ray.search.config import SearchConfig
    from lonas_ray.search.driver import supernet_source

    _, fs = s3
    monkeypatch.setenv("LONAS_RAY_CACHE", str(tmp_path / "cache"))
    with fs.open_output_stream("lonas/elsewhere/supernet/notes.txt") as f:  # something there, not a super-network
        f.write(b"not a super-network")
    raw = yaml.safe_load((ROOT / "jobs/configs/search_tiny.yaml").read_text())
    raw.pop("supernet")
    raw.update(supernet_dir="s3://lonas/elsewhere/supernet", output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"^supernet_dir s3://lonas/elsewhere/supernet is not a lonas-ray "
                                          r"super-network directory: missing .*point it at the supernet/"):
        supernet_source(SearchConfig.from_dict(raw), tmp_path / "out")


@pytest.mark.parametrize("output, message", [
    ("s3://lonas/run?endpoint_override=127.0.0.1:9", "carries options after '?' (or a '#' fragment): give the plain "
                                                     "URI s3://lonas/run and set the endpoint and credentials in the "
                                                     "environment"),
    ("nosuchscheme://bucket/run", "unknown storage scheme 'nosuchscheme://'; use one of s3://"),
    ("s3://", "names no bucket; give the bucket and a path in it, e.g. s3://BUCKET/lonas-ray/run1"),
    ("s3:///run", "names no bucket"),
    ("gs://bucket", "names no path inside the bucket 'bucket'; give one for this run, e.g. gs://bucket/lonas-ray/run1"),
    ("s3://bucket/", "names no path inside the bucket 'bucket'"),
    ("s3://bucket/run#x", "carries options after '?' (or a '#' fragment)"),
])
def test_a_bad_uri_is_refused_with_the_fix_named(s3, output, message):
    with pytest.raises(ConfigError) as exc:
        RunStorage.open(output)
    assert f"output '{output}'" in str(exc.value) and message in str(exc.value)


def test_a_relative_output_inside_a_jobs_unpacked_working_dir_is_refused(tmp_path):
    job_copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    with pytest.raises(ConfigError, match="is relative, and this job runs in Ray's temporary copy"):
        check_not_in_job_copy("out/run", cwd=job_copy)
    with pytest.raises(ConfigError, match="^supernet_dir 'out/train/supernet' is relative"):
        check_not_in_job_copy("out/train/supernet", cwd=job_copy, key="supernet_dir")
    check_not_in_job_copy(str(tmp_path / "abs"), cwd=job_copy)  # absolute: fine
    check_not_in_job_copy("out/run", cwd=tmp_path)  # an ordinary checkout: fine


def start_isolated_node(gcs: str, hide: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """A worker node serving tiny.yaml's pools in a mount namespace of its own, an empty tmpfs over ``hide``;
    (its process, its node id)."""
    node = ["python", str(ROOT / "tests" / "ray_node.py"), gcs, "2", json.dumps({"pool_cpu_a": 1, "pool_cpu_b": 1}),
            json.dumps({"lonas/pool": "cpu_a"})]
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             f"mount -t tmpfs lonas-hidden {shlex.quote(str(hide))} && exec {shlex.join(node)}"],
                            env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    line = proc.stdout.readline()  # "ready <node id>", or the error it died of
    assert line.startswith("ready "), f"the isolated worker node did not start: {line}{proc.stdout.read()[-2000:]}"
    return proc, line.split()[1]


@pytest.mark.timeout(900)
def test_the_pipeline_runs_on_a_node_that_cannot_see_the_drivers_disk_with_its_output_on_s3(s3, tmp_path):
    """A head that only drives (no CPUs, no pools) and a worker node started in its own mount namespace with an
    empty tmpfs over the head's disk (the driver's working copy): every training worker, evaluator and merge runs
    on a node that cannot read what the driver wrote, so whatever they need must travel through Ray or S3. The
    job is stopped after training, the head's disk is wiped (a new head), and the re-submitted job resumes from
    the bucket and finishes; every file of the output contract is in the bucket."""
    env, fs = s3
    config = tmp_path / "tiny_storage.yaml"  # tiny.yaml cut to what this test is about: one pool, no lm-eval
    raw = yaml.safe_load(TINY.read_text())
    raw["pools"] = {"cpu_a": raw["pools"]["cpu_a"]}
    raw["search"]["budget"] = 4
    raw["export"].update(lm_eval=False, recover_steps=0)
    config.write_text(yaml.safe_dump(raw))
    disk = tmp_path / "head-disk"  # the driver's working copies ($LONAS_RAY_CACHE): the head's own disk
    disk.mkdir()
    head = Head(tmp_path, **env, LONAS_RAY_CACHE=str(disk))
    node = None
    try:
        head.start(pools=False, num_cpus=0)
        node, node_id = start_isolated_node(f"127.0.0.1:{head.gcs}", disk, head.env)
        (disk / "seen-by-the-head").write_text("x")
        assert os.readlink(f"/proc/{node.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert not list(Path(f"/proc/{node.pid}/root{disk}").iterdir())  # the worker node sees an empty directory

        uri = "s3://lonas/e2e"
        job = head.submit(uri, "--stop-after", "train", working_dir=False, config=config)
        assert head.wait(job, timeout=500) == "SUCCEEDED", head.client().get_job_logs(job)[-4000:]
        for p in disk.iterdir():  # a new head: nothing of the run on its disk
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        job = head.submit(uri, working_dir=False, config=config)
        assert head.wait(job, timeout=500) == "SUCCEEDED", head.client().get_job_logs(job)[-4000:]
        logs = head.client().get_job_logs(job)
        assert "[1/6] baseline: finished earlier" in logs and "[2/6] train: finished earlier" in logs
        assert "[4/6] search: done" in logs and uri in logs  # the summary names the bucket, not a head's disk
        assert not list(Path(f"/proc/{node.pid}/root{disk}").iterdir())
    finally:
        if node is not None:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(timeout=60)
        head.stop()

    stored = set(remote_files(fs, "lonas/e2e"))
    for contract in ("stages.json", "supernet/adapter.safetensors", "pareto.parquet",
                     "search_summary.json", "models/baseline/config.json", "models/baseline/README.md",
                     "report.md", "summary.json", "pareto.png", "baseline/supernet/adapter.safetensors",
                     "ranks/rank0.jsonl", "ranks/rank1.jsonl", "baseline/ranks/rank0.jsonl"):
        assert contract in stored, contract
    for table in ("results.parquet", "zero_shot/results.parquet", "baseline/results.parquet"):  # parts of a table
        assert any(re.fullmatch(rf"{re.escape(table)}/part-[\w-]+\.parquet", f) for f in stored), table
    assert len([f for f in stored if f.startswith("results.parquet/")]) == 1  # compacted when the search ended
    assert any(re.fullmatch(r"ray_results/train/step_\d+/adapter\.safetensors", f) for f in stored)
    models = {f.split("/")[1] for f in stored if f.startswith("models/") and f.endswith("/config.json")}
    assert len(models) >= 2  # the baseline and at least one searched sub-network
    # every training step and every evaluation ran on the isolated node
    nodes = {json.loads(line)["node"] for f in ("ranks/rank0.jsonl", "ranks/rank1.jsonl")
             for line in remote_files(fs, "lonas/e2e")[f].decode().splitlines()}
    rows = pq.read_table("lonas/e2e/results.parquet", filesystem=fs).to_pylist()
    assert nodes == {node_id} and {r["node_id"] for r in rows} == {node_id}
    # the merges (on the isolated node) uploaded the weights; the driver's working copy never held them
    assert {f"models/{m}/model.safetensors" for m in models} <= stored
    copy = next((disk / "runs").iterdir())
    assert (copy / "models" / "baseline" / "config.json").is_file() and not list(copy.rglob("models/**/*.safetensors"))


BAD_OUTPUTS = [  # (--output, what the error says)
    ("nosuchscheme://bucket/run", "output 'nosuchscheme://bucket/run': unknown storage scheme"),
    ("s3://lonas/run?region=x", "carries options after '?'"),
    ("s3://", "output 's3://' names no bucket"),
    # an S3 endpoint nobody listens on: the error names the storage and what to check
    ("s3://lonas/run1", "storage 's3://lonas/run1' cannot be reached"),
]


def test_bad_or_unreachable_output_uris_exit_2_before_any_work(tmp_path):
    """Each refused with exit 2, no traceback, and nothing written (no cache, nothing in the working directory);
    one interpreter runs the cases one after another (helpers.lonas_cli_batch)."""
    env = {"LONAS_RAY_CACHE": str(tmp_path / "cache"), "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
    work = tmp_path / "work"
    work.mkdir()
    config = str(ROOT / "jobs/configs/tiny.yaml")
    results = lonas_cli_batch([["run", "--config", config, "--output", output] for output, _ in BAD_OUTPUTS],
                              cwd=work, timeout=300, env=env)
    for (output, message), r in zip(BAD_OUTPUTS, results, strict=True):
        assert r["returncode"] == 2 and message in r["stderr"] and "Traceback" not in r["stderr"], \
            (output, r["stderr"][-2000:])
    assert "AWS_ENDPOINT_URL_S3" in results[-1]["stderr"]  # what to check, for the unreachable one
    assert not (tmp_path / "cache").exists() and not list(work.iterdir())
