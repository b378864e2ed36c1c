"""Two runs with the same name but different output_root never overwrite each other's submissions
(defect 5): each submission CSV records the run that wrote it, and a run refuses to replace a file written by
another run with a one-line error that says how to choose another name or submissions_dir."""
import json

import pytest

from src.stages import submit as submit_stage
from src.stages.cli import StageError
from src.stages.train_ensemble import train_ensemble
from tests.test_stages import FakeTrainer, cfg, digest  # noqa: F401  (the fixture)


def test_a_second_run_with_the_same_name_does_not_overwrite(cfg, tmp_path, capsys):  # noqa: F811
    train_ensemble(cfg, FakeTrainer())
    submit_stage.submit(cfg, r=0)
    first = {p.name: digest(p) for p in sorted(tmp_path.joinpath("subs").glob("*.csv"))}
    assert first
    submit_stage.submit(cfg, r=0)  # the same run may rewrite its own files

    other = cfg.model_copy(update={"output_root": str(tmp_path / "elsewhere")})
    train_ensemble(other, FakeTrainer())
    with pytest.raises(StageError, match=r"written by the run .*out/t.*name.*submissions_dir"):
        submit_stage.submit(other, r=0)
    assert {p.name: digest(p) for p in sorted(tmp_path.joinpath("subs").glob("*.csv"))} == first

    config = tmp_path / "other.yaml"
    config.write_text(json.dumps(other.model_dump(mode="json")))
    capsys.readouterr()
    assert submit_stage.main([str(config), "--round", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "name=t_2" in err or "submissions_dir" in err
