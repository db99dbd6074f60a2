"""The pipeline's pure parts: its config, stage bookkeeping, model selection, figures and their rendering."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from helpers import ROOT, lonas_cli_batch
from lonas_ray.config_io import ConfigError
from lonas_ray.pipeline.config import PipelineConfig
from lonas_ray.pipeline.figures import compare, fine_tuning_verdict, select_models
from lonas_ray.pipeline.report import model_card, report_markdown
from lonas_ray.pipeline.stages import STAGES, StageLog
from lonas_ray.search.progress import best_quality_per_band
from lonas_ray.train.loop import bar_label
from lonas_ray.transfer import read_tree, write_tree

TINY = ROOT / "jobs" / "configs" / "tiny.yaml"


def raw() -> dict:
    return yaml.safe_load(TINY.read_text())


def test_the_pipeline_config_derives_the_stage_configs():
    cfg = PipelineConfig.from_dict(raw())
    train = cfg.train_config("/o")
    assert train.output_dir == "/o" and train.sampling.strategy == "sandwich" and train.optim.steps == 6
    base = cfg.train_config("/o/baseline", baseline=True)
    assert base.sampling.strategy == "fixed:maximal" and base.optim.steps == 6
    # what the progress bars of the two stages say they train
    assert bar_label(base.sampling.strategy) == "LoRA training (maximal only)"
    assert bar_label(train.sampling.strategy) == "super-adapter training"
    r = raw()
    r["baseline"] = {"steps": 3}
    assert PipelineConfig.from_dict(r).train_config("/o", baseline=True).optim.steps == 3
    search = cfg.search_config("/o/supernet", "/o")
    assert search.supernet_dir == "/o/supernet" and search.search.pools == ["cpu_a", "cpu_b"]
    # tiny.yaml's teacher is the baseline: the super-adapter is taught by its directory, the baseline by nobody
    assert (train.distill.teacher, train.distill.weight) == ("/o/baseline/supernet", 0.5)
    assert base.distill.weight == 0.0 and not base.distill.frozen_teacher


def qwen3_dir(d):
    """A directory whose config.json names a Qwen3 model: what a GGUF export's config check reads."""
    path = d.parent / "qwen3"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    return path


BAD_RUNS = [
    (lambda r, d: r["train"].update(distill={"teacher": "/nonexistent/teacher", "weight": 0.5}),
     "distill.teacher '/nonexistent/teacher' is not a directory"),
    (lambda r, d: r["train"].update(distill={"teacher": str(d), "weight": 0.5}), "holds no model"),
    (lambda r, d: r["train"].update(distill={"teacher": "baseline", "weight": 1.5}),
     "distill.weight must lie in [0, 1], got 1.5"),
    (lambda r, d: r.update(baseline={"enabled": False}, train={**r["train"], "distill": {"teacher": "baseline",
                                                                                          "weight": 0.5}}),
     "train.distill.teacher 'baseline' needs the baseline"),
    (lambda r, d: r.update(export={"select": "targets", "recover_steps": 3, "candidates": 0}),
     "export.candidates must be an integer >= 1"),
    (lambda r, d: r.update(export={"formats": ["gguf"]}), "export.formats must list hf and optionally gguf"),
    (lambda r, d: r.update(export={"formats": ["hf", "gguf"]}),
     "export.formats: gguf needs the model's Hugging Face tokenizer inside the GGUF, and tiny random models have none"),
    (lambda r, d: (r.update(export={"formats": ["hf", "gguf"]}),
                   r["supernet"].update(model={"kind": "local", "path": str(qwen3_dir(d))})),
     "export.formats: GGUF export covers Llama and Mistral sub-networks; this model is 'qwen3'"),
    (lambda r, d: (r.update(export={"formats": ["hf", "gguf"]}), r["supernet"].update(
        model={"kind": "smollm2"}, quantization={"enabled": True, "bits": 4, "group_size": 32})),
     "export.formats: gguf takes dense or sparse merges, and this base is quantized to INT4"),
]


@pytest.fixture(scope="module")
def bad_run_results(tmp_path_factory):
    """`lonas-ray run` of every BAD_RUNS case (in one interpreter: ``helpers.lonas_cli_batch``)."""
    tmp, argvs = tmp_path_factory.mktemp("bad-runs"), []
    for i, (change, _) in enumerate(BAD_RUNS):
        r, case = raw(), tmp / f"case{i}"
        (case / "empty").mkdir(parents=True)
        change(r, case / "empty")
        (case / "bad.yaml").write_text(yaml.safe_dump(r))
        argvs.append(["run", "--config", str(case / "bad.yaml"), "--output", str(case / "out")])
    return tmp, lonas_cli_batch(argvs, timeout=300)


@pytest.mark.parametrize("case", range(len(BAD_RUNS)), ids=[m for _, m in BAD_RUNS])
def test_a_bad_teacher_ranking_or_export_format_exits_2_with_the_problem_named_and_nothing_written(
        bad_run_results, case):
    tmp, runs = bad_run_results
    run, message = runs[case], BAD_RUNS[case][1]
    assert run["returncode"] == 2 and message in run["stderr"], run["stderr"][-2000:]
    assert "Traceback" not in run["stderr"] and not (tmp / f"case{case}" / "out").exists()


