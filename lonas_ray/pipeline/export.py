"""The merge stage: Ray tasks (their own resources) extract, merge and save each chosen sub-network.

A task gets the super-network directory through the object store, so it can run on
any node, and puts the saved model where the run's output lives (``deliver``): a run
on storage (``s3://...``) gets it uploaded by the task, weights and all, and the driver
only the small files; on the driver's own node the task renames it into place; from
another node without shared storage it comes back as bytes (``transfer``). The
driver writes the model card. With ``export.lm_eval``
the task also has lm-evaluation-harness score the saved checkpoint on the final
examples beside lonas-ray's scorer (``crosscheck``), written as ``lm_eval.json``
in the model directory. Tasks run in parallel
as resources allow; a model already exported (its manifest names the same
configuration) is not exported again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lonas_ray.crosscheck import JUDGE_FILE
from lonas_ray.merge.gguf_export import GGUF_FILE
from lonas_ray.merge.save import MANIFEST
from lonas_ray.pipeline.config import ExportSpec
from lonas_ray.storage import WEIGHT_SUFFIXES, RunStorage, upload_tree
from lonas_ray.transfer import read_tree, write_tree

if TYPE_CHECKING:
    from lonas_ray.model_source import ModelSource

log = logging.getLogger(__name__)

RECOVERY = "recovery.json"


LEFTOVER_GLOB = ".lonas-export-*"  # a merge's working directory beside the models, renamed into place when done


def _remove_leftovers(root: Path) -> None:
    """Working directories of merges that died (SIGKILL skips their cleanup); called when no merge runs."""
    for d in root.glob(LEFTOVER_GLOB) if root.is_dir() else ():
        shutil.rmtree(d, ignore_errors=True)


def merge_and_save(supernet_files: dict[str, bytes], config: dict, with_adapter: bool, dest: dict,
                   judge: dict | None = None, recover: dict | None = None,
                   teacher_files: dict[str, bytes] | None = None, gguf: dict | None = None,
                   device: str = "cpu") -> dict[str, bytes]:
    """Extract + merge + save ``config`` of the super-network (and judge it), delivered to ``dest`` (``deliver``);
    the files the driver must still write.

    ``judge``: ``{"data": ..., "quality": ...}`` (the pipeline's sections as dicts) to cross-check with lm-eval.
    ``recover``: ``{"data", "quality", "steps", "batch_size", "lr", "seed", "first_step"}``: a recovery
    fine-tune of this sub-network before the merge, and its saved checkpoint scored again (``RECOVERY``);
    with ``"distill": {"teacher", "weight", "temperature"}`` the frozen teacher (its directory's files in
    ``teacher_files``, through the object store like the super-network's) teaches the recovery.
    ``device``: where the recovery and the scoring run ('cuda' when the task was given a GPU: ``export.gpus``);
    the merge itself and the save run on the host, whose memory then holds the merged model once.
    """
    import torch

    from lonas_ray.lease import lease_for

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("export.gpus gave this merge task a GPU, but it sees none (CUDA is not available)")
    with lease_for(torch.device(device)).shared():  # heavy work: a latency measurement here waits until it is done
        return _merge_and_save(supernet_files, config, with_adapter, dest, judge, recover, teacher_files, gguf,
                               device)


def _merge_and_save(supernet_files: dict[str, bytes], config: dict, with_adapter: bool, dest: dict,
                    judge: dict | None, recover: dict | None, teacher_files: dict[str, bytes] | None,
                    gguf: dict | None, device: str) -> dict[str, bytes]:
    from lonas_ray.memory import peak_memory
    from lonas_ray.merge.save import save_subnetwork
    from lonas_ray.search.evaluator import load_supernet_files

    supernet, tokenizer = load_supernet_files(supernet_files)
    t0 = time.perf_counter()
    losses = None
    if recover:
        supernet.to(device)
        losses = recover_subnetwork(supernet, config, tokenizer, recover, teacher_files)
        supernet.to("cpu")
    recover_s = time.perf_counter() - t0
    beside = Path(dest["path"]).parent if dest.get("node") == this_node() else None  # then a rename delivers it
    if beside is not None:
        beside.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=LEFTOVER_GLOB.rstrip("*"), dir=beside) as d:
        model_dir = Path(d) / "model"
        save_subnetwork(supernet, config, model_dir, tokenizer=tokenizer, with_adapter=with_adapter, gguf=gguf)
        del supernet
        scored = None  # the saved checkpoint scored once, for the recovery's figures and the judge alike
        if recover:
            scored = score_final(model_dir, recover, device=device)
            record = {"steps": recover["steps"], "distill": recover.get("distill"), "seconds": round(recover_s, 2),
                      "device": device, "first_loss": losses[0], "last_loss": losses[-1], **asdict(scored.quality),
                      "outcomes": None if scored.right is None else [int(r) for r in scored.right]}
            if recover.get("rank"):  # recover-then-rank: the search's examples choose, the final ones report
                record["selection"] = asdict(score_final(model_dir, recover, examples=recover["quality"]["examples"],
                                                         device=device).quality)
            record["memory"] = peak_memory()  # the merge task's peak so far: recovery, merge, save and scoring
            (model_dir / RECOVERY).write_text(json.dumps(record, indent=1))
        if judge is not None:
            verdict = judge_saved(model_dir, judge, Path(d) / "task", scored)
            (model_dir / JUDGE_FILE).write_text(json.dumps(verdict, indent=1))
        return deliver(model_dir, dest)


def this_node() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def deliver(model_dir: Path, dest: dict) -> dict[str, bytes]:
    """Put a finished model directory where the run keeps it; what the driver must still write itself.

    ``dest``: ``{"uri": ...}`` (uploaded from here, the manifest last; the driver gets the files that are not
    weights, for its working copy), or ``{"path": ..., "node": ...}`` (the driver's path: renamed into place when
    this task runs on the driver's node, which then gets nothing; else every file as bytes).
    """
    if dest.get("uri"):
        upload_tree(model_dir, dest["uri"], last=MANIFEST)
        return read_tree(model_dir, skip_suffixes=WEIGHT_SUFFIXES)  # the weights are not even read again
    if dest.get("node") == this_node():
        target = Path(dest["path"])
        shutil.rmtree(target, ignore_errors=True)
        model_dir.rename(target)
        return {}
    return read_tree(model_dir)


def recover_subnetwork(supernet, config: dict, tokenizer, recover: dict,
                       teacher_files: dict[str, bytes] | None = None) -> list[float]:
    """The recovery fine-tune (``lonas_ray.train.recover``) on the pipeline's training data."""
    from lonas_ray.config_io import from_dict
    from lonas_ray.data.spec import DataSpec
    from lonas_ray.data.tokenize import build_train_dataset
    from lonas_ray.train.recover import recover as run_recovery
    from lonas_ray.train.teacher import TeacherLogits, load_teacher

    dataset = build_train_dataset(from_dict(DataSpec, recover["data"], where="data"), tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    distill, teacher = recover.get("distill") or {}, None
    if distill:
        with tempfile.TemporaryDirectory(prefix="lonas-teacher-") as d:
            teacher = TeacherLogits(load_teacher(write_tree(teacher_files, Path(d) / "teacher"),
                                                 next(supernet.parameters()).device))
    return run_recovery(supernet, config, dataset, pad_id, steps=recover["steps"], batch_size=recover["batch_size"],
                        lr=recover["lr"], seed=recover["seed"], first_step=recover["first_step"], teacher=teacher,
                        distill_weight=distill.get("weight", 0.0), temperature=distill.get("temperature", 1.0))


def score_final(model_dir: Path, sections: dict, examples: int | None | str = "final", device: str = "cpu"):
    """lonas-ray's scorer on a saved checkpoint, the final examples of the pipeline's data and quality sections
    (or the first ``examples`` of the same seeded order: the search's examples), on ``device``."""
    from lonas_ray.config_io import from_dict
    from lonas_ray.crosscheck import score_saved
    from lonas_ray.data.spec import DataSpec
    from lonas_ray.search.config import QualitySpec

    quality = dict(sections["quality"])
    if examples != "final":
        quality["final_examples"] = examples
    return score_saved(model_dir, from_dict(DataSpec, sections["data"], where="data"),
                       from_dict(QualitySpec, quality, where="quality"), device=device)


def judge_saved(model_dir: Path, judge: dict, work_dir: Path, scored=None) -> dict[str, Any]:
    """lm-eval's verdict on a saved model, or why there is none (a metric lm-eval has no counterpart of).

    ``scored``: ``score_final``'s result when the recovery already scored this checkpoint on the same sections.
    """
    from lonas_ray.config_io import from_dict
    from lonas_ray.crosscheck import cross_check
    from lonas_ray.data.spec import DataSpec
    from lonas_ray.search.config import QualitySpec

    data = from_dict(DataSpec, judge["data"], where="data")
    if data.format not in ("multiple_choice", "generation"):
        return {"skipped": f"lm-eval has no counterpart of data.format {data.format}'s token accuracy"}
    verdict = cross_check(model_dir, data, from_dict(QualitySpec, judge["quality"], where="quality"), work_dir,
                          scored=scored)
    return verdict.to_dict()


def already_exported(storage: RunStorage, rel: str, config: dict, gguf: dict | None = None) -> bool:
    """Whether the run's directory ``rel`` holds a whole export of ``config``: its manifest, and every file the
    manifest lists in its size (in the working copy, or at the URI for weights)."""
    manifest = storage.local / rel / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
        if data["config"] != config:
            return False
    except (json.JSONDecodeError, KeyError):
        return False
    sizes = storage.sizes(rel)
    want = data.get("files") or {"model.safetensors": None}  # manifests written before the file list
    if gguf is not None and GGUF_FILE not in want:
        return False  # asked for since it was exported
    return all(f in sizes and size in (None, sizes[f]) for f, size in want.items())


def recovered_as(model_dir: Path, recover: dict | None) -> bool:
    """Whether an export on disk had the recovery fine-tune asked for now (none, or as many steps)."""
    path = model_dir / RECOVERY
    if recover is None:
        return not path.is_file()
    try:
        done = json.loads(path.read_text()) if path.is_file() else None
        return done is not None and done["steps"] == recover["steps"] \
            and done.get("distill") == recover.get("distill") and ("selection" in done or not recover.get("rank"))
    except (json.JSONDecodeError, KeyError):
        return False


# copies of the base model's bytes one merge task holds at its peak: the super-network, the merged model, the save
# (and with_adapter's unmerged base beside them). Measured: a 0.63B fp32 Qwen2 (2.5 GB) merge with its PEFT copy
# peaked at several times its bytes, and two at once reached the 24 GB host's OOM threshold.
MERGE_COPIES, ADAPTER_COPIES = 4, 1


def merge_memory(spec: ExportSpec, model: ModelSource | None) -> tuple[int, str]:
    """Bytes of host memory one merge task reserves, and where the figure came from (for messages):
    ``export.memory_gb`` when set (0: none), else ``MERGE_COPIES`` (+ ``ADAPTER_COPIES`` with ``with_adapter``)
    times the base model's bytes, or none while its config is unknown."""
    from lonas_ray.model_source import param_bytes

    if spec.memory_gb is not None:
        return int(spec.memory_gb * 1e9), f"export.memory_gb: {spec.memory_gb:g} GB"
    base = param_bytes(model) if model is not None else None
    if base is None:
        return 0, "export.memory_gb unset and the base model's size not known yet"
    copies = MERGE_COPIES + (ADAPTER_COPIES if spec.with_adapter else 0)
    return copies * base, (f"export.memory_gb unset: {copies}x the base model's {base / 1e9:.2f} GB = "
                           f"{copies * base / 1e9:.2f} GB")


def check_merges_fit(spec: ExportSpec, model: ModelSource | None = None) -> None:
    """``ConfigError`` now, before anything is written, when the memory one merge task reserves (``merge_memory``)
    is more than any node of a cluster that cannot grow offers: Ray would hold the merge pending for ever after the
    search."""
    from lonas_ray.config_io import ConfigError
    from lonas_ray.search.pools import shortfall

    reserve, why = merge_memory(spec, model)
    if not reserve:
        return
    bundle = {"CPU": spec.cpus, "GPU": spec.gpus, "memory": reserve, **spec.resources}
    if (short := shortfall(bundle, 1)) is None:
        return
    nodes = short[1]
    most = max(((n.get("Resources") or {}).get("memory", 0) for n in nodes if n.get("Alive")), default=0)
    raise ConfigError(f"{why} for one merge task (with {spec.cpus:g} CPU, {spec.gpus:g} GPU), but no node of this "
                      f"cluster offers it: the most memory a node gives Ray's tasks is {most / 1e9:.1f} GB. Set a "
                      "lower export.memory_gb (0 reserves nothing), or add a node with more memory")


class ExportError(RuntimeError):
    """Some merges failed; the message names each model and why."""


def export_models(jobs: dict[str, tuple[Path, dict]], storage: RunStorage, target: str, spec: ExportSpec,
                  judge: dict | None = None, recover: dict | None = None,
                  recover_names: set[str] = frozenset(), gguf: dict | None = None,
                  model: ModelSource | None = None) -> dict[str, dict[str, Any]]:
    """Export each ``name -> (supernet_dir, config)`` to the run's ``target/<name>``; returns name -> manifest.

    ``gguf``: ``save_subnetwork``'s GGUF options (``PipelineConfig.gguf_options``), or None for no GGUF.
    ``model``: the base model's source, which sizes each task's memory reservation (``merge_memory``).

    The models in ``recover_names`` get the recovery fine-tune ``recover`` before their merge.

    A merge that fails (its task raises, or its worker dies) does not stop the others: every task runs to its
    end, then ``ExportError`` names the failed models. A model directory counts as exported only once its
    manifest is written last (``already_exported``), so a failed one never looks whole, and a re-run does only
    what is missing.
    """
    import ray
    from tqdm.auto import tqdm

    reserve = merge_memory(spec, model)[0]
    memory = {"memory": reserve} if reserve else {}
    task = ray.remote(merge_and_save).options(num_cpus=spec.cpus, num_gpus=spec.gpus,
                                              resources=dict(spec.resources) or None, name="lonas-merge", **memory)
    files_ref: dict[Path, Any] = {}
    distill = (recover or {}).get("distill")
    teacher_ref = None  # put once, and only when a recovery that it teaches is pending
    pending, root, here = {}, storage.local / target, this_node()
    for name, (supernet_dir, config) in jobs.items():
        own_recovery = recover if name in recover_names else None
        if already_exported(storage, f"{target}/{name}", config, gguf) and recovered_as(root / name, own_recovery) \
                and (judge is None or (root / name / JUDGE_FILE).is_file()):
            log.info("%s/%s is already exported; kept", target, name)
            continue
        dest = {"uri": f"{storage.uri}/{target}/{name}"} if storage.uri else {"path": str(root / name), "node": here}
        if supernet_dir not in files_ref:
            files_ref[supernet_dir] = ray.put(read_tree(supernet_dir, recursive=False))
        if own_recovery and distill and teacher_ref is None:
            teacher_ref = ray.put(read_tree(Path(distill["teacher"]), recursive=False))
        pending[task.remote(files_ref[supernet_dir], config, spec.with_adapter, dest, judge, own_recovery,
                            teacher_ref if own_recovery else None, gguf, "cuda" if spec.gpus else "cpu")] = name
    failed: dict[str, str] = {}
    _remove_leftovers(root)  # of merges a killed driver took with it
    with tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="merge + export", unit="model") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                files = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the others still run; named below
                failed[name] = str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1]
                log.error("export of %s failed: %s", name, failed[name])
            else:
                if files:  # else the task put it in place itself
                    write_tree(files, root / name)
            bar.update(1)
    _remove_leftovers(root)  # of attempts whose worker died (Ray ran the task again)
    if failed:
        raise ExportError(f"{len(failed)} of {len(jobs)} exports failed: "
                          + "; ".join(f"{name}: {why}" for name, why in failed.items())
                          + f"; the other models are in {target}/, and a re-run exports only what is missing")
    return {name: json.loads((root / name / MANIFEST).read_text()) for name in jobs}
