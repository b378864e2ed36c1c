"""A data download's manifest.json is not a package manifest (defect 7): src.predict given a data folder
says so clearly, and the Kaggle notebook checks DECODER against the package before predicting."""
import json

import pytest
from nbclient.exceptions import CellExecutionError

from src.manifest import check_package_decoder, find_manifest, is_package_manifest
from src.predict import main as predict_main
from src.stages.package import package
from tests.test_notebooks import run_notebook
from tests.test_package import cfg  # noqa: F401  (the fixture)


def download_manifest(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"version": 1, "complete": True, "frames": {}, "crops": {}}))


def test_predict_on_a_data_folder_names_the_download_manifest(tmp_path, capsys):
    data = tmp_path / "data"
    download_manifest(data / "train")
    download_manifest(data / "test")
    (tmp_path / "rois").mkdir()
    assert not is_package_manifest(data / "train" / "manifest.json")
    for model in (data, data / "train"):
        with pytest.raises(FileNotFoundError, match="src.data.download"):
            find_manifest(model)
        assert predict_main([str(model), str(tmp_path / "rois"), "--out", str(tmp_path / "p.csv")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "data download" in err and "src.stages.package" in err, err


def test_a_package_beside_a_download_is_found(cfg, tmp_path):  # noqa: F811
    download_manifest(tmp_path / "inputs" / "a_data" / "train")
    out = package(cfg, tmp_path / "inputs" / "b_pkg")
    assert find_manifest(tmp_path / "inputs") == out / "manifest.json"


def test_check_package_decoder(cfg, tmp_path):  # noqa: F811
    out = package(cfg, tmp_path / "pkg", decoder="argmax")
    manifest = json.loads((out / "manifest.json").read_text())
    assert check_package_decoder(manifest) == "argmax" and check_package_decoder(manifest, "bayes") == "bayes"
    with pytest.raises(ValueError, match="'nonsense' is not one of the package's decoders"):
        check_package_decoder(manifest, "nonsense")
    manifest["decoding"]["temperature"] = None
    with pytest.raises(ValueError, match="bayes_cal.*temperature"):
        check_package_decoder(manifest, "bayes_cal")
    with pytest.raises(ValueError, match="frame_bayes.*frame prior"):
        check_package_decoder(dict(manifest, decoders=[*manifest["decoders"], "frame_bayes"]), "frame_bayes")


def test_kaggle_notebook_checks_the_decoder_before_predicting(cfg, tmp_path):  # noqa: F811
    package(cfg, tmp_path / "input" / "pkg")
    with pytest.raises(CellExecutionError, match="not one of the package's decoders") as err:
        run_notebook("kaggle_submission.ipynb", tmp_path / "work", PACKAGE_DIR=str(tmp_path / "input"),
                     DATA_DIR=str(tmp_path / "no_data"), DECODER="nonsense")
    assert "no dataset_test.json" not in str(err.value)  # it stopped before reading any test data
    assert not (tmp_path / "work" / "crop_cache").exists()
