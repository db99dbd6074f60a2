"""The catalogue of bad input lonas-ray must refuse before any cluster work: the cases, and the docs table of them.

Each case builds its inputs in a directory of its own and names the ``lonas-ray`` command line to run there;
``tests/test_bad_input.py`` runs them all in one interpreter and checks exit 2, the message, no traceback, and
that nothing in the case's directory was written or changed. ``python tests/bad_inputs.py`` renders
``docs/bad_input.md`` from the same list (a test fails when the committed file differs).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "jobs" / "configs" / "tiny.yaml"
SEARCH_TINY = ROOT / "jobs" / "configs" / "search_tiny.yaml"
DOC = ROOT / "docs" / "bad_input.md"


@dataclass(frozen=True)
class Case:
    category: str
    what: str
    setup: Callable[[Path], list[str]]  # builds the inputs under the directory; returns the lonas-ray argv
    message: str  # what stderr must contain


def config(d: Path, base: Path = TINY, change: Callable[[dict], object] = lambda r: None, text: str | None = None,
           name: str = "config.yaml") -> Path:
    """A config file in ``d``: ``base`` changed by ``change``, or ``text`` as it is."""
    path = d / name
    if text is None:
        raw = yaml.safe_load(base.read_text())
        change(raw)
        text = yaml.safe_dump(raw)
    path.write_text(text)
    return path


def run(d: Path, **kw) -> list[str]:
    return ["run", "--config", str(config(d, **kw)), "--output", str(d / "out")]


def search(d: Path, **kw) -> list[str]:
    return ["search", "--config", str(config(d, base=SEARCH_TINY, **kw)), "--output", str(d / "out")]


def data_file(d: Path, text: str, name: str = "data.jsonl") -> str:
    (d / name).write_text(text)
    return str(d / name)


def with_data(key: str, text: str, name: str = "data.jsonl"):
    def setup(d: Path) -> list[str]:
        path = data_file(d, text, name)
        return run(d, change=lambda r: r["data"].update({key: path}))
    return setup


def model_dir(d: Path, config_json: dict | None, weights: bytes | None = None) -> str:
    m = d / "model"
    m.mkdir()
    if config_json is not None:
        (m / "config.json").write_text(json.dumps(config_json))
    if weights is not None:
        (m / "model.safetensors").write_bytes(weights)
    return str(m)


def with_gguf(content: bytes):
    def setup(d: Path) -> list[str]:
        (d / "qwen.gguf").write_bytes(content)
        return run(d, change=lambda r: r["supernet"].update(model={"kind": "gguf", "path": str(d / "qwen.gguf")}))
    return setup


def with_model(config_json: dict | None, weights: bytes | None = None):
    def setup(d: Path) -> list[str]:
        path = model_dir(d, config_json, weights)
        return run(d, change=lambda r: r["supernet"].update(model={"kind": "local", "path": path}))
    return setup


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256,
         "max_position_embeddings": 128}
T5 = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "d_model": 64, "num_heads": 4,
      "num_layers": 2, "d_ff": 128, "vocab_size": 256}
# a safetensors header that promises 4 KiB of float32 and a file that stops after 16 bytes of it
_HEADER = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [16, 64],
                                                   "data_offsets": [0, 4096]}}).encode()
TRUNCATED = struct.pack("<Q", len(_HEADER)) + _HEADER + b"\0" * 16
MC = {"input": "q?", "target_scores": {"a": 1, "b": 0}}


def existing_output(d: Path, files: dict[str, str]) -> list[str]:
    out = d / "out"
    out.mkdir()
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return ["search", "--config", str(config(d, base=SEARCH_TINY)), "--output", str(out)]


CFG, MODEL, DATA, STATE, OUTPUT = "config", "model source", "data", "checkpoints and results", "output"
TYPES, DUPLICATES, URIS, PREFLIGHT = ("a value of the wrong type (every field, from its annotation)",
                                      "a key given twice in one YAML mapping", "a malformed storage URI",
                                      "what later stages need, checked before the first")


def typed(section: str, key: str, value) -> Callable[[Path], list[str]]:
    """A run whose config sets ``key`` of dotted ``section`` to ``value``."""
    def setup(d: Path) -> list[str]:
        def change(raw: dict) -> None:
            node = raw
            for part in section.split("."):
                node = node.setdefault(part, {})
            node[key] = value
        return run(d, change=change)
    return setup


# (what, (section, key), value, what the error says): a few per config section
WRONG_TYPES = [
    ("train.optim.steps as a quoted number", ("train.optim", "steps"), "40",
     "config.yaml: train.optim.steps: expected an integer, got str '40'; write it without quotes"),
    ("train.optim.lr written 1e-4 (a string to YAML)", ("train.optim", "lr"), "1e-4",
     "config.yaml: train.optim.lr: expected a number, got str '1e-4'; YAML reads 1e-4 as a string: write 1.0e-4"),
    ("train.optim.batch_size null", ("train.optim", "batch_size"), None,
     "config.yaml: train.optim.batch_size: expected an integer, got null; give a value, or remove the key"),
    ("train.scaling.num_workers a fraction", ("train.scaling", "num_workers"), 1.5,
     "config.yaml: train.scaling.num_workers: expected an integer, got float 1.5; write a whole number, such as 1"),
    ("train.scaling.resources_per_worker with a word", ("train.scaling", "resources_per_worker"), {"CPU": "one"},
     "config.yaml: train.scaling.resources_per_worker.CPU: expected a number, got str 'one'; write a number"),
    ("pools.cpu_a.cpus a word", ("pools.cpu_a", "cpus"), "one",
     "config.yaml: pools.cpu_a.cpus: expected a number, got str 'one'"),
    ("pools.cpu_a.latency.runtimes one string, not a list", ("pools.cpu_a.latency", "runtimes"), "static",
     "config.yaml: pools.cpu_a.latency.runtimes: expected a list of strings, got str 'static'"),
    ("pools.cpu_a.evaluators true", ("pools.cpu_a", "evaluators"), True,
     "config.yaml: pools.cpu_a.evaluators: expected an integer, got bool True; write an integer, not true or false"),
    ("search.budget a fraction", ("search", "budget"), 6.5,
     "config.yaml: search.budget: expected an integer, got float 6.5"),
    ("search.cross_evaluate yes as a string", ("search", "cross_evaluate"), "yes",
     "config.yaml: search.cross_evaluate: expected true or false, got str 'yes'"),
    ("search.pools a name, not a list", ("search", "pools"), "cpu_a",
     "config.yaml: search.pools: expected a list of strings, got str 'cpu_a'"),
    ("quality.examples a word", ("quality", "examples"), "all",
     "config.yaml: quality.examples: expected an integer or null, got str 'all'"),
    ("quality.batch_size null", ("quality", "batch_size"), None,
     "config.yaml: quality.batch_size: expected an integer, got null"),
    ("quality.seed a list", ("quality", "seed"), [0],
     "config.yaml: quality.seed: expected an integer, got list [0]"),
    ("data.cutoff_len true", ("data", "cutoff_len"), True,
     "config.yaml: data.cutoff_len: expected an integer, got bool True"),
    ("data.train a list of files", ("data", "train"), ["a.jsonl", "b.jsonl"],
     "config.yaml: data.train: expected a string, got list"),
    ("data.max_examples a quoted number", ("data", "max_examples"), "100",
     "config.yaml: data.max_examples: expected an integer or null, got str '100'; write it without quotes"),
    ("supernet.space.lora.rank_choices one string", ("supernet.space.lora", "rank_choices"), "8,4",
     "config.yaml: supernet.space.lora.rank_choices: expected a list of integers, got str '8,4'"),
    ("supernet.space.lora.rank_choices with a word in it", ("supernet.space.lora", "rank_choices"), [8, "four"],
     "config.yaml: supernet.space.lora.rank_choices[1]: expected an integer, got str 'four'"),
    ("supernet.importance.examples null", ("supernet.importance", "examples"), None,
     "config.yaml: supernet.importance.examples: expected an integer, got null"),
    ("export.latency_targets one number, not a list", ("export", "latency_targets"), 0.85,
     "config.yaml: export.latency_targets: expected a list of numbers, got float 0.85"),
    ("export.recover_steps a quoted number", ("export", "recover_steps"), "3",
     "config.yaml: export.recover_steps: expected an integer, got str '3'"),
    ("export.lm_eval 1", ("export", "lm_eval"), 1, "config.yaml: export.lm_eval: expected true or false, got int 1"),
    ("baseline.enabled a word", ("baseline", "enabled"), "yes",
     "config.yaml: baseline.enabled: expected true or false, got str 'yes'"),
    ("baseline.steps a fraction", ("baseline", "steps"), 2.5,
     "config.yaml: baseline.steps: expected an integer or null, got float 2.5"),
    ("baseline.steps a list", ("baseline", "steps"), [10, 20],
     "config.yaml: baseline.steps: expected an integer or null, got list [10, 20]"),
    ("zero_shot.enabled null", ("zero_shot", "enabled"), None,
     "config.yaml: zero_shot.enabled: expected true or false, got null"),
]

_TINY_TEXT = TINY.read_text()
DUPLICATED = [
    ("a top-level section twice (search)", _TINY_TEXT + "search: {strategy: random, budget: 3}\n",
     "key 'search' is given twice in one mapping, on lines"),
    ("a key twice inside a section (train.optim.steps)", _TINY_TEXT.replace(
        "optim: {steps: 6,", "optim: {steps: 6, steps: 60,"), "key 'steps' is given twice in one mapping, on lines"),
    ("a pool twice", _TINY_TEXT.replace("  cpu_b:", "  cpu_a:\n    evaluators: 1\n  cpu_b:", 1),
     "key 'cpu_a' is given twice in one mapping, on lines"),
]

BAD_URIS = [
    ("s3://", "output 's3://' names no bucket; give the bucket and a path in it, e.g. s3://BUCKET/lonas-ray/run1"),
    ("s3:///run1", "output 's3:///run1' names no bucket"),
    ("s3://bucket", "output 's3://bucket' names no path inside the bucket 'bucket'; give one for this run"),
    ("gs://bucket/", "output 'gs://bucket/' names no path inside the bucket 'bucket'"),
    ("s3://bucket/run?endpoint_override=localhost:9000",
     "carries options after '?' (or a '#' fragment): give the plain URI s3://bucket/run"),
    ("ftp://host/run", "output 'ftp://host/run': unknown storage scheme 'ftp://'"),
]
CASES = [
    Case(CFG, "YAML syntax error", lambda d: run(d, text="supernet: {model: [tiny\n"), "not valid YAML"),
    Case(CFG, "a config that is a list, not a mapping", lambda d: run(d, text="- 1\n- 2\n"),
         "the top level must be a mapping, got list"),
    Case(CFG, "an empty config file", lambda d: run(d, text=""), "missing required key(s) supernet, data, pools"),
    Case(CFG, "a misspelt top-level key", lambda d: run(d, change=lambda r: r.update(serach=r.pop("search"))),
         "unknown key(s) 'serach' (did you mean 'search'?)"),
    Case(CFG, "a wrong type (budget: ten)", lambda d: run(d, change=lambda r: r["search"].update(budget="ten")),
         "config.yaml: search.budget: expected an integer, got str 'ten'; write an integer"),
    Case(CFG, "an out-of-range value (budget: 0)", lambda d: run(d, change=lambda r: r["search"].update(budget=0)),
         "search.budget must be an integer >= 1 (evaluations per pool), got 0"),
    Case(CFG, "negative GPUs for a pool", lambda d: run(d, change=lambda r: r["pools"]["cpu_a"].update(gpus=-1)),
         "pool cpus, gpus and wait_for_nodes_s must be >= 0"),
    Case(CFG, "zero latency repeats",
         lambda d: run(d, change=lambda r: r["pools"]["cpu_a"]["latency"].update(repeats=0)),
         "latency.repeats must be an integer >= 1, got 0"),
    Case(CFG, "an impossible sub-network (3 of 4 heads breaks GQA)",
         lambda d: run(d, change=lambda r: r["supernet"]["space"]["heads"].update(choices=[3])),
         "heads choice 3 for layer 0 breaks GQA"),
    Case(CFG, "a search that names a pool the config lacks",
         lambda d: run(d, change=lambda r: r["search"].update(pools=["cpu_a", "gpu_x"])),
         "search.pools: unknown pool 'gpu_x' (did you mean 'cpu_b'?)"),
    Case(CFG, "a pool that no node offers (a GPU pool on the embedded Ray)",
         lambda d: search(d, change=lambda r: r["pools"]["local"].update(gpus=1)),
         "pool 'local': no live node can run an evaluator"),
    Case(CFG, "a missing config file", lambda d: ["run", "--config", str(d / "nope.yaml"), "--output", str(d / "out")],
         "config file not found"),
    Case(MODEL, "a model directory without config.json", with_model(None), "has no config.json"),
    Case(MODEL, "a model that is not a causal LM (T5)", with_model(T5),
         "holds a 't5' model, which is not a causal (decoder) LM"),
    Case(MODEL, "a model with its weights missing", with_model(LLAMA), "has no *.safetensors weights"),
    Case(MODEL, "a truncated model.safetensors", with_model(LLAMA, TRUNCATED),
         "model.safetensors is not a whole safetensors file"),
    Case(MODEL, "a model.safetensors that is not one", with_model(LLAMA, b"not a safetensors file"),
         "model.safetensors is not a whole safetensors file"),
    Case(MODEL, "an unknown model kind", lambda d: run(d, change=lambda r: r["supernet"].update(model={"kind": "hub"})),
         "model source kind 'hub' is unknown: use one of tiny, smollm2, local, gguf"),
    Case(MODEL, "a GGUF model file that does not exist", lambda d: run(d, change=lambda r: r["supernet"].update(
        model={"kind": "gguf", "path": str(d / "qwen.gguf")})), "is not a file: point it at a .gguf model file"),
    Case(MODEL, "a GGUF model that is a split part not yet joined", with_gguf(b"\x00\x17 the middle of a model"),
         "is not a GGUF file (it starts with b'\\x00\\x17 t', not b'GGUF'): it may be truncated, a split part"),
    Case(MODEL, "a GGUF model path that is not a .gguf file", lambda d: run(d, change=lambda r: r["supernet"].update(
        model={"kind": "gguf", "path": str(d / "model.safetensors")})), "model source kind 'gguf' needs path: a .gguf"),
    Case(DATA, "a train file that does not exist",
         lambda d: run(d, change=lambda r: r["data"].update(train=str(d / "missing.jsonl"))),
         "data.train file not found"),
    Case(DATA, "an empty train file", with_data("train", ""), "the file holds no records"),
    Case(DATA, "a JSONL line that is not JSON", with_data("train", json.dumps(MC) + "\n{not json\n"),
         "line 2 is not valid JSON"),
    Case(DATA, "a data file of an unsupported type", with_data("train", "question,answer\n", "data.csv"),
         "has an unsupported type; use one of .json, .jsonl, .parquet"),
    Case(DATA, "a record missing a field (no target_scores)", with_data("train", json.dumps({"input": "q?"}) + "\n"),
         "record 0 (counting from 0) has no 'target_scores' field"),
    Case(DATA, "an eval record that marks no choice correct",
         with_data("eval", json.dumps({**MC, "target_scores": {"a": 0, "b": 0}}) + "\n"),
         "'target_scores' marks no choice correct"),
    Case(DATA, "an eval record whose scores are not a mapping",
         with_data("eval", json.dumps({**MC, "target_scores": "a"}) + "\n"),
         "'target_scores' must map each choice to a score"),
    Case(DATA, "an unknown shipped task", lambda d: run(d, change=lambda r: r["data"].update(train="shipped:nope")),
         "'shipped:nope' is not a shipped task"),
    Case(STATE, "a corrupt results.parquet in the output directory",
         lambda d: existing_output(d, {"results.parquet": "not parquet"}), "not a readable Parquet results file"),
    Case(STATE, "a results.parquet of another search space", lambda d: other_space_results(d),
         "is not from this search space"),
    Case(STATE, "a supernet_dir that holds no super-network",
         lambda d: ["search", "--config", str(config(d, base=SEARCH_TINY, change=lambda r: (
             r.pop("supernet"), r.update(supernet_dir=str(d))))), "--output", str(d / "out")],
         "is not a lonas-ray super-network directory"),
    Case(STATE, "a corrupt stages.json of an earlier run",
         lambda d: ["run", "--config", str(config(d)), "--output", str(_with(d / "out", "stages.json", "{oops"))],
         "stages.json is not valid JSON"),
    Case(OUTPUT, "an output directory of a run with another config",
         lambda d: ["run", "--config", str(config(d)), "--output", str(_with(d / "out", "stages.json", json.dumps(
             {"train": {"fingerprint": "f0", "finished": 1}})))],
         "stage 'train' finished in"),
    Case(OUTPUT, "an output path that is a file",
         lambda d: ["run", "--config", str(config(d)), "--output", str(_file(d / "out"))],
         "is a file, not a directory: give a directory"),
    Case(OUTPUT, "an output directory that cannot be created (its parent is a file)",
         lambda d: ["run", "--config", str(config(d)), "--output", str(_file(d / "parent") / "out")],
         "cannot be created:"),
    Case(OUTPUT, "an output URI of an unknown scheme",
         lambda d: ["run", "--config", str(config(d)), "--output", "nosuch://bucket/run"],
         "output 'nosuch://bucket/run': unknown storage scheme 'nosuch://'; use one of s3://"),
    *[Case(TYPES, what, typed(*where, value), message) for what, where, value, message in WRONG_TYPES],
    *[Case(DUPLICATES, what, lambda d, text=text: run(d, text=text), message) for what, text, message in DUPLICATED],
    *[Case(URIS, f"--output {uri}", lambda d, uri=uri: ["run", "--config", str(config(d)), "--output", uri], message)
      for uri, message in BAD_URIS],
    Case(PREFLIGHT, "a pool timed by vLLM whose vllm_python does not exist (refused before training)",
         lambda d: run(d, change=lambda r: r["pools"]["cpu_a"]["latency"].update(
             runtimes=["vllm"], vllm_python=str(d / "no-such-env" / "bin" / "python"))),
         "pool cpu_a: latency runtime vllm needs vLLM's environment"),
    Case(PREFLIGHT, "a pool timed by vLLM whose vllm_python cannot import vLLM (refused before training)",
         lambda d: run(d, change=lambda r: r["pools"]["cpu_b"]["latency"].update(
             runtimes=["vllm"], vllm_python="/bin/false")),
         "pool cpu_b: /bin/false cannot import vllm and lonas-ray's plugin"),
    Case(PREFLIGHT, "a GPU pool on a machine without one (refused before training)",
         lambda d: run(d, change=lambda r: r["pools"]["cpu_b"].update(gpus=1)),
         "pool 'cpu_b': no live node can run an evaluator"),
    Case(PREFLIGHT, "training on GPUs on a machine without one (refused before training)",
         lambda d: run(d, change=lambda r: r["train"]["scaling"].update(use_gpu=True)),
         "use_gpu: true, and this cluster has no GPU"),
    Case(PREFLIGHT, "training workers that ask for more CPUs than the machine has (refused before training)",
         lambda d: run(d, change=lambda r: r["train"]["scaling"].update(resources_per_worker={"CPU": 64})),
         "train.scaling: 2 training worker(s) of 64 CPU each do not fit this cluster, which has room for 0"),
    Case(PREFLIGHT, "merge tasks that reserve more memory than any node offers (refused before training)",
         lambda d: run(d, change=lambda r: r["export"].update(memory_gb=1000)),
         "export.memory_gb: 1000 GB for one merge task (with 1 CPU, 0 GPU), but no node of this cluster offers it"),
    Case(CFG, "a negative merge memory reservation",
         lambda d: run(d, change=lambda r: r["export"].update(memory_gb=-1)), "export.memory_gb must be >= 0"),
    Case(PREFLIGHT, "jobs/configs/gpu.yaml on a machine without a GPU", lambda d: [
        "run", "--config", str(ROOT / "jobs" / "configs" / "gpu.yaml"), "--output", str(d / "out")],
         "pool 'interactive': no live node can run an evaluator"),
    Case(PREFLIGHT, "jobs/configs/gpu_7b_shape.yaml on a machine without a GPU", lambda d: [
        "run", "--config", str(ROOT / "jobs" / "configs" / "gpu_7b_shape.yaml"), "--output", str(d / "out")],
         "pool 'gpu': no live node can run an evaluator"),
    Case(PREFLIGHT, "the search stage's own vLLM pool without vLLM", lambda d: search(d, change=lambda r: r["pools"][
        "local"]["latency"].update(runtimes=["vllm"], vllm_python=str(d / "none"))),
         "pool local: latency runtime vllm needs vLLM's environment"),
]


def _with(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory


def _file(path: Path) -> Path:
    path.write_text("a file, not a directory")
    return path


def other_space_results(d: Path) -> list[str]:
    """An output directory whose results.parquet was written by a search of another space (other dimensions)."""
    from lonas_ray.search.results import SCHEMA, append_results

    argv = existing_output(d, {})
    row = {name: None for name in SCHEMA.names}
    row.update(subnet_id="0123456789ab", config=json.dumps({"rank.0.q_proj": 16}), pool="local", phase="search",
               quality_metric="mc_accuracy", quality=0.5, timestamp=0.0)
    append_results(d / "out" / "results.parquet", [row])
    return argv


def render() -> str:
    """docs/bad_input.md: every case, by kind, with what the error says (the part the tests require)."""
    lines = ["# Bad input: what lonas-ray refuses, and what it says", "",
             "Each row is a case of `tests/bad_inputs.py`, run by `tests/test_bad_input.py` (all in one interpreter) "
             "through `lonas-ray` itself:", "every one exits with status 2 before any cluster work, prints no "
             "traceback, and leaves its directory as it was (nothing written, nothing overwritten). The message "
             "column is the part of the error the test requires; the whole error also says how to fix it.",
             "Rendered by `python tests/bad_inputs.py`; a test fails when this file differs from a fresh render.", ""]
    n = 0
    for category in dict.fromkeys(c.category for c in CASES):
        lines += [f"## {category[0].upper()}{category[1:]}", "", "| # | input | the error says |", "|---|---|---|"]
        for case in (c for c in CASES if c.category == category):
            n += 1
            message = case.message.replace("|", "\\|")
            lines.append(f"| {n} | {case.what} | `{message}` |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC} ({len(CASES)} cases)")
