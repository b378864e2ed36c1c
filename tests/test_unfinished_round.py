"""An unfinished round is never used as if complete (defect 3): src.predict counts a round's members from
the configured seeds (the run's pipeline.yaml), not from the seed folders that exist; the stages refuse a
--round beyond the configured rounds."""
import json
import shutil

import pytest

from src.artifacts import atomic_write_text
from src.config import config_to_yaml
from src.inference import find_members
from src.predict import main as predict_main
from src.stages import package as package_stage
from src.stages import pseudo_label as pseudo_label_stage
from src.stages import retrain as retrain_stage
from src.stages import submit as submit_stage
from src.stages.cli import StageError
from src.stages.package import package
from src.stages.pipeline_config import PipelineConfig
from src.stages.pseudo_label import make_pseudo_labels
from src.stages.retrain import retrain
from src.stages.submit import submit
from tests.test_package import fake_member


@pytest.fixture
def run(tmp_path) -> PipelineConfig:
    """A pipeline run of 2 seeds and 2 rounds: rounds 0 and 1 finished, round 2 with 1 of its 2 members."""
    cfg = PipelineConfig(name="u", data_root=str(tmp_path / "data"), seeds=[3, 4], rounds=2,
                         output_root=str(tmp_path / "out"), submissions_dir=str(tmp_path / "subs"))
    for r in (0, 1):
        for seed in cfg.seeds:
            fake_member(cfg.layout.member_dir(r, seed), seed)
    fake_member(cfg.layout.member_dir(2, 3), 3)
    atomic_write_text(cfg.layout.root / "pipeline.yaml", config_to_yaml(cfg))
    return cfg


def test_a_round_with_a_missing_member_is_refused(run, tmp_path, capsys):
    round_2 = run.layout.round_dir(2)
    with pytest.raises(FileNotFoundError, match=r"round_2.*seed_4"):
        find_members(round_2)
    (tmp_path / "rois").mkdir()
    assert predict_main([str(round_2), str(tmp_path / "rois"), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "seed_4" in err, err
    # a finished round gives both configured members
    assert find_members(run.layout.round_dir(1)) == [run.layout.member_dir(1, s) for s in run.seeds]
    # the pipeline folder: the last round whose configured members all finished (round 1), never round 2
    assert find_members(run.layout.root) == [run.layout.member_dir(1, s) for s in run.seeds]
    assert "round_2" in capsys.readouterr().err  # a note that the unfinished round was skipped
    # without a pipeline.yaml (a round copied elsewhere) the seed folders present are the members
    copy = tmp_path / "copy" / "round_1"
    shutil.copytree(run.layout.round_dir(1), copy)
    assert len(find_members(copy)) == 2


def test_stages_refuse_a_round_beyond_rounds(run, tmp_path, capsys):
    for call in (lambda: package(run, tmp_path / "pkg", r=3), lambda: submit(run, 5),
                 lambda: make_pseudo_labels(run, 3), lambda: retrain(run, 3), lambda: package(run, tmp_path / "p", r=-1)):
        with pytest.raises(StageError, match=r"round .* configured rounds are 0\.\.2"):
            call()
    assert not (tmp_path / "pkg").exists()
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(run.model_dump(mode="json")))
    for main, extra in ((package_stage.main, ["--out", str(tmp_path / "pkg2")]), (submit_stage.main, []),
                        (pseudo_label_stage.main, []), (retrain_stage.main, [])):
        assert main([str(config), "--round", "7", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "configured rounds are 0..2" in err, err
