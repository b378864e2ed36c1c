"""bench.realism end to end on the tiny preset (1 epoch): report, verdicts, JSON, plot, reuse of finished runs."""
import json

import numpy as np
import pytest

from bench import realism


def test_band_check():
    assert realism._in_band(0.6, (0.55, 0.68)) and not realism._in_band(0.5, (0.55, 0.68))
    assert realism._in_band(9.0, (5.5, None)) and realism._in_band(0.0, (None, 0.2))
    assert not realism._in_band(float("nan"), (None, 0.2)) and not realism._in_band(None, (0.1, None))


def test_realism_report_on_tiny(tmp_path, capsys):
    out = tmp_path / "REALISM.md"
    argv = ["--preset", "tiny", "--gen-seeds", "0", "--model-seeds", "0", "1", "--work", str(tmp_path / "work"),
            "--out", str(out), "--set", "train.epochs=1", "train.threads=1", "--no-progress"]
    assert realism.main(argv) == 0
    text = out.read_text()
    for _, label, real, _ in realism.CHECKS:  # every band is a row, beside the real figure
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
