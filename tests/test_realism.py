"""bench.realism end to end on the tiny preset (1 epoch): report, verdicts, JSON, plot, reuse of finished runs."""
import json

import numpy as np
import pytest

from bench import realism


def test_band_check():
    assert realism._in_band(0.6, (0.55, 0.68)) and not realism._in_band(0.5, (0.55, 0.68))
    assert realism._in_band(9.0, (5.5, None)) and realism._in_band(0.0, (None, 0.2))
    assert not realism._in_band(float("nan"), (None, 0.2)) and not realism._in_band(None, (0.1, None))


def test_distances_print_as_distances_and_shares_as_percentages():
    assert realism._fmt(0.33, "ctx_distance_gain") == "0.33"
    assert realism._band_text((0.4, 1.0), "ctx_distance_gain") == "0.40 .. 1.00"
    assert realism._fmt(0.09, "ctx_small_gain") == "9.0 %"
    assert realism._fmt(0.096, "probe_phylum_over_majority") == "9.6 %"  # below a 10-point band, shown so
    assert realism._fmt(0.4, "probe_concept_ratio") == "40 %"


def test_realism_report_on_tiny(tmp_path, capsys):
    out = tmp_path / "REALISM.md"
    argv = ["--preset", "tiny", "--gen-seeds", "0", "--model-seeds", "0", "1", "--work", str(tmp_path / "work"),
            "--out", str(out), "--set", "train.epochs=1", "train.threads=1", "--no-progress"]
    assert realism.main(argv) == 0
    text = out.read_text()
    for _, label, real, _ in (*realism.CHECKS, *realism.CONTEXT_CHECKS):  # every band is a row, beside the real figure
        assert any(line.startswith(f"| {label} | {real} |") for line in text.splitlines()), label
    assert "**Verdict:" in text and (tmp_path / "realism_profile.png").stat().st_size > 10_000
    results = json.loads(out.with_suffix(".json").read_text())
    entry = results["generations"]["0"]
    assert set(entry["runs"]) == {"0", "1"} and results["epochs"] == 1
    truth = np.array(entry["truth"])
    for run in entry["runs"].values():  # the figures are those of the run's predictions
        pred = np.array(run["pred"])
        assert run["accuracy"] == pytest.approx(np.mean(pred == truth))
    # two seeds: the agreement figures are those of the two runs' error sets, evaluated here directly
    wrong_0, wrong_1 = (np.array(entry["runs"][s]["pred"]) != truth for s in ("0", "1"))
    union = (wrong_0 | wrong_1).sum()
    assert entry["agreement"]["jaccard"] == pytest.approx((wrong_0 & wrong_1).sum() / max(union, 1))
    assert entry["agreement"]["all_wrong"] == pytest.approx(np.mean(wrong_0 & wrong_1))
    assert entry["twin_seed"] == 0  # the context twin was trained, and its figures are those of its predictions
    assert entry["twin"]["accuracy"] == pytest.approx(np.mean(np.array(entry["twin"]["pred"]) == truth))
    assert "roi_concept" in entry["probe"] and "## Context" in text
    # the diagnosis scores the same models: unchanged inputs give the runs' own figures
    diagnosis = entry["diagnosis"]
    assert diagnosis["reference"]["accuracy"] == pytest.approx(entry["runs"]["0"]["accuracy"])
    assert diagnosis["twin: all views"]["accuracy"] == pytest.approx(entry["twin"]["accuracy"])
    assert {"twin: ctx3 from another frame", "twin: frame from another frame", "reference + habitat",
            "twin: roi from another frame"} <= set(diagnosis) and "What limits the twin" in text

    # a second call reuses the generation and both finished runs: same figures, no training
    capsys.readouterr()
    assert realism.main(argv) == 0
    assert "epoch 1/1" not in capsys.readouterr().out
    again = json.loads(out.with_suffix(".json").read_text())["generations"]["0"]
    assert again["runs"] == entry["runs"]


def test_runs_are_keyed_by_generation_and_recipe(tmp_path):
    (tmp_path / "generator.json").write_text('{"seed": 0}')
    base = realism.run_fingerprint(tmp_path, [])
    assert realism.run_fingerprint(tmp_path, ["train.threads=1", "train.progress=true"]) == base  # speed only
    assert realism.run_fingerprint(tmp_path, ["train.epochs=3"]) != base  # another recipe: trained anew
    (tmp_path / "generator.json").write_text('{"seed": 1}')
    assert realism.run_fingerprint(tmp_path, []) != base  # another generation


