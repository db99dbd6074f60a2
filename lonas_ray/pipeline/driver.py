"""The pipeline driver: baseline -> train -> zero-shot -> search -> export -> report, each stage resumable.

The baseline (plain LoRA: the maximal network trained alone) runs first because it can be the
super-adapter's frozen teacher (``train.distill.teacher: baseline``); it and the super-adapter
share one prepared (importance-reordered) base, which whichever runs first prepares.

Output directory (the contract tests and users rely on)::

    supernet/            the trained super-adapter (lonas-ray train's output)
    results.parquet      every evaluation, pareto.parquet the fronts (see the search stage)
    models/<subnet_id>/  each exported sub-network: a Hugging Face model + README.md model card
                         (+ lm_eval.json: lm-evaluation-harness's score of it beside lonas-ray's)
    models/baseline/     plain LoRA (the maximal network trained alone), merged
    zero_shot/           the untouched base model's results.parquet (scored, not exported: it is the input)
    report.md, pareto.png, summary.json   the figures: baseline vs every exported model, per pool
    baseline/            the baseline's own training run and results.parquet
    candidates/<id>/     export.select: targets: every recovered candidate; ranking.json: how each was ranked
    stages.json          finished stages (a re-run skips them), prepared/, ray_results/ as in train/search

The report's first question is whether fine-tuning helped at all: the base
model's zero-shot row and a verdict (``figures.fine_tuning_verdict``) say so, or
say plainly that the run was too short to show it.

Stages run in this process; the heavy work runs on the cluster: Ray Train
workers, Ray Tune evaluators on each pool, Ray tasks for the merges.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from lonas_ray.atomic import read_parquet, write_json
from lonas_ray.build import load_prepared, preflight, prepare_once
from lonas_ray.config_io import ConfigError, to_dict
from lonas_ray.data.spec import check_data
from lonas_ray.memory import largest
from lonas_ray.merge.save import MANIFEST
from lonas_ray.pipeline.config import PipelineConfig
from lonas_ray.pipeline.export import RECOVERY, check_merges_fit
from lonas_ray.pipeline.figures import (
    BASELINE,
    ZERO_SHOT,
    collect,
    profiles,
    ranked_models,
    row_config,
    select_models,
)
from lonas_ray.pipeline.ranking import RANKING, choose_after_recovery, ranking_record, target_candidates
from lonas_ray.pipeline.stages import STAGES, STRICT, StageLog, fingerprint
from lonas_ray.search.driver import (
    PARETO,
    RESULTS,
    SUMMARY,
    check_pool_runtimes,
    check_pools_now,
    each_pool,
    evaluate_configs,
    local_pool_tags,
    rows_by_pool,
)
from lonas_ray.storage import RunStorage
from lonas_ray.train.config import BASELINE as TEACHER_BASELINE
from lonas_ray.train.state import STATE_FILE
from lonas_ray.train.teacher import check_teacher
from lonas_ray.train.trainer import check_workers_fit

log = logging.getLogger(__name__)

SUMMARY_FILE, REPORT, PLOT, MODELS = "summary.json", "report.md", "pareto.png", "models"
CANDIDATES = "candidates"  # export.select: targets: every recovered candidate, chosen or not


def _say(stage: str, text: str) -> None:
    print(f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}: {text}", flush=True)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, storage: RunStorage):
        self.cfg, self.storage, self.out = cfg, storage, storage.local
        self.search_cfg = cfg.search_config(self.out / "supernet", self.out)

    # -- stages: each returns what stages.json records about it -------------------------------------------------
    def train(self) -> dict:
        from lonas_ray.train.trainer import train

        result = train(self.cfg.train_config(self.out), storage=self.storage)
        return {"steps": result.steps, "memory": largest([result.metrics])}

    def baseline(self) -> dict:
        if not self.cfg.baseline.enabled:
            return {"skipped": True}
        from lonas_ray.train.trainer import train

        bdir = self.out / BASELINE
        if not (bdir / "prepared").exists():  # the same reordered base and space as the super-network
            prepare_once(self.cfg.supernet, self.out / "prepared", self.cfg.data)
            shutil.copytree(self.out / "prepared", bdir / "prepared")
        result = train(self.cfg.train_config(bdir, baseline=True), storage=self.storage.child(BASELINE))
        self.score_maximal(result.supernet_dir, bdir)
        return {"steps": result.steps, "memory": largest([result.metrics, *profiles(bdir / RESULTS)])}

    def zero_shot(self) -> dict:
        if not self.cfg.zero_shot.enabled:
            return {"skipped": True}
        # the prepared (untrained) super-network: every adapter's B is zero, so its maximal is the base model
        self.score_maximal(self.out / "prepared", self.out / ZERO_SHOT)
        return {"memory": largest(profiles(self.out / ZERO_SHOT / RESULTS))}

    def score_maximal(self, supernet_dir: Path, out: Path) -> None:
        """A reference row on every pool: the maximal network, scored on the exported models' final examples; the
        pools at once, as their search is (``search.concurrent_pools``): on the first H100 run, one after the other,
        they took 80 of the baseline stage's 192 s."""
        cfg = self.cfg.search_config(supernet_dir, out)
        cfg.quality.examples = cfg.quality.final_examples
        space = load_prepared(supernet_dir)[1]
        each_pool(cfg.search.pools,
                  lambda pool: evaluate_configs(cfg, pool, space, supernet_dir, out, [space.maximal()],
                                                run=self.storage.name),
                  concurrent=cfg.search.concurrent_pools)

    def search(self) -> dict:
        from lonas_ray.search.driver import run_search

        result = run_search(self.search_cfg)
        return {"new_evaluations": result.evaluated, "memory": largest(profiles(self.out / RESULTS))}

    def publish_search_figures(self) -> None:
        """The search's gauges from its rows, for a run that skips the search it finished earlier."""
        from lonas_ray.search.progress import publish_search

        maximal = json.loads((self.out / SUMMARY).read_text())["maximal"]
        for pool in self.search_cfg.search.pools:
            rows = list(rows_by_pool(self.out / RESULTS, pool).values())
            publish_search(self.storage.name, pool, len(rows), rows, maximal)

    def chosen(self) -> dict[str, dict]:
        rows = read_parquet(self.out / PARETO).to_pylist()
        if self.cfg.export.select == "targets":  # recover-then-rank's winners (the export stage wrote them)
            return ranked_models(json.loads((self.out / RANKING).read_text()), rows)
        summary = json.loads((self.out / SUMMARY).read_text())
        return select_models(rows, summary["pools"], self.search_cfg.search.pools, self.cfg.export.select)

    def rank_targets(self, recover: dict) -> None:
        """Recover-then-rank (``lonas_ray.pipeline.ranking``): recover every target's top-K front members into
        ``candidates/``, choose each target's best after recovery (``ranking.json``), copy it to ``models/``."""
        from lonas_ray.pipeline.export import export_models

        e, objective = self.cfg.export, self.cfg.search.objective
        rows = read_parquet(self.out / PARETO).to_pylist()
        space = load_prepared(self.out / "supernet")[1]
        candidates = target_candidates(rows, self.search_cfg.search.pools, space.subnet_id(space.maximal()),
                                       e.latency_targets, e.candidates, objective)
        if not candidates:
            log.warning("no latency-front member meets any of export.latency_targets %s: only the baseline is "
                        "exported", e.latency_targets)
        by_id = {r["subnet_id"]: r for r in rows}
        jobs = {sid: (self.out / "supernet", row_config(by_id[sid])) for sids in candidates.values() for sid in sids}
        judge = self.judge()
        export_models(jobs, self.storage, CANDIDATES, e, judge, {**recover, "rank": True}, recover_names=set(jobs),
                      model=self.cfg.supernet.model)
        recovered = {sid: json.loads((self.out / CANDIDATES / sid / RECOVERY).read_text())["selection"]
                     for sid in jobs}
        winners = choose_after_recovery(candidates, recovered, objective)
        write_json(self.out / RANKING, ranking_record(candidates, by_id, recovered, winners, objective))
        for sid in set(winners.values()):  # the ranked checkpoint itself, whatever an earlier export left there
            src, dst = self.out / CANDIDATES / sid, self.out / MODELS / sid
            if not (dst / RECOVERY).is_file() or (dst / RECOVERY).read_bytes() != (src / RECOVERY).read_bytes():
                self.storage.copy_tree(f"{CANDIDATES}/{sid}", f"{MODELS}/{sid}", last=MANIFEST)

    def recovery(self) -> dict | None:
        """The recovery fine-tune's settings as the merge tasks take them (None: export.recover_steps 0)."""
        if not self.cfg.export.recover_steps:
            return None
        optim = self.cfg.train.optim
        trained = json.loads((self.out / "supernet" / STATE_FILE).read_text())["step"]  # steps it made
        recover = {"data": to_dict(self.cfg.data), "quality": to_dict(self.cfg.quality),
                   "steps": self.cfg.export.recover_steps, "batch_size": optim.batch_size, "lr": optim.lr,
                   "seed": self.cfg.train.seed, "first_step": int(trained)}
        teacher = self.cfg.teacher_dir(self.out)
        if teacher is not None:  # the frozen teacher teaches the recovery as it taught the training
            d = self.cfg.train.distill
            recover["distill"] = {"teacher": str(teacher), "weight": d.weight, "temperature": d.temperature}
        return recover

    def judge(self) -> dict | None:
        return {"data": to_dict(self.cfg.data), "quality": to_dict(self.cfg.quality)} if self.cfg.export.lm_eval \
            else None

    def export(self) -> dict:
        from lonas_ray.pipeline.export import export_models

        recover = self.recovery()
        if self.cfg.export.select == "targets":
            self.rank_targets(recover)
        chosen = self.chosen()
        jobs = {sid: (self.out / "supernet", entry["config"]) for sid, entry in chosen.items()}
        if self.cfg.baseline.enabled:
            bdir = self.out / BASELINE / "supernet"
            jobs[BASELINE] = (bdir, load_prepared(bdir)[1].maximal())
        models = self.out / MODELS
        for stale in sorted(models.glob("*")) if models.exists() else []:
            if stale.name not in jobs and (stale / MANIFEST).is_file():
                log.info("removing %s: no longer chosen", stale)
                self.storage.remove(f"{MODELS}/{stale.name}")
        judge = self.judge()
        manifests = export_models(jobs, self.storage, MODELS, self.cfg.export, judge, recover,
                                  recover_names=set(chosen), gguf=self.cfg.gguf_options(),
                                  model=self.cfg.supernet.model)
        self.write_cards(chosen, manifests)
        merged = [json.loads(f.read_text()).get("memory") for d in (CANDIDATES, MODELS)
                  for f in sorted((self.out / d).glob(f"*/{RECOVERY}"))]
        return {"models": sorted(jobs), "memory": largest(merged)}  # the merge tasks that recovered a model

    def figures(self, chosen: dict[str, dict]) -> dict[str, Any]:
        fig = collect(self.out, self.search_cfg.search.pools, chosen, stages=StageLog(self.out).data)
        fig["output_dir"] = self.storage.shared  # the URI of a run on storage, not the driver's working copy
        return fig

    def write_cards(self, chosen: dict[str, dict], manifests: dict[str, dict]) -> None:
        from lonas_ray.pipeline.report import model_card

        fig = self.figures(chosen)
        for m in ([fig["baseline"]] if fig["baseline"] else []) + fig["models"]:
            name = BASELINE if m is fig["baseline"] else m["subnet_id"]
            card = model_card(m, None if name == BASELINE else fig["baseline"], fig["pools"],
                              manifests[name]["architecture"], manifests[name].get("compression"),
                              manifests[name].get("gguf"))
            (self.out / MODELS / name / "README.md").write_text(card)

    def report(self) -> dict:
        from lonas_ray.pipeline.report import plot_pareto, report_markdown

        fig = self.figures(self.chosen())
        (self.out / SUMMARY_FILE).write_text(json.dumps(fig, indent=1))
        (self.out / REPORT).write_text(report_markdown(fig))
        pool_rows = {pool: list(rows_by_pool(self.out / RESULTS, pool).values()) for pool in fig["pools"]}
        plot_pareto(fig, pool_rows, self.out / PLOT)
        return {"models": len(fig["models"])}

    # -- what each stage depends on (a change re-runs it, or is refused for training) ----------------------------
    def fingerprints(self) -> dict[str, str]:
        c = to_dict(self.cfg)
        base = {"supernet": c["supernet"], "data": c["data"], "train": c["train"]}
        search = {**base, **{k: c[k] for k in ("pools", "search", "quality", "pareto")}}
        baseline = fingerprint({**base, "baseline": c["baseline"], "pools": c["pools"], "quality": c["quality"]})
        taught = self.cfg.train.distill.frozen_teacher and self.cfg.train.distill.teacher == TEACHER_BASELINE
        return {
            "train": fingerprint({**base, "teacher": baseline}) if taught else fingerprint(base),
            "baseline": baseline,
            "zero_shot": fingerprint({k: c[k] for k in ("supernet", "data", "pools", "quality", "zero_shot")}),
            "search": fingerprint(search),
            "export": (export := fingerprint({**search, "export": c["export"], "baseline": c["baseline"]})),
            "report": export,
        }

    def outputs(self, stage: str) -> list[Path]:
        """Files a finished stage must have left; if one is gone the stage runs again."""
        return {"train": [self.out / "supernet"],
                "baseline": [self.out / BASELINE / RESULTS] if self.cfg.baseline.enabled else [],
                "zero_shot": [self.out / ZERO_SHOT / RESULTS] if self.cfg.zero_shot.enabled else [],
                "search": [self.out / RESULTS, self.out / PARETO, self.out / SUMMARY],
                "export": [self.out / MODELS],
                "report": [self.out / SUMMARY_FILE, self.out / REPORT, self.out / PLOT]}[stage]


