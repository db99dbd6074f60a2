#!/usr/bin/env bash
# jobs/bench_robust.py (tasks x seeds of jobs/bench_quality.py, pooled) on one GPU of this workplace's device
# machines. A sweep outlasts one call: each call runs the cells that fit in LIMIT seconds and brings the sweep
# folder back as $OUT/sweep/; copy that into the working tree at SWEEP (it travels with the tree, being untracked
# and not ignored) and make the same call again to go on. First the calls that bring what the image lacks
# (jobs/gpu_stage.sh: .whl/, then each SmolLM2 part, with STAGE_ONLY=1). A new sweep:
#   SWEEP=jobs/results/robust_gpu_h100 TASKS=a,b,c,d,e SEEDS=0,1,2 ARGS="--parts ... --teacher peft_lora" \
#     bash jobs/gpu_robust.sh
# and later `SWEEP=jobs/results/robust_gpu_h100 bash jobs/gpu_robust.sh` (its sweep.json holds the rest); TASKS or
# SEEDS alone, without ARGS, add tasks or seeds to a recorded sweep (its cell arguments stay).
set -uo pipefail
. jobs/gpu_stage.sh
[ -n "${STAGE_ONLY:-}" ] && exit 0   # a call that only brings a part
sweep=${SWEEP:?set SWEEP to the sweep folder in the working tree, e.g. jobs/results/robust_gpu_h100}
work=/tmp/lonas-sweep
rm -rf "$work" && mkdir -p "$work"
[ -d "$sweep" ] && cp -r "$sweep/." "$work/"
new=()
[ -n "${TASKS:-}" ] && new+=(--tasks "$TASKS")
[ -n "${SEEDS:-}" ] && new+=(--seeds "$SEEDS")
[ -n "${ARGS:-}" ] && new+=(-- --device cuda $ARGS)
python3 jobs/bench_robust.py --dir "$work" --time-limit "${LIMIT:-480}" "${new[@]}" 2>&1 \
  | grep -v "it/s]\|s/it]\|examples/s]" > "$OUT/robust.log"
rc=${PIPESTATUS[0]}
cp -r "$work" "$OUT/sweep"
tail -30 "$OUT/robust.log"
echo "exit $rc"
exit "$rc"