@pytest.mark.parametrize("change, message", [
    (lambda r: r["data"].pop("train"), r"data: missing required key\(s\) train"),
    (lambda r: r["data"].pop("eval"), "data.eval is not set"),
    (lambda r: r["train"]["optim"].update(batch_size=7), "not divisible"),
    (lambda r: r["train"].update(sampling={"strategy": "greedy"}), "sampling.strategy 'greedy' is unknown"),
    (lambda r: r["search"].update(pools=["cpu_c"]), "unknown pool 'cpu_c'"),
    (lambda r: r.update(export={"select": "all"}), "export.select 'all' is unknown"),
    (lambda r: r["train"].update(epochs=3), "unknown key"),
    (lambda r: r.update(baseline={"steps": 0}), "baseline.steps must be >= 1"),
])
def test_bad_pipeline_configs_are_refused_with_the_problem_named(change, message):
    r = raw()
    change(r)
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_dict(r)


def test_a_stage_that_runs_again_invalidates_the_later_ones(tmp_path):
    log = StageLog(tmp_path)
    for stage in STAGES:
        log.start(stage, "f")
        log.finish(stage)
    assert log.finished_count() == len(STAGES)
    log.start("search", "g")
    again = StageLog(tmp_path)  # what is on disk
    assert [again.is_done(s, "f") for s in ("train", "baseline")] == [True, True]
    assert all("finished" not in again.entry(s) for s in ("search", "export", "report"))
    assert again.entry("search")["runs"] == 2


def test_a_changed_config_reruns_incremental_stages_but_is_refused_for_training(tmp_path):
    log = StageLog(tmp_path)
    for stage in ("train", "search"):
        log.start(stage, "f")
        log.finish(stage)
    assert log.is_done("search", "other") is False
    with pytest.raises(ConfigError, match="stage 'train' finished .* under a different config"):
        log.is_done("train", "other")


def test_a_corrupt_stage_log_is_reported_and_kept(tmp_path):
    (tmp_path / "stages.json").write_text("{not json")
    with pytest.raises(ConfigError, match="stages.json is not valid JSON"):
        StageLog(tmp_path)
    assert (tmp_path / "stages.json").read_text() == "{not json"


def _row(sid, pool, front="latency", member=True):
    return {"subnet_id": sid, "pool": pool, "front": front, "member": member, "config": json.dumps({"d": sid})}


def test_select_models_takes_each_pools_picks_or_the_whole_latency_front():
    rows = [_row("a", "p"), _row("b", "p"), _row("c", "p", member=False), _row("a", "p", "params"),
            _row("d", "q"), _row("a", "q")]
    summary = {"p": {"latency": {"pick": "a"}, "params": {"pick": "a"}}, "q": {"latency": {"pick": "d"},
                                                                                "params": {"pick": None}}}
    picks = select_models(rows, summary, ["p", "q"], "picks")
    assert picks == {"a": {"config": {"d": "a"}, "roles": ["latency pick on p", "params pick on p"]},
                     "d": {"config": {"d": "d"}, "roles": ["latency pick on q"]}}
    front = select_models(rows, summary, ["p", "q"], "front")
    assert list(front) == ["a", "b", "d"]  # c is listed but dominated
    assert front["a"]["roles"][-1] == "latency front on q"


def test_speedup_is_the_baselines_latency_over_the_models_on_each_pool():
    base = {"quality": 0.5, "params": 200, "latency": {"p": {"latency_ms": 30.0}}}
    m = {"quality": 0.45, "params": 100, "latency": {"p": {"latency_ms": 10.0}, "q": {"latency_ms": 5.0}}}
    got = compare(m, base)
    assert got["quality_delta"] == pytest.approx(-0.05) and got["params_ratio"] == 0.5
    assert got["latency"]["p"]["speedup"] == 3.0 and got["latency"]["q"]["speedup"] is None


def test_best_quality_per_latency_band():
    rows = [{"quality": 0.3, "latency_ms": 4}, {"quality": 0.5, "latency_ms": 7}, {"quality": 0.6, "latency_ms": 10},
            {"quality": 0.9, "latency_ms": None}]
    assert best_quality_per_band(rows, 10.0) == {"<=0.5x": 0.3, "<=0.75x": 0.5, "<=1x": 0.6}
    assert best_quality_per_band(rows, 2.0) == {}


def _fig():
    lat = {"latency_ms": 20.0, "latency_p90_ms": 21.0, "latency_runtime": "static", "prefill_ms": 5.0,
           "decode_ms": 2.0}
    base = {"subnet_id": "base", "config": {}, "quality": 0.5, "quality_metric": "mc_accuracy", "loss": 1.0,
            "task_loss": 0.69, "quality_ci95": [0.3639, 0.6361], "eval_examples": 48, "params": 1000,
            "nonzero_params": 1000, "macs": 900, "latency": {"p": lat},
            "weight_bytes": 4 * 2**20, "roles": ["plain LoRA"], "path": "models/baseline"}
    m = compare({**base, "subnet_id": "abc", "quality": 0.48, "quality_ci95": [0.3447, 0.6167], "params": 600,
                 "weight_bytes": 2**19, "latency": {"p": dict(lat, latency_ms=8.0)}}, base)
    m.update(roles=["latency pick on p"], path="models/abc", missing_pools=[],
             lm_eval={"metric": "mc_accuracy", "examples": 48, "lonas_quality": 0.48, "lm_eval_quality": 23 / 48,
                      "lm_eval_metric": "acc", "agree": 47, "lm_eval_version": "0.4.13"})
    return {"output_dir": "/o", "pools": ["p"], "baseline": base, "models": [m],
            "search": {"strategy": "nsga2", "space_size": 12, "maximal": "base",
                       "pools": {"p": {"evaluated": 6, "latency": {"members": 2, "hypervolume": 1.5, "pick": "abc"},
                                       "params": {"pick": "abc"}}}}}


