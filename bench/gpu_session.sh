#!/usr/bin/env bash
# Every check a session with a CUDA GPU should make, in one call, most important first:
# the CUDA tests, the data pipeline (the open data issue's GPU target), then the training and
# inference benchmarks, a real training run per agent in bf16 against fp32 (and one through
# torchrun + NCCL, and bridge-torch-eval on the GPU). Each stage has a time limit
# and the whole run a budget, so a slow stage cannot eat the rest.
#
#   bash bench/gpu_session.sh [OUT_DIR]       (BUDGET=seconds, default 430; PYTHON=python3;
#                                              STAGES="name ..." runs only those stages)
#
# Uses the interpreter's own torch (it does not create a venv); src/ goes on PYTHONPATH.
# Results: OUT_DIR/session.log (every stage's full output) and one JSON per benchmark.
set -u -o pipefail
out=$(mkdir -p "${1:-gpu_session}" && cd "${1:-gpu_session}" && pwd)
budget=${BUDGET:-430}
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$out/session.log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

stage() {  # stage NAME LIMIT_S COMMAND...: run within the limit and what is left of the budget
    local name=$1 limit=$2 left=$((budget - SECONDS - 5))
    shift 2
    if [[ -n ${STAGES:-} && " $STAGES " != *" $name "* ]]; then return; fi
    if ((left < 20)); then echo "== $name: skipped (budget spent)"; return; fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s): $*" | tee -a "$log"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v -E 'it/s\]|s/it\]|^\s*$' >> "$log"
    local rc=${PIPESTATUS[0]}
    echo "-- $name: rc=$rc, $((SECONDS - started)) s" | tee -a "$log"
}

summary() {  # the lines of a stage's output worth reading in the reply
    sed -n "/^== $1 /,/^-- $1:/p" "$log" | grep -E "$2" | tail -n "${3:-20}"
}

stage environment 60 bash -c "nvidia-smi -L; $py -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"
stage cuda_tests 150 "$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_group_norm.py \
    tests/test_graphed.py tests/test_agents.py tests/test_augment.py tests/test_augment_cuda.py \
    tests/test_sampler.py
stage data 60 "$py" bench/data.py --device cuda --skip-open --seconds 1 \
    --json "$out/data.json"
stage train_step 150 "$py" bench/train_step.py --device cuda --profile 15 \
    --json "$out/train_step.json"
stage train_step_unfused 60 "$py" bench/train_step.py --device cuda --algos gc_bc \
    --precisions bf16 --set encoder.fused_norm=false --json "$out/train_step_unfused.json"
stage inference 60 "$py" bench/inference.py --device cuda --json "$out/inference.json"
stage inference_graphs 60 "$py" bench/inference.py --device cuda --cuda-graphs \
    --json "$out/inference_graphs.json"
stage precision 150 "$py" bench/precision.py --device cuda --algos gc_bc gc_ddpm_bc \
    --steps 200 --json "$out/precision.json"
stage torchrun_eval 90 bash -c "
    $py -c 'from pathlib import Path; from bridge_torch.demo import prepare_data; prepare_data(Path(\"$work/demo\"), 4, 0)' >/dev/null &&
    torchrun --standalone --nproc_per_node=1 -m bridge_torch.train algo=gc_ddpm_bc \
        data_path=$work/demo/data save_dir=$work/runs name=ddp num_steps=50 batch_size=64 \
        log_interval=10 eval_interval=50 save_interval=50 &&
    $py -m bridge_torch.offline_eval \$(ls -d $work/runs/*/*) --device cuda --max_batches 2"
stage compile 180 "$py" bench/train_step.py --device cuda --compile --algos gc_bc \
    --precisions bf16 --profile 15 --json "$out/train_step_compile.json"

echo; echo "######## summary (full output: session.log)"
summary environment '.'
summary cuda_tests 'passed|skipped|failed|error|Error' 8
summary train_step '^[a-z_]+ +(fp32|bf16)|FAILED|Error' 10
summary train_step_unfused '^[a-z_]+ +(fp32|bf16)|FAILED|Error'
summary inference '^[a-z_]+ +(fp32|bf16)|FAILED|Error'
summary inference_graphs '^[a-z_]+ +(fp32|bf16)|FAILED|Error'
summary precision '^[a-z_]+ +(fp32|bf16)|Error'
summary data 'K=|Error'
summary torchrun_eval 'mse|gc_ddpm_bc |Error|error'
summary compile '^[a-z_]+ +bf16|Error'
grep -E '^-- ' "$log"