def run_pipeline(cfg: PipelineConfig, output: str | Path | None = None, address: str | None = None,
                 stop_after: str | None = None) -> dict[str, Any] | None:
    """Run the stages not yet finished in ``output``; returns the figures (None when stopped early)."""
    from lonas_ray.ray_env import ensure_ray
    from lonas_ray.search.results import read_results

    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"--stop-after '{stop_after}' is not a stage; stages: {', '.join(STAGES)}")
    storage = RunStorage.open(output or cfg.output_dir)
    check_data(cfg.data)
    preflight(cfg.supernet)  # the model's files and the space, before anything is written
    if cfg.train.distill.frozen_teacher:
        check_teacher(cfg.train.distill.teacher, in_pipeline=True)
    storage.pull()  # a URI run resumes from what the storage holds, whichever head runs it
    out = storage.local
    read_results(out / RESULTS)  # a corrupt results file fails now, not after training
    stages = StageLog(out)
    pipeline = Pipeline(cfg, storage)
    fps = pipeline.fingerprints()
    for stage in STRICT:  # a changed training config is refused before any cluster work
        stages.is_done(stage, fps[stage])
    ensure_ray(address, dashboard=True, **local_pool_tags(pipeline.search_cfg))  # refused (a token): nothing written
    # what later stages need of the cluster, before the first stage: pools that must be there now, and the
    # latency runtimes of the pools that are (a pool timed by vLLM without vLLM's environment on its node)
    check_pools_now(pipeline.search_cfg)
    check_pool_runtimes(pipeline.search_cfg, wait=False)
    if not all(stages.is_done(s, fps[s]) for s in STRICT):  # training still to come: room for its workers
        check_workers_fit(cfg.train.scaling)
    check_merges_fit(cfg.export, cfg.supernet.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    storage.start_mirroring()
    try:
        return _run_stages(pipeline, stages, fps, stop_after)
    finally:
        storage.stop_mirroring()  # whatever the last seconds wrote, also after a failure


def _run_stages(pipeline: Pipeline, stages: StageLog, fps: dict[str, str], stop_after: str | None):
    from lonas_ray.metrics import set_gauges

    out = pipeline.out
    for stage in STAGES:
        if stages.is_done(stage, fps[stage]) and all(p.exists() for p in pipeline.outputs(stage)):
            _say(stage, f"finished earlier ({stages.path}), skipped")
            if stage == "search":
                pipeline.publish_search_figures()
        else:
            _say(stage, "running")
            stages.start(stage, fps[stage])
            info = getattr(pipeline, stage)()
            stages.finish(stage, **info)
            pipeline.storage.push()
            _say(stage, f"done in {stages.entry(stage)['seconds']:.1f} s")
        try:
            set_gauges({"lonas_pipeline_stage": stages.finished_count()}, run=pipeline.storage.name)
        except Exception as exc:  # a view only
            log.warning("could not publish the stage gauge: %s", exc)
        if stage == stop_after:
            print(f"stopped after stage '{stage}' as asked; re-run to continue", flush=True)
            return None
    return json.loads((out / SUMMARY_FILE).read_text())