def test_the_report_has_a_row_per_model_with_its_speedup_and_the_baseline():
    text = report_markdown(_fig())
    # no reference timings in these figures: speed-ups fall back to the baseline's latency, without an interval
    assert ("| baseline (plain LoRA) | reference | 0.5000 | [0.364, 0.636] | - | - | 0.00M | 1.00 | 4.0 "
            "| 20.00 | - |") in text
    assert ("| `abc` | latency pick on p | 0.4800 | [0.345, 0.617] | 0.4792 (47/48) | -0.0200 | 0.00M | 0.60 | 0.5 "
            "| 8.00 | 2.50x |") in text
    assert "![quality vs latency per pool](pareto.png)" in text
    assert "**Compression:**" not in text  # a dense base says nothing


def test_the_report_gives_each_pools_evaluator_throughput_and_each_stages_time_and_peak_memory():
    from lonas_ray.pipeline.figures import evaluator_profile

    rows = [{"profile": json.dumps({"load_s": 30.0, "switch_s": 1.0, "score_s": 6.0, "time_s": 3.0,
                                    "peak_rss_mib": 2048.0, "peak_gpu_mib": 1536.4})},
            {"profile": json.dumps({"load_s": 0.0, "switch_s": 1.0, "score_s": 6.0, "time_s": 3.0,
                                    "peak_rss_mib": 2100.0, "peak_gpu_mib": 1600.0})}]
    fig = dict(_fig(), evaluators={"p": evaluator_profile(rows)},
               stages={"train": {"seconds": 61.25, "runs": 1,
                                 "memory": {"peak_rss_mib": 3500.0, "peak_gpu_mib": 9000.0}},
                       "report": {"seconds": 1.0, "runs": 2, "memory": None}})
    text = report_markdown(fig)
    assert ("| p | 2 | 2.40 | 30.0 s (60%) | 2.0 s (4%) | 12.0 s (24%) | 6.0 s (12%) | 2,100 | 1,600 |") in text
    assert "| train | 61.2 | 1 | 3,500 | 9,000 |" in text and "| report | 1.0 | 2 | - | - |" in text
    assert "## Evaluators" not in report_markdown(dict(_fig(), evaluators={"p": None}))


def test_the_report_says_how_the_base_was_compressed_and_that_cpu_latency_gains_nothing_from_it():
    fig = dict(_fig(), compression={
        "sparsity": {"method": "wanda", "pattern": "unstructured", "level": 0.5, "mask_adapter": True},
        "quantization": {"bits": 4, "group_size": 32, "method": "rtn", "qa": True},
        "export": {"format": "compressed-tensors pack-quantized", "group_size": 32}})
    text = report_markdown(fig)
    line = next(x for x in text.splitlines() if x.startswith("**Compression:**"))
    assert "wanda (unstructured, 50% of block weights zero); SparsePEFT merges keep exactly its zeros" in line
    assert "INT4 weights, group size 32, rtn scales, QA-SparsePEFT" in line
    assert "exports in compressed-tensors pack-quantized" in line and "save bytes, not time" in line


def _zero_shot(quality: float, ci95: list[float]) -> dict:
    return {"subnet_id": "base", "config": {}, "quality": quality, "quality_metric": "mc_accuracy", "loss": 3.0,
            "task_loss": 1.1, "quality_ci95": ci95, "eval_examples": 48, "params": 1000, "nonzero_params": 1000,
            "macs": 900, "latency": {"p": {"latency_ms": 20.0}}, "roles": ["base model, zero-shot"], "path": None}


def test_the_verdict_names_models_that_beat_the_zero_shot_base_model_beyond_both_intervals():
    fig = _fig()  # baseline 0.50 [0.364, 0.636], abc 0.48 [0.345, 0.617], 48 examples
    low = _zero_shot(0.10, [0.045, 0.222])
    v = fine_tuning_verdict(low, [fig["baseline"], *fig["models"]])
    assert v["real_gain"] and v["better"] == ["baseline", "abc"] and v["worse"] == []
    assert v["text"].startswith("2 of 2 fine-tuned models beat the base model zero-shot (mc_accuracy 0.1000")
    # an interval that overlaps the baseline's: inside noise, so only the clear winner counts
    near = _zero_shot(0.2083, [0.117, 0.350])
    v = fine_tuning_verdict(near, [fig["baseline"], *fig["models"]])
    assert v["better"] == ["baseline"] and v["real_gain"] and v["level"] == ["abc"]
    assert v["text"].endswith("Not beyond noise: abc.")


def test_a_run_whose_models_do_not_beat_zero_shot_says_plainly_it_is_a_smoke_run():
    fig = _fig()
    same = _zero_shot(0.4583, [0.3258, 0.5970])
    v = fine_tuning_verdict(same, [fig["baseline"], *fig["models"]])
    assert not v["real_gain"] and v["text"].startswith("Smoke run: no fine-tuned model beats the base model")
    assert "train.optim.steps" in v["text"]
    high = _zero_shot(0.875, [0.7535, 0.9414])  # the fine-tuned models are worse than what they started from
    v = fine_tuning_verdict(high, [fig["baseline"], *fig["models"]])
    assert v["worse"] == ["baseline", "abc"] and "worse than the untouched base model" in v["text"]
    assert fine_tuning_verdict(None, [fig["baseline"]]) is None
    assert fine_tuning_verdict(dict(same, quality_ci95=None), [fig["baseline"]]) is None  # a loss: no interval


