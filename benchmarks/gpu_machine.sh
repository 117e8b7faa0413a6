#!/usr/bin/env bash
# What ran on the lent GPU machine (README, "GPU"): its image has torch (CUDA 13), cupy-cuda13x and the
# CPU onnxruntime; onnxruntime-gpu, diffusers and clip-anytorch travel as wheels (../shared/tools/device-wheels
# onnxruntime-gpu==1.31.1 diffusers==0.42.1, plus importlib_metadata and clip-anytorch) into /tmp/devw.
#
#   bash benchmarks/gpu_machine.sh install          # the carried wheels into /tmp/site
#   bash benchmarks/gpu_machine.sh test             # the gpu-marked tests and the array-module tests
#   bash benchmarks/gpu_machine.sh bench [ARGS]     # benchmarks/bench_gpu.py ARGS
#
# onnxruntime-gpu finds CUDA 13 and cuDNN 9 through LD_LIBRARY_PATH: here, the NVIDIA pip packages that
# came with torch (the runtime itself never imports torch).
set -euo pipefail
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: || true)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
case "${1:-}" in
  install) bash /tmp/devw/devw-install.sh ;;
  test) python3 -m pytest -q -p no:cacheprovider -rs tests/test_ort_cuda.py tests/test_array_module.py ;;
  bench) shift; python3 benchmarks/bench_gpu.py "$@" ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
