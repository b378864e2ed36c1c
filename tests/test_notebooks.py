"""The notebooks run top to bottom against a tiny pipeline run (the `tiny_run` fixture of conftest.py), and
the Kaggle submission notebook, fed the packaged ensemble, writes the very CSV that `submit` writes.
Notebooks execute with nbclient on the python3 kernel.
"""
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from src.decoding import FramePrior, frame_aware, load_predictions
from src.inference import decode_predictions, predict_ensemble
from src.manifest import package_decoding, read_package
from src.stages.predictions import load_round
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


def test_kaggle_notebook_from_roi_files_with_test_time_views_and_a_frame_decoder(tiny_tta_run, tmp_path):
    """ROI files only (no frames: the frame ids still come from the COCO file), three test-time views, and the
    package's decoder frame_bayes: the CSV and the view-mean probabilities of submit."""
    cfg, kaggle_input = tiny_tta_run
    text = run_notebook("kaggle_submission.ipynb", tmp_path, PACKAGE_DIR=str(kaggle_input), DATA_DIR=cfg.data_root,
                        TEST_IMAGES=str(tmp_path / "no_frames"))
    assert "(absent)" in text and "(used)" in text.split("ROI files:")[1]
    assert "decoder frame_bayes" in text and "test-time views: identity, hflip, down75" in text
    assert (tmp_path / "submission.csv").read_bytes() == cfg.layout.submission("frame_bayes").read_bytes()
    saved = load_predictions([cfg.layout.member_dir(0, s) for s in cfg.seeds], "test", load_taxonomy())
    with np.load(tmp_path / "ensemble_probs.npz") as z:
        assert (z["member_means"] == saved.member_means).all()  # the mean over the views, bit for bit
        assert tuple(z["views"]) == saved.views and z["view_means"].shape == (1, 3, 80, 79)
        assert (z["view_means"][:, 1] == saved.member_views[0][1].mean(axis=0)).all()  # the hflip view
        assert (z["image_id"] == load_round(cfg, [cfg.layout.member_dir(0, 0)], load_taxonomy()).test.frame_ids).all()


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


def test_packaged_views_and_frame_prior_reproduce_submit(tiny_tta_run, tmp_path):
    """The package carries K and the fitted weights; prediction from it gives the saved per-view probabilities
    and, through frame ids read from the COCO file, the frame decoders' labels of submit, also at a weight that
    changes labels (the fitted one may be 0 on this tiny model)."""
    cfg, kaggle_input = tiny_tta_run
    taxonomy = load_taxonomy()
    root, manifest = read_package(kaggle_input / "package", verify=True)
    decoding = package_decoding(root, manifest)
    members = [cfg.layout.member_dir(0, s) for s in cfg.seeds]
    loaded = load_round(cfg, members, taxonomy)
    assert np.array_equal(decoding["frame_prior"].K, loaded.frame_prior.K)
    weights = manifest["decoding"]["frame_prior"]["weights"]
    assert decoding["frame_prior"].weights == loaded.frame_prior.weights == weights
    data = Path(cfg.data_root)
    preds = predict_ensemble([root / m["dir"] for m in manifest["members"]], data / "dataset_test.json",
                             tmp_path / "cache", images_dir=data / "test" / "images", device="cpu", progress=False)
    assert preds.views == loaded.test.views == ("identity", "hflip", "down75")
    assert all((p == q).all() for p, q in zip(preds.member_views, loaded.test.member_views))
    assert np.array_equal(preds.frame_ids, loaded.test.frame_ids)
    for decoder in cfg.decoding.decoders:
        rows = decode_predictions(preds, decoder, decoding, taxonomy)
        path = write_submission(tmp_path / f"{decoder}.csv", rows["annotation_id"], rows["concept_name"])
        assert path.read_bytes() == cfg.layout.submission(decoder).read_bytes(), decoder
    strong = FramePrior(decoding["frame_prior"].K, {"frame_argmax": 1.0})  # the tiny model's labels barely move:
    ours = frame_aware(preds.mean, preds.frame_ids, strong, "frame_argmax")  # compare the distributions
    assert np.array_equal(ours, frame_aware(loaded.test.mean, loaded.test.frame_ids, strong, "frame_argmax"))
    assert not np.allclose(ours, frame_aware(preds.mean, np.roll(preds.frame_ids, 1), strong, "frame_argmax"),
                           rtol=1e-6, atol=0)  # other frames would give other distributions
    copy = shutil.copytree(root, tmp_path / "package")  # the session's package stays intact
    (copy / "frame_prior.npz").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="frame_prior.npz: checksum"):
        read_package(copy, verify=True)


def test_explore_notebook_runs(tiny_run, tmp_path):
    cfg, _ = tiny_run
    text = run_notebook("explore.ipynb", tmp_path, DATA_ROOT=cfg.data_root, REPO_DIR=str(REPO))
    assert "mean over all ordered pairs 8.8274, max 12, symmetric True, pairs at distance 1: 7" in text
    assert re.search(r"real test\s+788\.0\s+325\.0\s+2\.42", text)  # the shipped real test geometry, no ../shared
    assert "28 crops from" in text  # 7 phyla x 4 examples


def test_results_notebook_runs(tiny_run, tmp_path):
    cfg, _ = tiny_run
    text = run_notebook("results.ipynb", tmp_path, RUN_DIR=str(cfg.layout.root), REPO_DIR=str(REPO))
    assert "rounds present [0, 1] of 1" in text
    assert "round 1, decoder bayes, test: 80 ROIs" in text
    assert "species" in text and "concept" in text
