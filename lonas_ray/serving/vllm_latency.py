"""Request latency of exported models served by vLLM's offline engine; run in vLLM's own environment.

    DIR/bin/python -m lonas_ray.serving.vllm_latency REQUEST.json OUT.json

REQUEST.json: ``{"models": [dirs], "batch_size", "prompt_len", "new_tokens", "warmup", "repeats", "dtype"}``.
Each repeat submits ``batch_size`` requests of ``prompt_len`` random token ids together and waits for all of them
to decode exactly ``new_tokens`` greedy tokens (``ignore_eos``), as a served batch would; OUT.json holds, per
model, every repeat's wall time, the median and p90 in milliseconds and decode tokens per second. vLLM runs in a
separate environment (``jobs/make_vllm_env.sh``) because its CPU build pins an older transformers than
lonas-ray's, so this module imports nothing of lonas-ray beyond what the plugin needs.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time


def time_model(model_dir: str, req: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=model_dir, dtype=req.get("dtype", "float32"), skip_tokenizer_init=True, disable_log_stats=False,
              max_model_len=req["prompt_len"] + req["new_tokens"] + 8, max_num_seqs=max(1, req["batch_size"]),
              seed=0)
    load_s = time.perf_counter() - t0
    vocab = llm.llm_engine.model_config.get_vocab_size()
    rng = random.Random(0)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(vocab) for _ in range(req["prompt_len"])])
               for _ in range(req["batch_size"])]
    params = SamplingParams(temperature=0.0, max_tokens=req["new_tokens"], min_tokens=req["new_tokens"],
                            ignore_eos=True, detokenize=False)
    times, prefills, decodes = [], [], []
    for r in range(req["warmup"] + req["repeats"]):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == req["new_tokens"] for o in outs)
        if r >= req["warmup"]:
            times.append(elapsed * 1e3)
            split = [_split(o.metrics, req["new_tokens"]) for o in outs]
            if all(split):
                prefills.append(statistics.mean(s[0] for s in split))
                decodes.append(statistics.mean(s[1] for s in split))
    llm.llm_engine.engine_core.shutdown()
    median = statistics.median(times)
    return {"model": model_dir, "latency_ms": median, "latency_p90_ms": p90(times), "repeats_ms": times,
            "prefill_ms": statistics.median(prefills) if prefills else None,
            "prefill_p90_ms": p90(prefills) if prefills else None,
            "decode_ms": statistics.median(decodes) if decodes else None,
            "decode_p90_ms": p90(decodes) if decodes else None,
            "decode_tokens_per_s": req["batch_size"] * req["new_tokens"] / (median / 1e3), "load_s": load_s}


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def _split(metrics, new_tokens: int) -> tuple[float, float] | None:
    """(prefill ms: scheduled to first token, decode ms per later token) from vLLM's per-request timestamps."""
    if metrics is None or not getattr(metrics, "first_token_ts", 0) or not getattr(metrics, "scheduled_ts", 0):
        return None
    prefill = (metrics.first_token_ts - metrics.scheduled_ts) * 1e3
    decode = (metrics.last_token_ts - metrics.first_token_ts) * 1e3 / max(new_tokens - 1, 1)
    return prefill, decode


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    req = json.loads(open(sys.argv[1]).read())
    out = [time_model(d, req) for d in req["models"]]
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
