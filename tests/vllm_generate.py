"""Run in vLLM's own environment (jobs/make_vllm_env.sh) by tests/test_vllm_serving.py: greedy generation and
prompt log-probabilities of exported models, through vLLM's offline engine with lonas-ray's plugin.

    python tests/vllm_generate.py JOBS.json OUT.json

JOBS.json: ``[{"dir": model directory, "prompts": [[token ids], ...], "max_tokens": N, "dtype": D}, ...]``
(``dtype`` float32 unless given: vLLM's CPU INT4 kernel takes bfloat16 activations only). OUT.json: per job
and prompt, the generated ids, each one's log-probability and the log-probability of every prompt token after
the first. Token ids in and out, so models without a tokenizer (tiny test models) are served the same way.
"""

from __future__ import annotations

import json
import os
import sys


def run(job: dict) -> list[dict]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=job["dir"], dtype=job.get("dtype", "float32"), skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=128, max_num_seqs=4, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], logprobs=1, prompt_logprobs=1,
                            detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]], params)
    results = []
    for ids, out in zip(job["prompts"], outs):
        gen = out.outputs[0]
        results.append({
            "ids": list(gen.token_ids),
            "logprobs": [step[t].logprob for step, t in zip(gen.logprobs, gen.token_ids)],
            "prompt_logprobs": [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], ids[1:])],
        })
    llm.llm_engine.engine_core.shutdown()
    return results


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; these models need a few MiB
    # The engine core in this process, not in two more started per model (each importing torch and vLLM again:
    # about 14 s of a 20 s engine start on 2 cores). What is checked here is what the model computes, which the
    # process layout does not change; `vllm serve` (tests/test_vllm_serving.py) and the latency runtime keep it.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    jobs = json.loads(open(sys.argv[1]).read())
    out = [run(job) for job in jobs]
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
