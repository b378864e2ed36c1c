#!/bin/bash
#SBATCH --job-name=train
#SBATCH --output=outputs/logs/%x_%A_%a.out
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --requeue
#
# Train one model on SLURM (run from the repository root; `mkdir -p outputs/logs` once, SLURM needs it):
#   sbatch train_model.sh cfg/wrn_dwce.yaml [dotted.key=value ...]
#   sbatch --array=0-7 train_model.sh cfg/wrn_dwce.yaml      8 seeds: seed=<index>, run <name>_s<index>
#   sbatch --gres=gpu:4 train_model.sh cfg/wrn_dwce.yaml     several GPUs: torchrun, one process per GPU
# Runs always pass train.resume=true, so a requeued or re-submitted job continues its run.
# DRY_RUN=1 bash train_model.sh ... prints the command instead of running it (no SLURM needed).
# PYTHON overrides the interpreter (default: .venv/bin/python when present).
set -euo pipefail

usage="usage: sbatch [--array=0-N] train_model.sh CONFIG.yaml [dotted.key=value ...]"
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    echo "$usage" >&2
    exit 2
fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}"
config=$1
shift
if [[ ! -f "$config" ]]; then
    echo "error: config file not found: $config" >&2
    echo "$usage" >&2
    exit 2
fi

overrides=("train.resume=true" "$@")
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    # One seed per array task; the run name gets the seed so the members do not share a folder.
    run_name=$(basename "$config" .yaml)
    for arg in "$@"; do
        [[ "$arg" == output.run_name=* ]] && run_name=${arg#output.run_name=}
    done
    overrides+=("seed=$SLURM_ARRAY_TASK_ID" "output.run_name=${run_name}_s${SLURM_ARRAY_TASK_ID}")
fi

python=${PYTHON:-python}
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && python=.venv/bin/python

# GPUs of this job: SLURM's count, else the visible devices.
gpus=${SLURM_GPUS_ON_NODE:-}
if [[ -z "$gpus" && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -ra devices <<< "$CUDA_VISIBLE_DEVICES"
    gpus=${#devices[@]}
fi
if [[ "${gpus:-0}" -gt 1 ]]; then
    cmd=("$python" -m torch.distributed.run --standalone "--nproc_per_node=$gpus" main.py "$config" "${overrides[@]}")
else
    cmd=("$python" main.py "$config" "${overrides[@]}")
fi

if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
mkdir -p outputs/logs
echo "$(date -Is) ${SLURM_JOB_ID:+job $SLURM_JOB_ID${SLURM_ARRAY_TASK_ID:+[$SLURM_ARRAY_TASK_ID]} }on $(hostname): ${cmd[*]}"
exec "${cmd[@]}"
