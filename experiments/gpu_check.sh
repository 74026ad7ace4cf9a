#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (CI has none; run them where one is at hand):
#   bash experiments/gpu_check.sh [OUTPUT_DIR]        (default runs/gpu; STEPS="tests perf" runs only those)
# 0. what cuDNN's attention hands back (experiments/cudnn_lse_probe.py: the lse's layout, against q·Kᵀ's and sdpa's output),
#    and one grouped-query layer call with and without the capture in bf16 (experiments/capture_call_cost.py);
# 1. tests/test_cuda.py: the capture's fused-kernel lse, the logit readout on the device, streaming and a
#    whole evaluate run on CUDA against eager attention / the host / the CPU; the bf16 capture test on CUDA;
# 2. where streaming's overhead goes on the GPU (experiments/overhead_split.py), the explicit lse included, in float32
#    and in bf16 (where sdpa picks cuDNN on Hopper);
# 3. `vattr-bench perf` and 4. experiments/perf_scaling.py with the models on the GPU.
# Each step writes OUTPUT_DIR/<step>.log under its own time limit, so a slow step keeps the others' results.
set -u
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    >>"$out/gpu.txt" 2>&1

step() {  # name, seconds allowed, command…
    local name=$1 limit=$2
    shift 2
    [[ " ${STEPS:-lse_probe gqa_call tests overhead overhead_bf16 perf scaling} " == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v '%|' >"$out/$name.log"
    echo "$name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s — $(tail -n 1 "$out/$name.log")"
}

step lse_probe 60 python3 experiments/cudnn_lse_probe.py
step gqa_call 60 python3 experiments/capture_call_cost.py --device cuda --keys 1024,4096,16384
step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_hf_adapter.py::test_capture_in_bfloat16_runs_sdpas_own_kernel"
step overhead 90 python3 experiments/overhead_split.py --device cuda --rounds 3 --per-family 2
step overhead_bf16 100 python3 experiments/overhead_split.py --device cuda --dtype bfloat16 --rounds 3 --per-family 1
step perf 150 python3 -m vattr_bench.cli perf --model vattr-tiny --device cuda --per-family 2 --rounds 3 \
    --output "$out/perf.json"
step scaling 220 python3 experiments/perf_scaling.py --device cuda --sizes 1024x12,2048x24 --rounds 3 --per-family 1
