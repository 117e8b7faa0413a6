#!/usr/bin/env bash
# What runs on the lent GPU machine (docs/backends-and-precision.md, "GPU"): its image has torch (CUDA 13), cupy-cuda13x and the
# CPU onnxruntime; onnxruntime-gpu, diffusers and clip-anytorch travel as wheels (../shared/tools/device-wheels
# onnxruntime-gpu==1.31.1 diffusers==0.42.1, plus importlib_metadata and clip-anytorch) into /tmp/devw.
#
#   bash benchmarks/gpu_machine.sh install          # the carried wheels into /tmp/site
#   bash benchmarks/gpu_machine.sh test             # the gpu-marked tests and the array-module tests
#   bash benchmarks/gpu_machine.sh bench [ARGS]     # benchmarks/bench_gpu.py ARGS
#   bash benchmarks/gpu_machine.sh sweep [OUTDIR]   # tests, then the provider-option, size and batch sweeps
#   bash benchmarks/gpu_machine.sh profile [ARGS]   # benchmarks/profile_gpu.py ARGS (kernels of one UNet call)
#   bash benchmarks/gpu_machine.sh sdxl [OUTDIR]    # build + export the full-size SDXL model, bench it at 1024
#
# sweep and sdxl stop starting new runs once SWEEP_BUDGET_S seconds (default 420) have passed, so one
# call ends inside the device tool's limits with every finished workload in the day's JSON, which they
# copy to OUTDIR (default $OUT) with the summary table. onnxruntime-gpu finds CUDA 13 and cuDNN 9
# through LD_LIBRARY_PATH: here, the NVIDIA pip packages that came with torch (the runtime itself never
# imports torch).
set -euo pipefail
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: || true)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
budget=${SWEEP_BUDGET_S:-420}
steps=${SWEEP_STEPS:-10}  # a sweep compares per-call costs: few steps, two reps

# run a bench only while the budget allows one more (each run reloads the engine: ~30-60 s)
bench() {
  if (( SECONDS + ${COST:-60} > budget )); then echo "skipped (budget): bench_gpu.py $*"; return 0; fi
  python3 benchmarks/bench_gpu.py --no-accuracy --reps 2 --steps "$steps" "$@" || echo "FAILED: bench_gpu.py $*"
}

finish() {  # the day's results and their sweep table, where the device tool brings files back
  local dest=${1:-${OUT:-bench-out}} day; day=$(ls -t benchmarks/results/gpu-*.json 2>/dev/null | head -1)
  mkdir -p "$dest"
  if [[ -n "$day" ]]; then cp "$day" "$dest/"; python3 benchmarks/gpu_report.py "$day" | tee "$dest/sweep.md"; fi
  echo "elapsed ${SECONDS} s"
}

case "${1:-}" in
  install) bash /tmp/devw/devw-install.sh ;;
  test) python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_ort_cuda.py tests/runtime/test_array_module.py \
          tests/gpu/test_cuda_options.py ;;
  bench) shift; python3 benchmarks/bench_gpu.py "$@" ;;
  profile) shift; python3 benchmarks/profile_gpu.py "$@" ;;
  sweep)
    python3 -m pytest -q -p no:cacheprovider -rs -m gpu tests/gpu/test_ort_cuda.py tests/gpu/test_cuda_options.py || true
    engine=bench-out/sd15-engine-fp16
    # the first bench builds and exports the full-size model (minutes): it runs whatever the budget says
    COST=0 python3 benchmarks/bench_gpu.py --no-accuracy --reps 2 --steps "$steps" --pixels 1024 \
      --variants ort-cuda-graph,diffusers-fp16
    for pixels in 1024 512; do
      [[ $pixels == 512 ]] && bench --pixels 512 --variants ort-cuda-graph,diffusers-fp16
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option prefer_nhwc=1 --label nhwc
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option cudnn_conv_algo_search=HEURISTIC \
        --label heuristic
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option cudnn_conv_algo_search=DEFAULT \
        --label default-algo
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option cudnn_conv_use_max_workspace=0 \
        --label small-workspace
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option fuse_conv_bias=1 --label conv-bias
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option cudnn_conv1d_pad_to_nc1d=1 \
        --label pad-nc1d
      bench --engine $engine --pixels $pixels --variants ort-cuda-graph --cuda-option arena_extend_strategy=kNextPowerOfTwo \
        --label pow2-arena
    done
    for batch in 2 4 8; do
      for pixels in 512 1024; do bench --engine $engine --pixels $pixels --batch $batch --variants ort-cuda-graph; done
    done
    # the export-time NhwcConv fusion off: a second export of the same model (minutes), then 1024² again
    if (( SECONDS + 300 < budget )); then
      python3 -c "import sys; from inpaintrt.cli import export_main; sys.exit(export_main(sys.argv[1:]))" \
        --model bench-out/sd15-model --output bench-out/sd15-engine-fp16-no-nhwc --fp16 --cuda-fusion-off nhwc_conv \
        && bench --engine bench-out/sd15-engine-fp16-no-nhwc --pixels 1024 --variants ort-cuda-graph --label no-nhwc-fusion
    fi
    if (( SECONDS + 60 < budget )) && [[ -d $engine ]]; then
      python3 benchmarks/profile_gpu.py --engine $engine --pixels 1024 --json "${2:-${OUT:-bench-out}}/profile-1024.json" \
        || echo "FAILED: profile_gpu.py"
    fi
    finish "${2:-}" ;;
  sdxl)
    # the full-size SDXL model (2.6 B-parameter UNet) is built and exported here: its fp16 engine is
    # gigabytes, far past what a call can carry; the build and export times are printed. 30 steps,
    # guidance 7.5, its Euler scheduler, with the accuracy run (PSNR vs diffusers fp32 on this GPU)
    python3 benchmarks/bench_gpu.py --family sdxl --reps 2 --variants ort-cuda-graph,diffusers-fp16
    bench --family sdxl --engine bench-out/sdxl-engine-fp16 --batch 2 --variants ort-cuda-graph
    df -h bench-out | tail -1; du -sh bench-out/* 2>/dev/null || true
    finish "${2:-}" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
