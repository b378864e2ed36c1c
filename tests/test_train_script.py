"""train_model.sh: argument handling without SLURM (DRY_RUN=1 prints the command), and a fake SLURM array task
that trains a pipeline member for real."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(*args, **env):
    """Exit code, the printed command (the interpreter shown as "py") and stderr of a dry run."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run(["bash", str(REPO / "train_model.sh"), *args], cwd="/", capture_output=True, text=True,
                            env={**base, "DRY_RUN": "1", "PYTHON": sys.executable, **env}, timeout=60)
    cmd = shlex.split(result.stdout)
    return result.returncode, ["py" if c == sys.executable else c for c in cmd], result.stderr


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


def test_pipeline_config_trains_one_member_per_array_task():
    _, cmd, _ = _run("cfg/pipeline_wrn_dwce.yaml", SLURM_ARRAY_TASK_ID="3", SLURM_SUBMIT_DIR=str(REPO))
    assert cmd == ["py", "-m", "src.stages.train_ensemble", "cfg/pipeline_wrn_dwce.yaml", "--member-index", "3"]
    _, cmd, _ = _run("cfg/pipeline_wrn_dwce.yaml", "--round", "2", "rounds=3", SLURM_ARRAY_TASK_ID="7",
                     SLURM_SUBMIT_DIR=str(REPO))
    assert cmd == ["py", "-m", "src.stages.retrain", "cfg/pipeline_wrn_dwce.yaml", "--round", "2", "rounds=3",
                   "--member-index", "7"]
    _, cmd, _ = _run("cfg/pipeline_demo.yaml", "--round=1", SLURM_SUBMIT_DIR=str(REPO))  # no array: every member
    assert cmd == ["py", "-m", "src.stages.retrain", "cfg/pipeline_demo.yaml", "--round", "1"]
    _, cmd, _ = _run("cfg/pipeline_wrn_dwce.yaml", SLURM_GPUS_ON_NODE="4", SLURM_ARRAY_TASK_ID="0",
                     SLURM_SUBMIT_DIR=str(REPO))
    assert cmd[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]


def test_round_needs_a_pipeline_config(tmp_path):
    rc, _, err = _run("cfg/wrn_dwce.yaml", "--round", "1", SLURM_SUBMIT_DIR=str(REPO))
    assert rc == 2 and "needs a pipeline config" in err
    rc, _, err = _run("cfg/pipeline_demo.yaml", "--round", "x", SLURM_SUBMIT_DIR=str(REPO))
    assert rc == 2 and "round number" in err
    variant = tmp_path / "variant.yaml"  # a pipeline config that only extends another is still one
    variant.write_text(f"base: {REPO / 'cfg' / 'pipeline_demo.yaml'}\n")
    _, cmd, _ = _run(str(variant), SLURM_ARRAY_TASK_ID="1", SLURM_SUBMIT_DIR=str(REPO))
    assert cmd[1:3] == ["-m", "src.stages.train_ensemble"]


@pytest.mark.parametrize("text, pipeline", [
    ("name: x\nseeds: [0]\n", True), ("train: {epochs: 1}\nseed: 3\n", False), ("{}\n", False),
    ("warm_start_overrides: {train: {epochs: 1}}\n", True)])
def test_python_tells_a_pipeline_config_from_a_training_config(tmp_path, text, pipeline):
    from src.stages.pipeline_config import is_pipeline_config, main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert is_pipeline_config(path) is pipeline and main(["--is-pipeline", str(path)]) == (0 if pipeline else 1)
    variant = tmp_path / "variant.yaml"  # through a base file
    variant.write_text("base: c.yaml\n")
    assert is_pipeline_config(variant) is pipeline


def test_configs_of_the_repository_are_told_apart():
    from src.stages.pipeline_config import is_pipeline_config

    for path in sorted((REPO / "cfg").glob("*.yaml")):
        assert is_pipeline_config(path) is path.name.startswith("pipeline"), path


def test_an_unreadable_config_stops_the_script(tmp_path, capsys):
    from src.stages.pipeline_config import main

    broken = tmp_path / "broken.yaml"
    broken.write_text("base: missing.yaml\n")
    assert main(["--is-pipeline", str(broken)]) == 2 and "error" in capsys.readouterr().err
    rc, cmd, err = _run(str(broken))
    assert rc == 2 and not cmd and "cannot tell" in err
    out = subprocess.run([sys.executable, "-m", "src.stages.pipeline_config", "--is-pipeline",
                          str(REPO / "cfg" / "pipeline_demo.yaml")], cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == 0


def test_stages_print_the_train_model_command():
    for stage, extra, expected in (
            ("train_ensemble", [], "sbatch --array=0-7 train_model.sh cfg/pipeline_wrn_dwce.yaml rounds=3"),
            ("retrain", ["--round", "2"],
             "sbatch --array=0-7 train_model.sh cfg/pipeline_wrn_dwce.yaml --round 2 rounds=3")):
        out = subprocess.run([sys.executable, "-m", f"src.stages.{stage}", "cfg/pipeline_wrn_dwce.yaml", "rounds=3",
                              *extra, "--print-sbatch"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr


def test_array_task_trains_the_member_where_the_stages_read_it(tmp_path):
    """A fake SLURM array task 1 of a tiny pipeline trains seeds[1] of round 0; train_ensemble then skips it."""
    from src.stages.pipeline_config import load_pipeline_config
    from src.stages.prepare import prepare

    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "slurm", "train_config": str(REPO / "cfg" / "demo_tiny.yaml"),
        "train_overrides": {"train": {"epochs": 1}}, "data_root": str(tmp_path / "tiny"),
        "prepare": {"synthetic_preset": "tiny"}, "seeds": [5, 7], "rounds": 1, "pseudo": {"min_votes": 1},
        "output_root": str(tmp_path / "out"), "submissions_dir": str(tmp_path / "subs")}))
    cfg = load_pipeline_config(config)
    prepare(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="42", SLURM_JOB_ID="43", SLURM_SUBMIT_DIR=str(REPO),
               PYTHON=sys.executable)
    task = subprocess.run(["bash", str(REPO / "train_model.sh"), str(config)], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)
    assert task.returncode == 0, task.stdout + task.stderr
    assert "job 43[1]" in task.stdout and "--member-index 1" in task.stdout
    assert (cfg.layout.member_dir(0, 7) / "done.json").is_file()
    assert not cfg.layout.member_dir(0, 5).exists()  # only this task's member
    rest = subprocess.run([sys.executable, "-m", "src.stages.train_ensemble", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stderr
    assert "member seed 7 (2/2): done, skipped" in rest.stdout and "member seed 5 (1/2): training" in rest.stdout
