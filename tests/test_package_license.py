"""The package's dataset-metadata.json names the licence that applies to weights derived from FathomNet
images (CC BY-NC-ND 4.0) by default, and the user can choose another that Kaggle accepts (defect 9)."""
import json

import pytest

from src.stages import package as package_stage
from src.stages.cli import StageError
from src.stages.package import DEFAULT_LICENSE, KAGGLE_DATASET_LICENSES, package
from tests.test_package import cfg  # noqa: F401  (the fixture)


def licence_of(folder) -> list:
    return json.loads((folder / "dataset-metadata.json").read_text())["licenses"]


def test_default_licence_is_that_of_the_images(cfg, tmp_path):  # noqa: F811
    assert DEFAULT_LICENSE == "CC-BY-NC-ND-4.0" and DEFAULT_LICENSE in KAGGLE_DATASET_LICENSES
    out = package(cfg, tmp_path / "a", kaggle_id="someone/fathomnet-fake")
    assert licence_of(out) == [{"name": "CC-BY-NC-ND-4.0"}]


def test_licence_option_is_validated(cfg, tmp_path, capsys):  # noqa: F811
    out = package(cfg, tmp_path / "b", kaggle_id="someone/fathomnet-fake", license="CC-BY-NC-SA-4.0")
    assert licence_of(out) == [{"name": "CC-BY-NC-SA-4.0"}]
    with pytest.raises(StageError, match="MIT-0.*CC-BY-NC-ND-4.0"):
        package(cfg, tmp_path / "c", kaggle_id="someone/fathomnet-fake", license="MIT-0")
    assert not (tmp_path / "c").exists()
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert package_stage.main([str(config), "--out", str(tmp_path / "d"), "--kaggle-id", "someone/x-y",
                               "--license", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "nonsense" in err
    assert package_stage.main([str(config), "--out", str(tmp_path / "e"), "--kaggle-id", "someone/x-y",
                               "--license", "CC0-1.0"]) == 0
    assert licence_of(tmp_path / "e") == [{"name": "CC0-1.0"}]
