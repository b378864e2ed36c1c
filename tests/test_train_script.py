"""train_model.sh argument handling, without SLURM (DRY_RUN=1 prints the command)."""
import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run(["bash", str(REPO / "train_model.sh"), *args], cwd="/", capture_output=True, text=True,
                            env={**base, "DRY_RUN": "1", "PYTHON": "py", **env}, timeout=30)
    return result.returncode, shlex.split(result.stdout), result.stderr


def test_single_run():
    rc, cmd, _ = _run("cfg/demo_tiny.yaml", "optim.lr=0.1")
    assert rc == 0
    assert cmd == ["py", "main.py", "cfg/demo_tiny.yaml", "train.resume=true", "optim.lr=0.1"]


def test_array_task_sets_seed_and_run_name():
    _, cmd, _ = _run("cfg/wrn_dwce.yaml", SLURM_ARRAY_TASK_ID="3", SLURM_SUBMIT_DIR=str(REPO))
    assert cmd[-2:] == ["seed=3", "output.run_name=wrn_dwce_s3"]
    _, cmd, _ = _run("cfg/wrn_dwce.yaml", "output.run_name=round2", SLURM_ARRAY_TASK_ID="7")
    assert cmd[-2:] == ["seed=7", "output.run_name=round2_s7"]  # later overrides win in main.py


def test_several_gpus_use_torchrun():
    _, cmd, _ = _run("cfg/wrn_dwce.yaml", CUDA_VISIBLE_DEVICES="0,1,2")
    assert cmd[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    _, cmd, _ = _run("cfg/wrn_dwce.yaml", SLURM_GPUS_ON_NODE="1", CUDA_VISIBLE_DEVICES="0,1")
    assert cmd[:2] == ["py", "main.py"]


def test_bad_arguments():
    rc, _, err = _run()
    assert rc == 2 and "usage" in err
    rc, _, err = _run("cfg/missing.yaml")
    assert rc == 2 and "not found" in err
