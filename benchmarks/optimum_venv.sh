#!/usr/bin/env bash
# Builds the separate venv that runs optimum-intel's OVStableDiffusionInpaintPipeline as a peer in
# benchmarks/bench_cpu.py (variant optimum-intel-bf16). Idempotent: run it again and it ends in the same state.
#
#   bash benchmarks/optimum_venv.sh            # -> .venv-optimum/ at the repository root
#   OPTIMUM_VENV=/some/dir PYTHON=python3.11 bash benchmarks/optimum_venv.sh
#
# Why a venv of its own: optimum-intel 2.2.0 (the newest) requires huggingface-hub<1.22 and
# transformers<5.6, while the project's diffusers 0.42.1 requires huggingface-hub>=1.32 (pip:
# "ResolutionImpossible ... diffusers 0.42.1 depends on huggingface-hub<3.0 and >=1.32.0, optimum-intel
# 2.2.0 depends on huggingface-hub<1.22"). The newest diffusers that installs beside it is 0.39.0
# (0.40.0 already wants huggingface-hub>=1.23). With the project's versions as constraints pip instead
# falls back to optimum-intel 1.15.0, a release too old to compare against. Forcing either side past pip
# fails at import: diffusers 0.42.1 with huggingface-hub 1.21.0 ("cannot import name 'resolve_revision'
# from 'huggingface_hub'"), optimum-intel 2.2.0 with transformers 5.23.0 ("cannot import name
# 'VisionRotaryEmbedding' from 'transformers.models.qwen2_vl.modeling_qwen2_vl'").
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${OPTIMUM_VENV:-$root/.venv-optimum}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

# torch first and pinned to the project's release: left free, optimum-intel's requirements pull the newest
# torch with its CUDA packages (gigabytes). On a machine whose pip does not already find a CPU build of
# torch, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index before running this.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "torch==2.13.0" "diffusers==0.39.0" "optimum-intel==2.2.0" "optimum==2.3.0" \
    "transformers==5.5.4" "huggingface-hub==1.21.0" "openvino==2026.4.1" "openvino-tokenizers==2026.4.1.0" \
    "nncf==3.4.0" "torchvision==0.28.0"
# inpaintrt itself: the bench child imports inpaintrt.sample and inpaintrt.export.replay
"${pip[@]}" -e "$root"

# optimum-intel requires torchvision, but the registry's torchvision 0.28.0 is built against the CUDA torch
# and does not import beside a CPU-only torch ("libc10_cuda.so: cannot open shared object file", then
# "operator torchvision::nms does not exist"). A torchvision that cannot import breaks transformers'
# AutoProcessor and with it `from optimum.intel import ...`; without torchvision transformers uses its
# PIL image processors, and the Stable Diffusion pipelines do not use torchvision at all.
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
    echo "torchvision does not import beside this torch build: uninstalling it (optimum-intel runs without it)"
    "$venv/bin/python" -m pip uninstall --quiet --yes torchvision
fi

"$venv/bin/python" -c "from optimum.intel import OVStableDiffusionInpaintPipeline" 2>/dev/null \
    || { echo "optimum-intel does not import in $venv" >&2; exit 1; }
echo "optimum-intel venv ready: $venv/bin/python"
"$venv/bin/python" -m pip list 2>/dev/null \
    | grep -iE "^(torch|torchvision|diffusers|optimum|optimum-intel|transformers|huggingface.hub|openvino|openvino-tokenizers|nncf|numpy|inpaintrt) "
echo "use it: python benchmarks/bench_cpu.py --optimum-python $venv/bin/python (the default when it is $root/.venv-optimum)"
