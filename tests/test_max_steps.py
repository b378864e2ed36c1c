"""train.max_steps stops a run after that many optimizer steps in total, writing model.pt and checkpoint.pt
as at an epoch end; a resume continues counting (the key may change on resume)."""
import os

import pandas as pd
import pytest
import torch

from src.config import Config, ConfigError, load_config
from src.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(root, out, *overrides):
    return load_config(Config, os.path.join(REPO, "cfg", "demo_tiny.yaml"),
                       [f"data.root={root}", f"output.dir={out}", "train.epochs=3", *overrides])


def test_max_steps_stops_and_resumes(tiny_root, tmp_path, capsys):
    run = train(_cfg(tiny_root, tmp_path, "train.max_steps=3"))
    assert (run / "model.pt").is_file() and (run / "checkpoint.pt").is_file() and not (run / "done.json").exists()
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["steps"].tolist() == [3] and metrics["epoch"].tolist() == [1]
    assert "train.max_steps" in capsys.readouterr().out
    steps_per_epoch = None
    train(_cfg(tiny_root, tmp_path, "train.max_steps=5", "train.resume=true"))
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["steps"].tolist() == [3, 5] and not (run / "done.json").exists()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["history"][-1]["steps"] == 5
    train(_cfg(tiny_root, tmp_path, "train.resume=true"))  # no limit: the run finishes
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 3 and (run / "done.json").is_file()
    steps_per_epoch = metrics["steps"].iloc[-1] - metrics["steps"].iloc[-2]
    assert steps_per_epoch > 2


def test_max_steps_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(Config, os.path.join(REPO, "cfg", "demo_tiny.yaml"), ["train.max_steps=0"])
    assert load_config(Config, os.path.join(REPO, "cfg", "demo_tiny.yaml"), ["train.max_steps=null"]).train.max_steps is None