def test_the_report_and_the_printed_table_lead_with_the_zero_shot_row_and_the_verdict():
    from lonas_ray.cli import summary_table

    fig = _fig()
    fig["zero_shot"] = compare(_zero_shot(0.10, [0.045, 0.222]), fig["baseline"])
    fig["verdict"] = fine_tuning_verdict(fig["zero_shot"], [fig["baseline"], *fig["models"]])
    text = report_markdown(fig)
    row = ("| base model (zero-shot) | base model, zero-shot | 0.1000 | [0.045, 0.222] | - | -0.4000 | 0.00M "
           "| 1.00 | - | 20.00 | 1.00x |")
    assert row in text and text.index(row) < text.index("| baseline (plain LoRA) |")
    assert f"**Fine-tuning:** {fig['verdict']['text']}" in text
    table = summary_table(fig).splitlines()
    assert table[1].startswith("base model (zero-shot)") and "0.1000" in table[1]
    assert fig["verdict"]["text"] in table
    del fig["zero_shot"], fig["verdict"]
    assert "not scored zero-shot (`zero_shot.enabled: false`)" in report_markdown(fig)


def test_the_model_card_shows_its_figures_beside_the_baselines_and_how_to_load_it():
    fig = _fig()
    card = model_card(fig["models"][0], fig["baseline"], ["p"], "LonasLlamaForCausalLM")
    assert card.startswith("---\nlibrary_name: transformers")
    assert "| quality (mc_accuracy, 48 examples) | 0.4800 | 0.5000 |" in card
    assert "| 95 % interval (Wilson) | [0.345, 0.617] | [0.364, 0.636] |" in card
    assert "| task loss (choice cross-entropy for multiple choice) | 0.6900 | 0.6900 |" in card
    assert "| lm-eval on the same examples (agrees with the above on) | 0.4792 (47/48) | - |" in card
    assert "| latency on p (ms, static; p10-p90) | 8.00 (2.50x) | 20.00 |" in card
    assert "import lonas_ray" in card
    stock = model_card(fig["models"][0], fig["baseline"], ["p"], "LlamaForCausalLM")
    assert "import lonas_ray" not in stock
    # the engines that load it: vLLM (per-layer: with the plugin), llama.cpp where a GGUF was written
    assert "vLLM serves it with lonas-ray's plugin" in card and "jobs/make_vllm_env.sh" in card
    assert "vLLM serves it as it is" in stock and "vllm serve PATH" in stock
    assert "llama" + ".cpp" not in card
    gguf = model_card(fig["models"][0], fig["baseline"], ["p"], "LonasLlamaForCausalLM",
                      gguf={"file": "model.gguf", "dtype": "f16", "pre": "smollm"})
    assert "llama.cpp loads `model.gguf` (f16, its per-layer shapes as llama.cpp's `deci` architecture" in gguf
    assert "llama-server -m PATH/model.gguf" in gguf
    int4 = model_card(fig["models"][0], fig["baseline"], ["p"], "LonasLlamaForCausalLM",
                      {"export": {"format": "compressed-tensors pack-quantized", "group_size": 32}})
    assert "vllm serve PATH --dtype float16" in int4 and "in bfloat16 it strays" in int4
    assert "vllm serve PATH --dtype float32" in card and "strays" not in card


