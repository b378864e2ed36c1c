"""The inference CLI `python -m src.predict MODEL INPUT --out FILE.csv` on the tiny pipeline run, and its
per-ROI table (a pure function) against direct evaluations of the formulas."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.decoding import load_predictions
from src.inference import find_members, load_member, predict_crop_views, predict_crops
from src.predict import main, prediction_table
from src.run_files import weights_file
from src.taxonomy import RANKS, distance_matrix, load_taxonomy

TAX = load_taxonomy()
D = distance_matrix(TAX)


def _probs(weights: dict[str, float]) -> np.ndarray:
    p = np.full(len(TAX), 1e-6)
    for name, w in weights.items():
        p[TAX.index(name)] = w
    return p / p.sum()


def test_prediction_table_matches_direct_sums():
    probs = np.stack([_probs({"Sebastes diploproa": 0.5, "Sebastes": 0.45, "Octopus rubescens": 0.05}),
                      _probs({"Porifera": 0.3, "Hexactinellida": 0.3, "Octopus rubescens": 0.4}),
                      np.full(len(TAX), 1 / len(TAX))])
    table = prediction_table(probs, TAX, D, confidence=0.9)
    assert table["concept"].tolist()[:2] == ["Sebastes diploproa", "Octopus rubescens"]
    assert table["probability"].iloc[0] == pytest.approx(probs[0].max())
    for n in range(len(probs)):
        risk = [sum(probs[n, j] * D[j, k] for j in range(len(TAX))) for k in range(len(TAX))]
        assert table["bayes_concept"].iloc[n] == TAX.names[int(np.argmin(risk))]
        assert table["bayes_expected_distance"].iloc[n] == pytest.approx(min(risk))
        for rank in RANKS[1:]:
            mass = {}
            for c, lineage in enumerate(TAX.lineages):
                taxon = lineage[RANKS.index(rank)]
                if taxon is not None:
                    mass[taxon] = mass.get(taxon, 0.0) + probs[n, c]
            best = max(mass.values())
            assert table[f"{rank}_probability"].iloc[n] == pytest.approx(best)
            assert mass[table[rank].iloc[n]] == pytest.approx(best)
    # Sebastes + S. diploproa: the genus is sure (0.95), the species is not (0.5)
    assert (table["genus"].iloc[0], table["deepest_sure_rank"].iloc[0]) == ("Sebastes", "genus")
    assert table["deepest_sure_taxon"].iloc[0] == "Sebastes"
    assert table["species_probability"].iloc[0] == pytest.approx(probs[0][TAX.index("Sebastes diploproa")])
    assert table["deepest_sure_rank"].iloc[2] == ""  # a uniform guess is sure of nothing
    with pytest.raises(ValueError, match="confidence"):
        prediction_table(probs, TAX, D, confidence=0.5)


def test_cli_on_a_round_a_package_a_run_and_roi_files(tiny_run, tmp_path, capsys):
    cfg, kaggle_input = tiny_run
    data = Path(cfg.data_root)
    round_dir = cfg.layout.round_dir(cfg.rounds)
    coco = str(data / "dataset_test.json")
    common = ["--work", str(tmp_path / "work"), "--no-progress"]

    assert main([str(round_dir), coco, "--out", str(tmp_path / "round.csv"), *common]) == 0
    table = pd.read_csv(tmp_path / "round.csv", keep_default_na=False)
    assert len(table) == 80 and table["annotation_id"].is_monotonic_increasing
    # the same ensemble mean as the pipeline's own decoders: argmax and Bayes match submit's CSVs
    for column, decoder in (("concept", "argmax"), ("bayes_concept", "bayes")):
        submitted = pd.read_csv(cfg.layout.submission(decoder))
        assert table[column].tolist() == submitted["concept_name"].tolist(), decoder
    for rank in RANKS[1:]:
        assert table[f"{rank}_probability"].between(0, 1).all()
    assert "80 ROIs, 2 member(s)" in capsys.readouterr().out

    # the package (one level down) and the pipeline run folder give the very same file
    for model, name in ((kaggle_input, "package.csv"), (cfg.layout.root, "run.csv")):
        assert main([str(model), coco, "--out", str(tmp_path / name), *common]) == 0
        assert (tmp_path / name).read_bytes() == (tmp_path / "round.csv").read_bytes(), name

    # frames not found locally are fetched from their coco_url (file:// here) into the work folder
    empty = tmp_path / "no_frames"
    empty.mkdir()
    assert main([str(round_dir), coco, "--images", str(empty), "--out", str(tmp_path / "fetched.csv"),
                 "--work", str(tmp_path / "work2"), "--no-progress"]) == 0
    assert (tmp_path / "fetched.csv").read_bytes() == (tmp_path / "round.csv").read_bytes()
    assert any((tmp_path / "work2" / "images").iterdir())

    # a folder of ROI images, read with one finished member
    rois = tmp_path / "rois"
    shutil.copytree(data / "test" / "rois", rois)
    member = cfg.layout.member_dir(cfg.rounds, cfg.seeds[0])
    assert find_members(member) == [member]
    assert main([str(member), str(rois), "--out", str(tmp_path / "files.csv"), *common]) == 0
    files = pd.read_csv(tmp_path / "files.csv", keep_default_na=False)
    assert len(files) == 80 and files["file"].str.endswith(".png").all()
    assert files["phylum_probability"].between(0, 1).all()
    # ROI files hold the cache's 'roi' view: the member's own test predictions come back
    files["annotation_id"] = files["file"].str.extract(r"_(\d+)\.png$")[0].astype(int)
    own = pd.read_csv(member / "predictions.csv").set_index("annotation_id")["concept_name"]
    assert files.set_index("annotation_id")["concept"].sort_index().tolist() == own.sort_index().tolist()


def test_cli_errors(tiny_run, tmp_path, capsys):
    cfg, _ = tiny_run
    coco = str(Path(cfg.data_root) / "dataset_test.json")
    unfinished = tmp_path / "round_9" / "members" / "seed_0"
    unfinished.mkdir(parents=True)
    assert main([str(tmp_path / "round_9"), coco, "--out", str(tmp_path / "x.csv")]) == 2
    assert "not finished" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), coco, "--out", str(tmp_path / "x.csv")]) == 2
    assert main([str(cfg.layout.round_dir(0)), str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_test_time_views_of_a_member(tiny_run):
    cfg, _ = tiny_run
    member = load_member(cfg.layout.member_dir(0, cfg.seeds[0]), TAX, "cpu")
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, (6, 1, 16, 8, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, :, :, ::-1]], axis=3)  # each row reads the same both ways
    views = ("identity", "hflip", "down75")
    out = predict_crop_views(member, symmetric, tta_views=views)
    assert out.view_probs.shape == (3, 2, 6, 79) and out.views == views and out.avgk_scores is None
    assert np.array_equal(out.view_probs[0], out.view_probs[1])  # hflip of a symmetric input: the same
    assert not np.array_equal(out.view_probs[0], out.view_probs[2])
    assert np.array_equal(out.probs, out.view_probs.mean(axis=0))
    assert np.array_equal(predict_crops(member, symmetric, tta_views=views), out.probs)
    plain = rng.integers(0, 255, (6, 1, 16, 16, 3), dtype=np.uint8)
    flipped = predict_crop_views(member, plain, tta_views=("identity", "hflip")).view_probs
    assert not np.array_equal(flipped[0], flipped[1])
    assert np.array_equal(flipped[1], predict_crop_views(member, plain[:, :, :, ::-1].copy(), tta_views=["identity"])
                          .view_probs[0])  # the hflip view is the flipped crop
    assert np.array_equal(predict_crops(member, plain), flipped[0])  # default: the member's views (identity)


def test_cli_decoder_column_and_tta_option(tiny_run, tiny_tta_run, tmp_path, capsys):
    cfg, kaggle_input = tiny_tta_run
    coco = str(Path(cfg.data_root) / "dataset_test.json")
    common = ["--work", str(tmp_path / "work"), "--no-progress"]
    assert main([str(kaggle_input), coco, "--out", str(tmp_path / "p.csv"), "--decoder", "frame_bayes",
                 "--probs", str(tmp_path / "p.npz"), *common]) == 0
    saved = load_predictions([cfg.layout.member_dir(0, 0)], "test", TAX)
    with np.load(tmp_path / "p.npz") as z:
        assert (z["member_means"] == saved.member_means).all() and tuple(z["views"]) == saved.views
        assert (z["view_means"][0] == saved.member_views[0].mean(axis=1)).all()
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert table.columns[1] == "frame_bayes_concept"
    submitted = pd.read_csv(cfg.layout.submission("frame_bayes"))
    assert table["frame_bayes_concept"].tolist() == submitted["concept_name"].tolist()
    # the member's run folder: its weights-only model.pt gives the very same test-time views
    member_dir = cfg.layout.member_dir(0, 0)
    assert weights_file(member_dir).name == "model.pt"
    assert main([str(member_dir), coco, "--out", str(tmp_path / "run.csv"), "--probs", str(tmp_path / "run.npz"),
                 *common]) == 0
    with np.load(tmp_path / "run.npz") as z:
        assert (z["view_means"][0] == saved.member_views[0].mean(axis=1)).all() and tuple(z["views"]) == saved.views
    assert main([str(kaggle_input), coco, "--out", str(tmp_path / "one.csv"), "--tta", "identity", *common]) == 0
    one = pd.read_csv(tmp_path / "one.csv", keep_default_na=False)
    identity = saved.member_views[0][0].mean(axis=0)
    assert np.allclose(one["probability"], identity.max(axis=1), atol=1e-6)
    assert not np.allclose(one["probability"], table["probability"], atol=1e-6)
    round_dir = str(tiny_run[0].layout.round_dir(tiny_run[0].rounds))
    assert main([round_dir, coco, "--out", str(tmp_path / "x.csv"), "--decoder", "frame_bayes", *common]) == 2
    assert "package the ensemble" in capsys.readouterr().err
    assert main([round_dir, coco, "--out", str(tmp_path / "x.csv"), "--tta", "identity,vflip", *common]) == 2
    assert "vflip" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    assert main([round_dir, coco, "--out", str(tmp_path / "vote.csv"), "--decoder", "vote", *common]) == 0
    votes = pd.read_csv(tmp_path / "vote.csv", keep_default_na=False)["vote_concept"]
    assert votes.tolist() == pd.read_csv(tiny_run[0].layout.submission("vote"))["concept_name"].tolist()
