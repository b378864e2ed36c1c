#!/bin/bash
#SBATCH --job-name=train
#SBATCH --output=outputs/logs/%x_%A_%a.out
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --requeue
#
# Train on SLURM (run from the repository root; `mkdir -p outputs/logs` once, SLURM needs it).
# With a pipeline config (src/stages/pipeline_config.py), array task i trains member seeds[i] of a round
# exactly where the stages read it, outputs/pipeline/<name>/round_<R>/members/seed_<s>/:
#   sbatch --array=0-7 train_model.sh cfg/pipeline_wrn_dwce.yaml              round 0 (train_ensemble)
#   sbatch --array=0-7 train_model.sh cfg/pipeline_wrn_dwce.yaml --round 1    round 1 (retrain; pseudo_label first)
# (without --array the round's members train one after another). With a training config (src/config.py):
#   sbatch train_model.sh cfg/wrn_dwce.yaml [dotted.key=value ...]           one model
#   sbatch --array=0-7 train_model.sh cfg/wrn_dwce.yaml                      8 seeds: seed=<i>, run <name>_s<i>
# Either way: --gres=gpu:4 runs torchrun, one process per GPU; a requeued or re-submitted job continues
# (finished members are skipped, an interrupted run resumes from its checkpoint).
# DRY_RUN=1 bash train_model.sh ... prints the command instead of running it (no SLURM needed).
# PYTHON overrides the interpreter (default: .venv/bin/python when present).
set -euo pipefail

usage="usage: sbatch [--array=0-N] train_model.sh PIPELINE.yaml [--round R] [dotted.key=value ...]
       sbatch [--array=0-N] train_model.sh TRAINING.yaml [dotted.key=value ...]"
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

round=""
overrides=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --round) [[ $# -ge 2 ]] || { echo "error: --round needs a number" >&2; exit 2; }; round=$2; shift 2 ;;
        --round=*) round=${1#--round=}; shift ;;
        *) overrides+=("$1"); shift ;;
    esac
done
if [[ -n "$round" && ! "$round" =~ ^[0-9]+$ ]]; then
    echo "error: --round must be a round number, got '$round'" >&2
    exit 2
fi

python=${PYTHON:-python}
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && python=.venv/bin/python

# A pipeline config has top-level keys a training config never has (following `base:` files): Python says which.
kind=0
"$python" -m src.stages.pipeline_config --is-pipeline "$config" || kind=$?
if [[ $kind -gt 1 ]]; then
    echo "error: cannot tell whether $config is a pipeline or a training config" >&2
    exit 2
fi

if [[ $kind -eq 0 ]]; then
    if [[ "${round:-0}" -eq 0 ]]; then
        target=(-m src.stages.train_ensemble "$config")
    else
        target=(-m src.stages.retrain "$config" --round "$round")
    fi
    target+=(${overrides[@]+"${overrides[@]}"})
    [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]] && target+=(--member-index "$SLURM_ARRAY_TASK_ID")
else
    if [[ -n "$round" ]]; then
        echo "error: --round needs a pipeline config; $config is a training config" >&2
        exit 2
    fi
    args=("train.resume=true" ${overrides[@]+"${overrides[@]}"})
    if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        # One seed per array task; the run name gets the seed so the runs do not share a folder.
        run_name=$(basename "$config" .yaml)
        for arg in ${overrides[@]+"${overrides[@]}"}; do
            [[ "$arg" == output.run_name=* ]] && run_name=${arg#output.run_name=}
        done
        args+=("seed=$SLURM_ARRAY_TASK_ID" "output.run_name=${run_name}_s${SLURM_ARRAY_TASK_ID}")
    fi
    target=(main.py "$config" "${args[@]}")
fi

# GPUs of this job: SLURM's count, else the visible devices.
gpus=${SLURM_GPUS_ON_NODE:-}
if [[ -z "$gpus" && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -ra devices <<< "$CUDA_VISIBLE_DEVICES"
    gpus=${#devices[@]}
fi
if [[ "${gpus:-0}" -gt 1 ]]; then
    cmd=("$python" -m torch.distributed.run --standalone "--nproc_per_node=$gpus" "${target[@]}")
else
    cmd=("$python" "${target[@]}")
fi

if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
mkdir -p outputs/logs
echo "$(date -Is) ${SLURM_JOB_ID:+job $SLURM_JOB_ID${SLURM_ARRAY_TASK_ID:+[$SLURM_ARRAY_TASK_ID]} }on $(hostname): ${cmd[*]}"
exec "${cmd[@]}"