def test_directories_travel_as_bytes_and_land_whole(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.bin").write_bytes(b"\x00\x01")
    (tmp_path / "src" / "sub" / "b.txt").write_text("b")
    files = read_tree(tmp_path / "src")
    assert files == {"a.bin": b"\x00\x01", "sub/b.txt": b"b"}
    write_tree(files, tmp_path / "dst")
    assert read_tree(tmp_path / "dst") == files
    with pytest.raises(ValueError, match="outside"):
        write_tree({"../evil": b""}, tmp_path / "x")
    assert not (tmp_path / "evil").exists()


def test_model_figures_carry_the_task_loss_and_the_wilson_interval_of_the_full_set_quality():
    from lonas_ray.pipeline.figures import model_figures

    row = {"subnet_id": "s", "config": "{}", "quality": 0.5, "quality_metric": "mc_accuracy", "loss": 1.0,
           "task_loss": 0.8, "eval_examples": 24, "params": 10, "nonzero_params": 10, "macs": 5, "weight_bytes": 40,
           "latency_ms": 2.0, "latency_p90_ms": 2.0, "latency_runtime": "static", "prefill_ms": 1.0, "decode_ms": 0.5}
    finals = {"s": {"quality": 0.25, "loss": 1.5, "task_loss": 1.1, "examples": 100, "metric": "mc_accuracy"}}
    fig = model_figures("s", {"p": {"s": row}}, finals, ["p"])
    assert (fig["quality"], fig["task_loss"], fig["eval_examples"]) == (0.25, 1.1, 100)  # the full set's figures
    assert fig["quality_ci95"] == pytest.approx([0.1754, 0.3430], abs=1e-4)
    subset_only = model_figures("s", {"p": {"s": row}}, {}, ["p"])
    assert subset_only["task_loss"] == 0.8 and subset_only["quality_ci95"] == pytest.approx([0.3143, 0.6857], abs=1e-4)
    token = model_figures("s", {"p": {"s": dict(row, quality_metric="answer_token_accuracy")}}, {}, ["p"])
    assert token["quality_ci95"] is None


def test_the_quick_start_runs_on_a_task_with_signal_and_reports_against_zero_shot():
    from lonas_ray.data import shipped

    cfg = PipelineConfig.from_yaml(ROOT / "jobs" / "configs" / "quickstart.yaml")
    # a task where the base model scores 0 zero-shot and plain LoRA 0.85 (README, Data): a gain is visible
    assert cfg.data.train == cfg.data.eval == "shipped:arithmetic_3_digit_addition"
    assert cfg.data.format == shipped.FORMATS["arithmetic_3_digit_addition"] == "generation"
    assert cfg.zero_shot.enabled and cfg.baseline.enabled
    assert STAGES.index("zero_shot") < STAGES.index("report")
    # the recipe issue 28 measured best: depth from block influence, the baseline as teacher, recover-then-rank
    assert cfg.supernet.space.depth.auto == 6 and not cfg.supernet.space.mlp.enabled
    assert (cfg.train.distill.teacher, cfg.train.distill.weight) == ("baseline", 0.5)
    assert cfg.export.select == "targets" and cfg.export.recover_steps > 0 and cfg.export.candidates >= 2


def test_an_epoch_budget_becomes_steps_over_the_training_examples_and_the_baseline_follows_it():
    from lonas_ray.train.config import OptimSpec

    raw = yaml.safe_load((ROOT / "jobs" / "configs" / "tiny.yaml").read_text())
    raw["train"]["optim"]["epochs"] = 1.5
    cfg = PipelineConfig.from_dict(raw)
    train, base = cfg.train_config("/o"), cfg.train_config("/b", baseline=True)
    assert train.optim.epochs == base.optim.epochs == 1.5  # the baseline trains as long as the super-adapter
    train.optim.resolve_epochs(1557)  # social_iqa's training split at batch 8: 1.5 x 1557 / 8 = 291.9
    assert train.optim.steps == 292
    raw["baseline"]["steps"] = 7  # an explicit baseline step count wins over the epoch budget
    assert PipelineConfig.from_dict(raw).train_config("/b", baseline=True).optim.steps == 7
    assert PipelineConfig.from_dict(raw).train_config("/b", baseline=True).optim.epochs is None
    with pytest.raises(ConfigError, match="optim.epochs must be > 0"):
        OptimSpec(epochs=0)


def test_a_recovered_model_reports_its_own_checkpoints_figures_and_what_the_search_saw(tmp_path):
    from lonas_ray.pipeline.figures import recovered

    fig = _fig()
    m = fig["models"][0]
    (tmp_path / "recovery.json").write_text(json.dumps({"steps": 5, "quality": 0.75, "loss": 0.3, "task_loss": 0.4,
                                                        "examples": 48, "metric": "mc_accuracy", "hits": 36}))
    got = recovered(m, tmp_path)
    assert (got["quality"], got["task_loss"], got["eval_examples"]) == (0.75, 0.4, 48)
    assert got["quality_ci95"] == pytest.approx([0.6122, 0.8508], abs=1e-4)  # Wilson, 36 of 48
    assert got["recovery"]["steps"] == 5 and got["recovery"]["before"]["quality"] == 0.48
    assert recovered(m, tmp_path / "none") is m  # no recovery file: the search's figures stand
    fig["models"][0] = compare(got, fig["baseline"])
    text = report_markdown(fig)
    assert "`abc`: after a recovery fine-tune of 5 steps before its merge" in text and "scored 0.4800" in text
    assert "Recovery fine-tune: 5 steps" in model_card(fig["models"][0], fig["baseline"], ["p"], "LlamaForCausalLM")


def test_a_compressed_models_card_records_its_compression_and_how_to_load_it():
    from lonas_ray.pipeline.report import model_card

    fig = _fig()
    compression = {"sparsity": {"method": "wanda", "pattern": "2:4", "level": 0.5, "mask_adapter": True},
                   "quantization": {"bits": 4, "group_size": 32, "method": "rtn", "qa": True},
                   "export": {"format": "compressed-tensors pack-quantized"}, "scales": "round-to-nearest absmax"}
    card = model_card(fig["models"][0], fig["baseline"], ["p"], "LlamaForCausalLM", compression)
    assert "## Compression" in card and "wanda (2:4, 50% of block weights zero)" in card
    assert '"group_size": 32' in card and "round-to-nearest absmax" in card
    assert "needs the `compressed-tensors` package" in card
    assert "## Compression" not in model_card(fig["models"][0], fig["baseline"], ["p"], "LlamaForCausalLM")


@pytest.mark.parametrize("name, method, zeros, bits", [
    ("shears.yaml", "wanda", 0.5, None), ("sqft.yaml", "wanda", 0.5, 4), ("sqft_2_4.yaml", "wanda", 0.5, 4)])
def test_the_shears_and_sqft_recipes_are_the_quick_start_with_a_compressed_base(name, method, zeros, bits):
    quick = PipelineConfig.from_yaml(ROOT / "jobs" / "configs" / "quickstart.yaml")
    cfg = PipelineConfig.from_yaml(ROOT / "jobs" / "configs" / name)
    s, q = cfg.supernet.sparsity, cfg.supernet.quantization
    assert (s.method, s.zero_fraction, s.mask_adapter) == (method, zeros, True)
    assert (q.bits if q.enabled else None) == bits and q.qa == (bits is not None)
    assert cfg.supernet.space == quick.supernet.space and cfg.data == quick.data and cfg.output_dir != quick.output_dir
    assert cfg.supernet.generate.align % 32 == 0  # every generated width cuts into 32-input groups (and 2:4)


# --------------------------------------------------------------------------- recover-then-rank


def front_row(sid: str, pool: str, latency: float, task_loss: float, member: bool = True) -> dict:
    return {"subnet_id": sid, "pool": pool, "front": "latency", "member": member, "latency_ms": latency,
            "task_loss": task_loss, "quality": 1.0 - task_loss / 10, "config": json.dumps({"id": sid})}


def test_each_latency_target_gets_the_fronts_best_k_members_within_its_budget():
    from lonas_ray.pipeline.ranking import target_candidates, target_role

    rows = [front_row("max", "a", 10.0, 0.5), front_row("x", "a", 8.5, 0.9), front_row("y", "a", 7.0, 1.1),
            front_row("z", "a", 6.0, 2.0), front_row("dominated", "a", 7.5, 3.0, member=False),
            front_row("max", "b", 20.0, 0.5), front_row("y", "b", 19.0, 1.1)]
    got = target_candidates(rows, ["a", "b"], "max", [1.0, 0.9, 0.7, 0.5], k=2, objective="task_loss")
    assert got == {target_role("a", 1.0): ["max", "x"],  # the maximal competes only at 100 %
                   target_role("a", 0.9): ["x", "y"],  # best task loss first, within 9 ms
                   target_role("a", 0.7): ["y", "z"],
                   target_role("b", 1.0): ["max", "y"]}  # pool b: nothing within 90 % or less; a: nothing <= 5 ms
    assert target_role("a", 0.9) == "90% of the maximal's latency on a"


def test_recover_then_rank_chooses_by_the_score_after_recovery_when_the_ranking_flips():
    from lonas_ray.pipeline.ranking import choose_after_recovery, ranking_record

    candidates = {"t": ["x", "y", "z"]}  # as sliced: x best, then y, then z
    sliced = {"x": {"task_loss": 0.9, "quality": 0.5}, "y": {"task_loss": 1.1, "quality": 0.4},
              "z": {"task_loss": 2.0, "quality": 0.1}}
    recovered = {"x": {"task_loss": 0.40, "quality": 0.70, "examples": 16},
                 "y": {"task_loss": 0.25, "quality": 0.80, "examples": 16},  # y overtakes x after recovery
                 "z": {"task_loss": 0.60, "quality": 0.60, "examples": 16}}
    assert choose_after_recovery(candidates, recovered, "task_loss") == {"t": "y"}
    assert choose_after_recovery(candidates, recovered, "quality") == {"t": "y"}
    # a tie after recovery goes to the better slice; a candidate that was not recovered is not chosen
    tie = dict(recovered, y=dict(recovered["x"]))
    assert choose_after_recovery(candidates, tie, "task_loss") == {"t": "x"}
    assert choose_after_recovery(candidates, {"z": recovered["z"]}, "task_loss") == {"t": "z"}
    assert choose_after_recovery({"t": ["x"]}, {}, "task_loss") == {}
    record = ranking_record(candidates, sliced, recovered, {"t": "y"}, "task_loss")
    assert record["targets"]["t"]["chosen"] == "y"
    assert [c["sliced"]["objective"] for c in record["targets"]["t"]["candidates"]] == [-0.9, -1.1, -2.0]
    assert [c["recovered"]["objective"] for c in record["targets"]["t"]["candidates"]] == [-0.4, -0.25, -0.6]


@pytest.mark.parametrize("export, message", [
    ({"select": "targets", "recover_steps": 3, "candidates": 0}, "export.candidates must be an integer >= 1"),
    ({"select": "targets", "recover_steps": 0}, "export.select: targets ranks candidates after their recovery"),
    ({"select": "targets", "recover_steps": 3, "latency_targets": [0.9, 1.5]}, "export.latency_targets must be"),
])
def test_bad_recover_then_rank_settings_are_refused(export, message):
    r = raw()
    r["export"] = export
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_dict(r)


def deploy_model(sid: str, outcomes: list[int], params: float, speedups: dict[str, tuple]) -> dict:
    """A model with its 0/1 outcomes on the baseline's examples and, per pool, (speed-up, its interval)."""
    return {"subnet_id": sid, "quality": sum(outcomes) / len(outcomes), "outcomes": outcomes, "params": params,
            "eval_examples": len(outcomes),
            "latency": {pool: {"latency_ms": 10.0 / x, "speedup": x, "speedup_ci95": list(ci)}
                        for pool, (x, ci) in speedups.items()}}


def test_the_deployment_verdict_is_met_missed_or_undecided_on_paired_outcomes():
    from lonas_ray.cli import summary_table
    from lonas_ray.pipeline.figures import MET, MISSED, UNDECIDED, deployment_verdict

    rng = __import__("random").Random(0)
    base_outcomes = [1] * 60 + [0] * 40  # plain LoRA: 60 of 100 examples right
    base = {"quality": 0.6, "params": 100.0, "outcomes": base_outcomes, "eval_examples": 100,
            "latency": {"a": {"latency_ms": 10.0}, "b": {"latency_ms": 20.0}}}
    maximal = deploy_model("max", base_outcomes, 100.0, {"a": (1.0, (0.95, 1.05))})
    v = deployment_verdict(base, [maximal])
    assert v["outcome"] == MISSED and "every exported model is the uncompressed maximal" in v["text"]
    # the same examples right, clearly faster on pool b: met beyond both intervals, the fastest named
    same = deploy_model("same", base_outcomes, 80.0, {"a": (1.1, (1.05, 1.15)), "b": (1.5, (1.4, 1.6))})
    v = deployment_verdict(base, [maximal, same])
    assert v["outcome"] == MET and v["worth_deploying"] == ["same"]
    assert v["text"].startswith("Met: 1 compressed model(s)") and "same keeps 100% [100%, 100%]" in v["text"]
    assert "on the same 100 examples at 1.50x [1.40, 1.60] on b" in v["text"]
    # half the examples lost: missed beyond the interval, whatever its speed
    poor = deploy_model("poor", [1] * 30 + [0] * 70, 60.0, {"a": (2.0, (1.9, 2.1))})
    v = deployment_verdict(base, [maximal, poor])
    assert v["outcome"] == MISSED and v["text"].startswith("Missed (the goal:") and "its quality below" in v["text"]
    # 48 examples, a few flipped each way: 89 % kept with an interval across 90 %: undecided, and what decides it
    b48 = [1] * 19 + [0] * 29
    m48 = list(b48)
    for i in rng.sample(range(19), 4):
        m48[i] = 0
    for i in rng.sample(range(19, 48), 2):
        m48[i] = 1
    base48 = dict(base, quality=19 / 48, outcomes=b48, eval_examples=48)
    near = deploy_model("near", m48, 80.0, {"a": (1.23, (1.21, 1.25))})
    v = deployment_verdict(base48, [near], whole_split=False)
    assert v["outcome"] == UNDECIDED and v["models"][0]["kept_ci95"][0] < 0.9 < v["models"][0]["kept_ci95"][1]
    assert v["text"].startswith("Undecided at 48 examples") and "raise quality.final_examples" in v["text"]
    v = deployment_verdict(base48, [near], whole_split=True)
    assert "the whole test split (48 examples) cannot decide the quality" in v["text"]
    # the quality kept, the speed-up's interval across 1.2x: undecided on speed, more repeats decide it
    unsure = deploy_model("unsure", base_outcomes, 80.0, {"a": (1.22, (1.1, 1.3))})
    v = deployment_verdict(base, [unsure])
    assert v["outcome"] == UNDECIDED and "speed-up straddles" in v["text"] and "latency.repeats" in v["text"]
    assert deployment_verdict(None, [same]) is None and deployment_verdict(dict(base, quality=0.0), [same]) is None
    # without per-example outcomes (another metric) the point figures decide, said as unpaired
    loose = dict(same, outcomes=None)
    v = deployment_verdict(dict(base, outcomes=None), [loose])
    assert v["outcome"] == MET and v["models"][0]["paired"] is False and "the same" not in v["text"]
    # printed at the end of the run and in the report
    fig = _fig()
    fig["deployment"] = v
    assert v["text"] in summary_table(fig).splitlines() and f"**Compression:** {v['text']}" in report_markdown(fig)


def _timed_row(sid: str, samples: list[float], timestamp: float, runtime: str = "static") -> dict:
    return {"subnet_id": sid, "latency_runtime": runtime, "latency_ms": statistics.median(samples),
            "timestamp": timestamp, "latencies": json.dumps({runtime: {"samples_ms": samples}})}


def test_the_reference_pools_the_maximals_row_and_its_re_timings_and_reports_their_drift():
    from lonas_ray.pipeline.figures import reference_latency

    rows = {"p": {"max": _timed_row("max", [100.0, 101.0, 99.0], 1.0), "x": _timed_row("x", [50.0], 2.0)},
            "q": {"x": _timed_row("x", [50.0], 2.0)}}  # q never timed the maximal: no reference there
    refs = {"p": [{"timestamp": 3.0, "latencies": {"static": {"samples_ms": [110.0, 111.0, 109.0]}}},
                  {"timestamp": 4.0, "latencies": {"eager": {"samples_ms": [500.0]}}}]}  # another runtime: not pooled
    got = reference_latency(rows, refs, "max")
    assert set(got) == {"p"}
    ref = got["p"]
    assert ref["timings"] == 2 and ref["samples_ms"] == [100.0, 101.0, 99.0, 110.0, 111.0, 109.0]
    assert ref["latency_ms"] == pytest.approx(105.0) and ref["timing_medians_ms"] == [100.0, 110.0]
    assert ref["drift"] == pytest.approx(0.10) and ref["latency_p10_ms"] < 100.0 < ref["latency_p90_ms"]


def test_speedups_are_against_the_same_runs_reference_with_an_interval_that_says_when_it_includes_one():
    from lonas_ray.pipeline.report import speedup_text

    refs = {"p": {"runtime": "static", "samples_ms": [100.0, 102.0, 98.0, 101.0, 99.0]}}
    baseline = {"quality": 0.5, "params": 100, "latency": {"p": {"latency_ms": 130.0}}}  # timed slow, elsewhere
    fast = {"quality": 0.5, "params": 80, "latency": {"p": {"latency_ms": 80.0, "latency_runtime": "static",
                                                             "samples_ms": [80.0, 81.0, 79.0, 80.5, 79.5]}}}
    got = compare(fast, baseline, refs)["latency"]["p"]
    assert got["speedup_reference"] == "maximal" and got["speedup"] == pytest.approx(100.0 / 80.0)
    lo, hi = got["speedup_ci95"]
    assert 1.0 < lo <= got["speedup"] <= hi < 1.4
    assert speedup_text(got) == f"1.25x [{lo:.2f}, {hi:.2f}]"
    same = {"quality": 0.5, "params": 100, "latency": {"p": {"latency_ms": 100.0, "latency_runtime": "static",
                                                              "samples_ms": [99.0, 103.0, 97.0, 101.0, 100.0]}}}
    tie = compare(same, baseline, refs)["latency"]["p"]
    assert tie["speedup_ci95"][0] <= 1.0 <= tie["speedup_ci95"][1] and speedup_text(tie).endswith(", includes 1.0")
    # no timed repeats (a table from before they were kept): the baseline's latency, no interval
    old = compare({"quality": 0.5, "params": 80, "latency": {"p": {"latency_ms": 65.0}}}, baseline, refs)
    assert old["latency"]["p"]["speedup"] == 2.0 and old["latency"]["p"]["speedup_reference"] == "baseline"
    assert old["latency"]["p"]["speedup_ci95"] is None


def test_same_shape_rows_agree_within_ten_percent_or_the_report_says_they_differ():
    from lonas_ray.pipeline.figures import same_shape
    from lonas_ray.pipeline.report import reference_lines

    refs = {"p": {"subnet_id": "max", "runtime": "static", "timings": 3, "latency_ms": 560.0,
                  "latency_p10_ms": 555.0, "latency_p90_ms": 570.0, "drift": 0.02}}
    close = same_shape(refs, baseline={"latency": {"p": {"latency_ms": 572.0}}},
                       zero_shot={"latency": {"p": {"latency_ms": 549.0}}})
    assert close["p"]["agree"] and close["p"]["latency_ms"] == {"maximal": 560.0, "baseline": 572.0,
                                                                 "zero_shot": 549.0}
    far = same_shape(refs, baseline={"latency": {"p": {"latency_ms": 643.0}}}, zero_shot=None)
    assert not far["p"]["agree"] and far["p"]["spread"] == pytest.approx(643 / 560 - 1)
    text = "\n".join(reference_lines({"references": refs, "same_shape": far}))
    assert "timed 3 times in the search" in text and "**differ by 15%, more than 10%**" in text
    assert "agree within 10%" in "\n".join(reference_lines({"references": refs, "same_shape": close}))


def test_the_ranking_says_what_it_ranked_on_and_over_how_many_examples():
    from lonas_ray.pipeline.report import ranking_lines

    cand = {"subnet_id": "a", "sliced": {"objective": -0.5, "quality": 0.2, "examples": 24},
            "recovered": {"objective": -0.3, "quality": 0.3, "examples": 24}}
    text = "\n".join(ranking_lines({"objective": "task_loss", "targets": {"t": {"chosen": "a", "candidates": [cand]}}}))
    assert "Ranked on `task_loss`" in text and "over 24 examples" in text and "tie on exact matches" in text
    assert "| t | `a` | -0.5000 | 0.2000 | -0.3000 | 0.3000 | yes |" in text
    text = "\n".join(ranking_lines({"objective": "quality", "targets": {"t": {"chosen": "a", "candidates": [cand]}}}))
    assert "Ranked on `quality`" in text and "a step of 1/n" in text


def test_an_unset_merge_reservation_is_four_copies_of_the_base_models_bytes_at_its_dtype():
    from lonas_ray.model_source import ModelSource, load_model, param_bytes
    from lonas_ray.pipeline.config import ExportSpec
    from lonas_ray.pipeline.export import merge_memory

    for family in ("llama", "qwen2"):
        for dtype in ("float32", "bfloat16"):
            source = ModelSource(kind="tiny", family=family, dtype=dtype)
            model = load_model(source)[0]
            real = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once
            assert param_bytes(source) == real
    source = ModelSource(kind="tiny")
    base = param_bytes(source)
    assert merge_memory(ExportSpec(), source) == (4 * base, f"export.memory_gb unset: 4x the base model's "
                                                            f"{base / 1e9:.2f} GB = {4 * base / 1e9:.2f} GB")
    assert merge_memory(ExportSpec(with_adapter=True), source)[0] == 5 * base  # the unmerged base beside
    assert merge_memory(ExportSpec(memory_gb=10), source) == (10 * 10**9, "export.memory_gb: 10 GB")
    assert merge_memory(ExportSpec(memory_gb=0), source)[0] == 0  # asked for no reservation
    assert merge_memory(ExportSpec(), None)[0] == 0  # size unknown: nothing reserved rather than a guess
    with pytest.raises(ConfigError, match="must be >= 0"):
        ExportSpec(memory_gb=-1)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_fixed_cluster_without_memory_for_the_unset_reservation_is_refused_with_the_figure_and_the_fix():
    import ray

    from lonas_ray.model_source import ModelSource
    from lonas_ray.pipeline.config import ExportSpec
    from lonas_ray.pipeline.export import check_merges_fit

    ray.init(num_cpus=1, _memory=10**5, include_dashboard=False)  # a node that gives tasks 100 kB
    try:
        with pytest.raises(ConfigError) as err:
            check_merges_fit(ExportSpec(), ModelSource(kind="tiny"))
        assert "export.memory_gb unset: 4x the base model's" in str(err.value)
        assert "the most memory a node gives Ray's tasks is 0.0 GB" in str(err.value)
        assert "0 reserves nothing" in str(err.value)
        check_merges_fit(ExportSpec(memory_gb=0), ModelSource(kind="tiny"))  # no reservation: nothing to refuse
    finally:
        ray.shutdown()