def test_context_probe_on_tiny(tmp_path, capsys):
    from src.synthetic.generator import generate_benchmark
    root = generate_benchmark(tmp_path / "tiny_g0", "tiny", seed=0, workers=1, progress=False)
    out = realism.context_probe(root)
    assert out["n_test"] == len(json.loads((root / "dataset_test.json").read_text())["annotations"])
    for view in (*realism.PROBE_VIEWS, "habitat"):
        assert 0.0 <= out[f"{view}_phylum"] <= 1.0 and 0.0 <= out[f"{view}_concept"] <= 1.0
    assert 0.0 < out["majority_phylum"] < 1.0
    table = realism.probe_table({"0": out})
    assert "ROI crop" in table and "most common phylum" in table
    # the context-band figures come from the probe (and from the twin when it was trained)
    figures = realism.context_figures({"probe": out, "runs": {}})
    assert figures["probe_phylum_over_majority"] == pytest.approx(out["context_phylum"] - out["majority_phylum"])
    # the CLI's probe-only mode reuses the generation (same generator record) and writes the JSON
    assert realism.main(["--probe-only", "--preset", "tiny", "--seeds", "0", "--work", str(tmp_path),
                         "--no-progress"]) == 0
    assert "most common phylum" in capsys.readouterr().out
    assert json.loads((tmp_path / "probe_tiny.json").read_text())["0"]["roi_phylum"] == pytest.approx(out["roi_phylum"])


def test_context_masks_every_box():
    frame = np.full((40, 60, 3), 50, np.uint8)
    usable = np.ones((40, 60), bool)
    usable[10:20, 10:20] = False
    window, ok = realism._window(frame, usable, 5, 5, 30)  # the window spans frame pixels -10 .. 19
    assert window.shape[:2] == ok.shape == (30, 30)
    assert not ok[:10].any() and not ok[:, :10].any()  # outside the frame
    assert not ok[20:, 20:].any() and ok[10:20, 10:20].all()  # the box is masked, the rest is context
    feats = realism._view_features(window, ok)
    assert feats.shape == (3 * realism.PROBE_HIST_BINS + 3 * realism.PROBE_PIXELS ** 2,)


def test_context_figures_compare_the_twin_with_the_reference_of_its_seed():
    ref = {"mean_distance": 3.0, "q1": 0.4, "size_q3_minus_q1": 0.3, "accuracy": 0.5}
    twin = {"mean_distance": 2.4, "q1": 0.55, "size_q3_minus_q1": 0.1, "accuracy": 0.6}
    probe = {"context_phylum": 0.45, "majority_phylum": 0.3, "context_concept": 0.05, "roi_concept": 0.3}
    out = realism.context_figures({"runs": {"0": ref, "1": {**ref, "mean_distance": 9.0}}, "twin": twin,
                                   "twin_seed": 0, "probe": probe})
    assert out["ctx_distance_gain"] == pytest.approx(0.6) and out["ctx_small_gain"] == pytest.approx(0.15)
    assert out["ctx_size_gap_ratio"] == pytest.approx(1 / 3) and out["probe_concept_ratio"] == pytest.approx(1 / 6)
    bands = dict((key, band) for key, _, _, band in realism.CONTEXT_CHECKS)
    assert all(realism._in_band(out[key], bands[key]) for key in bands)
    assert "ctx_distance_gain" not in realism.context_figures({"runs": {"0": ref}, "probe": probe})  # no twin


def test_fit_probe_keeps_the_strength_that_predicts_held_out_frames():
    rng = np.random.default_rng(0)
    frames = np.repeat(np.arange(100), 3)
    y = np.repeat(rng.integers(0, 3, 100), 3)  # a frame's ROIs share their label, as its context
    x = np.eye(3)[y] + 0.3 * rng.normal(size=(300, 3))
    model, C = realism.fit_probe(x, y, frames, grid=(1e-5, 1.0))
    assert C == 1.0 and np.mean(model.predict(x) == y) > 0.9  # 1e-5 flattens every class to the prior
