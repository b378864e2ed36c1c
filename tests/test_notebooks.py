"""The notebooks run top to bottom against a tiny pipeline run (the `tiny_run` fixture of conftest.py), and
the Kaggle submission notebook, fed the packaged ensemble, writes the very CSV that `submit` writes.
Notebooks execute with nbclient on the python3 kernel.
"""
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from src.predict import decode_predictions, predict_ensemble
from src.stages.common import load_predictions
from src.manifest import read_package
from src.submission import write_submission
from src.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("explore.ipynb", "results.ipynb", "kaggle_submission.ipynb")


def run_notebook(name: str, cwd: Path, **params) -> str:
    """Execute a notebook with `params` assigned after its parameters cell; returns its text outputs."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    cwd.mkdir(parents=True, exist_ok=True)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") if out["output_type"] == "stream" else out.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebooks_are_clean_and_parametrised(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])], "no cell tagged 'parameters'"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks with outputs cleared"


def test_kaggle_notebook_writes_the_submission_submit_writes(tiny_run, tmp_path):
    cfg, kaggle_input = tiny_run
    text = run_notebook("kaggle_submission.ipynb", tmp_path, PACKAGE_DIR=str(kaggle_input), DATA_DIR=cfg.data_root)
    assert f"project code from {kaggle_input / 'package' / 'src'}" in text  # the packaged src, not the repo's
    assert "(used)" in text.split("frames:")[1].split(";")[0]
    written = tmp_path / "submission.csv"
    assert written.read_bytes() == cfg.layout.submission("argmax").read_bytes()
    # bit-identical probabilities too, so the CSV match does not rest on a collapsed tiny model
    saved = load_predictions([cfg.layout.member_dir(cfg.rounds, s) for s in cfg.seeds], "test", load_taxonomy())
    with np.load(tmp_path / "ensemble_probs.npz") as z:
        assert (z["annotation_id"] == saved.annotation_id).all()
        assert (z["member_means"] == saved.member_means).all()
        assert tuple(z["classes"]) == load_taxonomy().names
    assert (tmp_path / "crop_cache").is_dir()


def test_kaggle_notebook_from_roi_files_only(tiny_run, tmp_path):
    cfg, kaggle_input = tiny_run
    text = run_notebook("kaggle_submission.ipynb", tmp_path, PACKAGE_DIR=str(kaggle_input), DATA_DIR=cfg.data_root,
                        TEST_IMAGES=str(tmp_path / "no_frames"), DECODER="vote")
    assert "(absent)" in text and "(used)" in text.split("ROI files:")[1]
    assert (tmp_path / "submission.csv").read_bytes() == cfg.layout.submission("vote").read_bytes()


def test_packaged_predictions_reproduce_every_decoder(tiny_run, tmp_path):
    cfg, kaggle_input = tiny_run
    taxonomy = load_taxonomy()
    root, manifest = read_package(kaggle_input / "package", verify=True)
    data = Path(cfg.data_root)
    preds = predict_ensemble([root / m["dir"] for m in manifest["members"]], data / "dataset_test.json",
                             tmp_path / "cache", images_dir=data / "test" / "images", device="cpu", progress=False)
    saved = load_predictions([cfg.layout.member_dir(cfg.rounds, s) for s in cfg.seeds], "test", taxonomy)
    assert (preds.annotation_id == saved.annotation_id).all()
    for ours, theirs in zip(preds.members, saved.members):
        assert (ours == theirs).all()  # bit-identical probabilities
    distinct = set()
    for decoder in cfg.decoding.decoders:
        rows = decode_predictions(preds, decoder, manifest["decoding"], taxonomy)
        path = write_submission(tmp_path / f"{decoder}.csv", rows["annotation_id"], rows["concept_name"])
        assert path.read_bytes() == cfg.layout.submission(decoder).read_bytes(), decoder
        distinct.add(path.read_bytes())
    assert len(distinct) > 1  # the decoders disagree somewhere: the comparison is not vacuous


def test_explore_notebook_runs(tiny_run, tmp_path):
    cfg, _ = tiny_run
    text = run_notebook("explore.ipynb", tmp_path, DATA_ROOT=cfg.data_root, REPO_DIR=str(REPO),
                        REAL_DATA=str(tmp_path / "absent"))
    assert "mean over all ordered pairs 8.8274, max 12, symmetric True, pairs at distance 1: 7" in text
    assert "28 crops from" in text  # 7 phyla x 4 examples


def test_results_notebook_runs(tiny_run, tmp_path):
    cfg, _ = tiny_run
    text = run_notebook("results.ipynb", tmp_path, RUN_DIR=str(cfg.layout.root), REPO_DIR=str(REPO))
    assert "rounds present [0, 1] of 1" in text
    assert "round 1, decoder bayes, test: 79 ROIs" in text
    assert "species" in text and "concept" in text
