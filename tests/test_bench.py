"""Benchmark machinery: the timing helper, target verdicts, and the accuracy -> RESULTS.md path on the tiny preset."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.accuracy import VARIANTS, Plan, collect, jobs, merge_ledger, run, subset_distances
from bench.common import format_speed_row, machine_info, target_check, timed
from bench.report import kept_speed_section, paired, speed_markdown, speed_rows, write_report

REPO = Path(__file__).resolve().parents[1]


def test_timed_counts_calls_and_picks_min_or_median():
    calls = []
    result, seconds = timed(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and result == 5 and seconds >= 0
    with pytest.raises(ValueError, match="stat"):
        timed(lambda: None, stat="mean")


def test_target_check_directions():
    assert target_check(5.2, 5.0) == "met" and target_check(4.9, 5.0) == "not met"
    assert target_check(1.4, 1.5, higher_is_better=False) == "met"
    assert target_check(1.6, 1.5, higher_is_better=False) == "not met"
    assert target_check(2.0, None) == "no target"


def fake_speed() -> dict:
    return {
        "quick": True, "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [1.5, 1.0, 1.0],
        "data": {"cache_1_process": 3000.0, "png_1_process": 500.0, "ratio_1_process": 6.0, "workers": 2,
                 "cache_workers": 4000.0, "png_workers": 1000.0, "ratio_workers": 4.0},
        "train": {"threads": 2, "heads": [{"F": 128, "H": 100, "B": 64, "batched_ms": 2.0, "loop_ms": 10.0,
                                           "loop_over_batched": 5.0}],
                  "loss": {"dwce_ms": 0.3, "ce_ms": 0.1, "dwce_over_ce": 3.0},
                  "demo_model": {"img_per_s": 500.0}},
        "score": {"rows": 100000, "vectorised_s": 0.01, "loop_s": 2.0, "speedup": 200.0},
        "ensemble": {"total GMU + vote + Bayes": 0.2, "total_peak_bytes": 300 * 2 ** 20, "input_bytes": 200 * 2 ** 20},
        "scaling": {"workers": {"img_per_s": {"0": 100.0, "1": 120.0, "2": 150.0}, "batches": 5, "batch": 64,
                                "threads": 2}},
    }


def test_speed_rows_verdicts_follow_the_issue_targets():
    rows = {r["measurement"].split(",")[0]: r for r in speed_rows(fake_speed())}
    verdicts = [r["verdict"] for r in speed_rows(fake_speed())]
    assert verdicts == ["met", "not met", "met", "not met", "met", "met", "no target"]
    assert "200.00x" in speed_markdown(fake_speed())
    line = format_speed_row(speed_rows(fake_speed())[0])
    assert "ratio 6.00x" in line and "target >= 5x: met" in line
    # each row carries its own figures, and a ratio computed here (workers) equals the direct evaluation
    assert rows["local scorer (vectorised) vs row-by-row loop"]["ratio"] == 200.0
    assert rows["the same through a DataLoader with 2 workers"]["figure"] == 4000.0
    workers = rows["demo model training (WRN-16-2 32 px"]
    assert workers["ratio"] == pytest.approx(150.0 / 120.0) and workers["verdict"] == "no target"
    ensemble = rows["ensemble post-processing (GMU"]
    assert ensemble["ratio"] == pytest.approx(0.2) and "peak 300 MiB" in ensemble["measurement"]


def test_only_queues_the_named_variants_in_their_order_within_each_seed_pass(tmp_path):
    variants = tuple(v for v in VARIANTS if v.name in ("ce", "dwce_team", "dwce_paper", "ce_expdist", "soft_labels"))
    plan = Plan(root=tmp_path, out=tmp_path / "acc", seeds=[0, 1], epochs=1, rounds=1, min_votes=1,
                train_config=str(REPO / "cfg" / "demo_tiny.yaml"), recipe_overrides={}, variants=variants,
                ledger=None)
    names = [j.name for j in jobs(plan, "variants", only=["ce_expdist", "dwce_paper"])]
    assert names == ["ce_expdist seed 0", "dwce_paper seed 0", "ce_expdist seed 1", "dwce_paper seed 1"]
    with_pipeline = [j.name for j in jobs(plan, "all", only=["dwce_paper"])]
    assert with_pipeline[:2] == ["round 0 (DW-CE team) member seed 0", "round 0 (DW-CE team) member seed 1"]
    assert [n for n in with_pipeline if "round" not in n] == ["dwce_paper seed 0", "dwce_paper seed 1"]
    assert "soft_labels seed 0" in [j.name for j in jobs(plan, "variants")]  # without --only: every variant


def test_accuracy_run_and_report_on_tiny_preset(tmp_path):
    """Train 2 variants x 2 seeds + 1 self-training round on the tiny preset (1 epoch), then write RESULTS.md."""
    from src.data.download import download_split
    from src.synthetic.generator import generate_benchmark

    root = generate_benchmark(tmp_path / "tiny", "tiny", seed=0, progress=False)
    for split in ("train", "test"):
        assert download_split(root / f"dataset_{split}.json", root / split, progress=False) == 0
    variants = tuple(v for v in VARIANTS if v.name in ("ce", "dwce_team"))
    plan = Plan(root=root, out=tmp_path / "acc", seeds=[0, 1], epochs=1, rounds=1, min_votes=1,
                train_config=str(REPO / "cfg" / "demo_tiny.yaml"), recipe_overrides={}, variants=variants,
                ledger=tmp_path / "ledger.json", ensemble_seeds=[2])
    result = run(plan, part="all", shared=True)

    assert set(result["single"]) == {"ce", "dwce_team"}
    assert set(result["single"]["dwce_team"]["runs"]) == {"0", "1", "2"}  # + the extra ensemble seed
    for entry in result["single"].values():
        assert {"0", "1"} <= set(entry["runs"])
        for m in entry["runs"].values():
            assert 0 <= m["argmax_distance"] <= 12 and 0 <= m["bayes_accuracy"] <= 1
    assert set(result["ensemble_rounds"]) == {"0", "1"}
    for decoder in ("argmax", "vote", "bayes", "bayes_cal", "diffusion", "frame_bayes", "frame_argmax"):
        assert 0 <= result["ensemble_rounds"]["0"][f"{decoder}_distance"] <= 12, decoder
    gates = {row["gate"] for row in result["pseudo_labels"]["1"]["gates_at_equal_coverage"]}
    assert {"agreement", "agreement_u", "expected_distance", "max_prob"} <= gates
    assert set(result["tta"]) == {"identity", "identity+hflip", "identity+hflip+down75"}
    assert result["tta"]["identity"]["ensemble"]["argmax_distance"] == pytest.approx(
        result["ensemble_rounds"]["0"]["argmax_distance"], abs=1e-9)  # the same members' plain predictions
    subsets = result["ensemble_subsets"]  # the one 3-subset is the first-3-seeds ensemble
    assert subsets["members"] == 3 and list(subsets["sizes"]) == ["1", "3"] and subsets["sizes"]["1"]["argmax"]["subsets"] == 3
    for decoder in ("argmax", "bayes"):
        assert subsets["sizes"]["3"][decoder]["mean"] == pytest.approx(result["ensemble_sizes"]["3"][f"{decoder}_distance"])
    coarse = result["coarse"]
    assert coarse["exact_coverage"] == 1.0 and 0 <= coarse["exact_precision"] <= 1  # min_votes 1: one member suffices
    assert result["pseudo_labels"]["1"]["count"] > 0 and result["pseudo_labels"]["1"]["curves"]
    assert result["test_rois"] == len(json.loads((root / "dataset_test.json").read_text())["annotations"])
    saved = json.loads((plan.out / "accuracy.json").read_text())
    assert saved["single"].keys() == result["single"].keys()
    assert collect(plan)["ensemble_rounds"] == result["ensemble_rounds"]  # a re-collection gives the same numbers
    coarse_round = result["coarse_round_1"]  # min_votes 1: every ROI has an exact pseudo-label, none is coarse
    assert coarse_round["pseudo_labels"]["coarse_count"] == 0 and 0 <= coarse_round["argmax_distance"] <= 12
    assert (plan.out / "pipeline" / "selftrain_coarse" / "round_0").resolve() == \
        (plan.out / "pipeline" / "selftrain" / "round_0").resolve()  # the same round 0, linked
    scratch = result["scratch_round_1"]  # the same pseudo-labels; members from scratch (the recipe's 1 epoch, not 5)
    assert scratch["pseudo_labels"]["count"] == result["pseudo_labels"]["1"]["count"]
    assert {m["epochs"] for m in scratch["member_runs"].values()} == {1}
    assert {m["epochs"] for m in result["ensemble_rounds"]["1"]["member_runs"].values()} == {5}
    # The ledger keeps a run whose folder is gone (a fresh checkout): its figures stay, named as the ledger's.
    shutil.rmtree(plan.run_dir("ce", 1))
    again = collect(plan)
    assert again["single"]["ce"]["runs"]["1"] == result["single"]["ce"]["runs"]["1"]
    assert again["ledger_only"] == ["ce seed 1"]
    # ... and the study does not train it again unless asked to re-measure.
    ce_1 = lambda remeasure: next(j for j in jobs(plan, "variants", remeasure) if j.name == "ce seed 1")
    assert ce_1(False).done() and not ce_1(True).done()
    # Leaves the ledger holds (coarse round 1, round 0's test-time views) are not queued again; rounds are.
    names = lambda remeasure: {j.name for j in jobs(plan, "all", remeasure)}
    assert "test-time views of round 0" in names(True) and "coarse self-training round 1 pseudo-labels" in names(True)
    assert not {"test-time views of round 0", "coarse self-training round 1 pseudo-labels"} & names(False)
    assert "self-training round 1 pseudo-labels" in names(False)

    out = tmp_path / "RESULTS.md"
    text = write_report(out, fake_speed(), result, "python -m bench.report", machine_info(), "python -m bench.accuracy")
    assert out.read_text() == text
    assert (tmp_path / "results_accuracy.png").stat().st_size > 1000
    # --keep-speed: a second report keeps the first one's speed section, naming when it was measured.
    kept = kept_speed_section(out)
    assert "200.00x" in kept and kept.startswith("Kept from the previous RESULTS.md (speed measured ")
    again = write_report(out, None, result, "python -m bench.report --keep-speed", machine_info(), "x", speed_text=kept)
    assert "200.00x" in again and again.count("Kept from") == 1 and kept_speed_section(out).count("Kept from") == 1
    twice = write_report(out, None, result, "x", machine_info(), "x", pipelines=[result])  # a second pipeline study
    assert "over 2 independent pipelines" in twice and "- Self-training over 2 pipelines, round 1 vs round 0" in twice
    for needle in ("git commit", "Packages (a seed reproduces a run exactly only on the same CPU model and package versions): torch ",
                   "| CE (`ce`) |", "+- ", "(n=2)", "### Claims", "not met", "generated",
                   "### 2. Self-training", "expected_distance", "frame_bayes", "DW-CE (team) vs CE, argmax distance",
                   "each round's members vs round 0's, paired by seed (argmax distance): round 1 ",
                   "From-scratch vs warm-started members on the same pseudo-labels, round 1's members paired by seed",
                   "The pseudo-labels' own effect (from-scratch round 1 vs round 0", "| 1, from scratch |",
                   "Every k-subset of the 3 DW-CE seeds", "Ensemble size (DW-CE, mean over every k-subset of the 3 seeds"):
        assert needle in text, needle


def test_subset_distances_against_direct_evaluation():
    D = np.array([[0.0, 2.0, 6.0], [2.0, 0.0, 6.0], [6.0, 6.0, 0.0]])
    probs = np.array([[[0.6, 0.0, 0.4], [0.1, 0.8, 0.1]],   # member 0: argmax 0, 1
                      [[0.1, 0.6, 0.3], [0.2, 0.3, 0.5]],   # member 1: argmax 1, 2
                      [[0.3, 0.2, 0.5], [0.9, 0.0, 0.1]]])  # member 2: argmax 2, 0
    truth = np.array([0, 2])
    assert subset_distances(probs, truth, D, 1)["argmax"] == [(0 + 6) / 2, (2 + 0) / 2, (6 + 6) / 2]
    # All three: mean [[.333, .267, .4], [.4, .367, .233]]; argmax 2, 0 (distances 6, 6); expected distance
    # rows [2.93, 3.07, 3.6] and [2.13, 2.2, 4.6], so Bayes picks 0, 0 (distances 0, 6).
    assert subset_distances(probs, truth, D, 3) == {"argmax": [6.0], "bayes": [3.0]}
    rng = np.random.default_rng(0)
    many = rng.dirichlet(np.ones(3), size=(4, 5))
    labels = rng.integers(0, 3, size=5)
    pairs = subset_distances(many, labels, D, 2)
    subsets = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # itertools.combinations order
    for i, (a, b) in enumerate(subsets):
        mean = (many[a] + many[b]) / 2
        assert pairs["argmax"][i] == pytest.approx(D[labels, mean.argmax(axis=1)].mean())
        assert pairs["bayes"][i] == pytest.approx(D[labels, (mean @ D).argmin(axis=1)].mean())


def test_merge_ledger_fills_only_what_is_missing_and_checks_the_study():
    study = {"root": "r", "seeds": [0], "epochs": None, "min_votes": 3, "u_threshold": 0.0, "warm_epochs": 5,
             "train_config": "cfg/x.yaml", "recipe": {"train": {"threads": 1}}, "variants": {"ce": {}, "hxe": {}}}
    fresh = {**study, "single": {"ce": {"label": "CE", "runs": {"0": {"d": 1.0}}}},
             "ensemble_rounds": {"0": {"d": 2.0}}, "pseudo_labels": {}, "ensemble_sizes": {}, "coarse": None, "tta": None}
    ledger = {**study, "single": {"ce": {"label": "CE", "runs": {"0": {"d": 9.0}, "2": {"d": 1.2}}},
                                  "hxe": {"label": "HXE", "runs": {"0": {"d": 0.8}}},
                                  "gone": {"label": "removed variant", "runs": {"0": {"d": 5.0}}}},
              "ensemble_rounds": {"1": {"d": 1.5}, "0": {"d": 9.0}}, "coarse": {"exact_coverage": 0.5}}
    merged = merge_ledger(fresh, ledger)
    assert merged["single"]["ce"]["runs"] == {"0": {"d": 1.0}, "2": {"d": 1.2}}  # the fresh seed 0 wins
    assert list(merged["single"]) == ["ce", "hxe"] and list(merged["ensemble_rounds"]) == ["0", "1"]
    assert merged["ensemble_rounds"]["0"] == {"d": 2.0} and merged["coarse"] == {"exact_coverage": 0.5}
    assert merged["ledger_only"] == ["ce seed 2", "hxe seed 0", "ensemble_rounds 1", "coarse"]
    assert fresh["single"]["ce"]["runs"] == {"0": {"d": 1.0}}  # not modified in place
    bigger = {"members": 8, "sizes": {}}  # the ledger's subsets of more seeds beat a checkout's of fewer
    assert merge_ledger({**fresh, "ensemble_subsets": {"members": 4, "sizes": {}}},
                        {**ledger, "ensemble_subsets": bigger})["ensemble_subsets"] == bigger
    assert merge_ledger({**fresh, "ensemble_subsets": bigger},
                        {**ledger, "ensemble_subsets": {"members": 4}})["ensemble_subsets"] == bigger
    other = merge_ledger(fresh, {**ledger, "recipe": {"train": {"threads": 2}}})  # another study's figures
    assert other == fresh and "ledger_only" not in other
    older = merge_ledger({**fresh, "generator_version": 5}, {**ledger, "generator_version": 4})  # other data
    assert older["single"] == fresh["single"] and "ledger_only" not in older


def test_generator_version_of_a_benchmark(tmp_path):
    from bench.accuracy import generator_version
    from src.synthetic.generator import GENERATOR_VERSION
    assert generator_version(tmp_path) is None  # not generated data
    (tmp_path / "generator.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION}))
    assert generator_version(tmp_path) == GENERATOR_VERSION


def test_paired_differences_and_verdicts():
    def acc(a, b):
        return {"single": {"x": {"runs": {str(s): {"d": v} for s, v in enumerate(a)}},
                           "y": {"runs": {str(s): {"d": v} for s, v in enumerate(b)}}}}
    p = paired(acc([1.0, 1.1, 0.9], [2.0, 2.2, 2.05]), "x", "y", "d")
    assert p["n"] == 3 and abs(p["mean"] - (-1.0833333)) < 1e-6 and p["verdict"] == "lower"
    assert abs(p["std"] - np.std([-1.0, -1.1, -1.15], ddof=1)) < 1e-12
    assert paired(acc([1.0, 2.0, 1.0], [1.5, 1.5, 1.5]), "x", "y", "d")["verdict"] == "within seed noise"  # signs differ
    assert paired(acc([3.0, 3.1, 3.0], [1.0, 1.0, 1.1]), "x", "y", "d")["verdict"] == "higher"
    assert paired(acc([3.0, 3.1], [1.0, 1.0]), "x", "y", "d")["verdict"] == "two seeds: no claim"
    assert paired(acc([1.0], [2.0]), "x", "y", "d")["verdict"] == "one seed: no claim"
    assert paired(acc([1.0], [2.0]), "x", "z", "d") is None


def test_self_training_over_pipelines_paired_by_pipeline_and_pooled_by_member():
    from bench.report import (
        across_pipelines,
        limits,
        pipeline_claims,
        pipeline_pseudo_table,
        pipelines_table,
        pooled_members,
    )

    def rounds(seeds, ensemble, members):
        """A pipeline study: per round, its ensemble distances and its members' argmax distances."""
        out = {}
        for r, (d, m) in enumerate(zip(ensemble, members)):
            out[str(r)] = {"argmax_distance": d, "bayes_distance": d - 0.1, "frame_bayes_distance": d - 0.2,
                           "member_runs": {str(s): {"argmax_distance": v} for s, v in zip(seeds, m)}}
        return {"seeds": seeds, "ensemble_rounds": out}
    a = rounds([0, 1], [2.0, 1.8], [[2.5, 2.4], [2.3, 2.3]])
    b = rounds([3, 4], [2.2, 2.1], [[2.6, 2.5], [2.5, 2.0]])
    b["scratch_round_1"] = {"argmax_distance": 2.0, "member_runs": {"3": {"argmax_distance": 2.4}}}
    p = across_pipelines([a, b], "1", "0", "argmax_distance")  # (1.8 - 2.0, 2.1 - 2.2), one pair per pipeline
    assert p["n"] == 2 and p["mean"] == pytest.approx(-0.15) and p["std"] == pytest.approx(np.std([-0.2, -0.1], ddof=1))
    assert p["verdict"] == "two seeds: no claim"
    pooled = pooled_members([a, b], "1", "0", "argmax_distance")  # four members, the same seed numbers kept apart
    assert pooled["n"] == 4 and pooled["mean"] == pytest.approx(np.mean([-0.2, -0.1, -0.1, -0.5]))
    assert across_pipelines([a, b], "scratch_round_1", "1", "argmax_distance")["n"] == 1  # pipeline b only
    assert across_pipelines([a], "1", "0", "bayes_distance")["verdict"] == "one seed: no claim"
    table = pipelines_table([a, b])
    assert "| members 0,1 | members 3,4 |" in table and "| 1 | 1.800 / 1.700 / 1.600 | 2.100 / 2.000 / 1.900 |" in table
    assert "| 1, from scratch | - | 2.000 / - / - | round 1 |" in table and "1, coarse" not in table
    assert "| 1, from scratch | - | 2.000 / - / - | round 0 | -0.200 (n=1): one seed: no claim |" in table
    a["pseudo_labels"] = {"1": {"count": 50, "coverage": 0.5, "accuracy": 0.8}}
    assert "| 1 | 50 (50% of test, 80% right) | - |" in pipeline_pseudo_table([a, b])
    lines = pipeline_claims([a, b])
    assert lines[0].startswith("- Self-training over 2 pipelines, round 1 vs round 0: ensemble argmax -0.150")
    assert len(lines) == 1  # round 1 only: the from-scratch round 1 is pipeline b's alone
    assert pipeline_claims([a]) == [] and "one run" in limits(1) and "no verdict over pipelines" in limits(2)
    assert "no verdict" not in limits(3) and "3 runs" in limits(3)


def test_test_time_views_per_pipeline_and_paired_by_pipeline():
    from bench.report import tta_claims, tta_table

    def study(seeds, identity, hflip):
        """A pipeline study's TTA figures: (members' mean, ensemble) argmax distance per view set."""
        def figures(members, ensemble):
            return {"members": {"argmax_distance": members, "bayes_distance": members - 0.1},
                    "ensemble": {"argmax_distance": ensemble, "bayes_distance": ensemble - 0.1, "argmax_accuracy": 0.6}}
        return {"seeds": seeds, "tta": {"identity": figures(*identity), "identity+hflip": figures(*hflip)}}
    studies = [study([0, 1], (2.5, 2.2), (2.4, 2.3)), study([3, 4], (2.6, 2.3), (2.5, 2.25)),
               study([6, 7], (2.55, 2.4), (2.5, 2.3))]
    table = tta_table(studies)
    assert "| members 3,4 | identity+hflip | 2.500 | 2.400 | 2.250 | 2.150 | 0.600 |" in table
    assert table.count("\n") == 2 + 2 * 3 - 1  # header, rule, two view sets per pipeline
    lines = tta_claims(studies)
    assert len(lines) == 1 and lines[0].startswith("- Test-time views identity+hflip vs identity")
    # Members: -0.1, -0.1, -0.05 on every pipeline -> lower; ensemble: +0.1, -0.05, -0.1 -> signs differ.
    assert f"members argmax {-0.25 / 3:+.3f} +- {np.std([-0.1, -0.1, -0.05], ddof=1):.3f} (n=3): lower" in lines[0]
    assert "ensemble argmax -0.017 +- 0.104 (n=3): within seed noise" in lines[0]
    assert tta_claims([{"seeds": [0]}]) == [] and tta_table([{"seeds": [0]}]) == "(not measured yet)"

def test_set_size_gate_rows_and_their_claim_line():
    from bench.accuracy import set_size_gates
    from bench.report import claims

    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.8, 0.1], [0.34, 0.33, 0.33]])
    set_logits = np.array([[3.0, -2, -3], [1.0, 0.9, -1], [-2, 2.5, -3], [-1, -1.2, -1.1]])
    truth = np.array([0, 1, 1, 2])
    D = 2.0 * (1 - np.eye(3))
    rows = {(r["gate"], r["target_coverage"]): r for r in set_size_gates(probs, set_logits, set_logits, truth, D, k=1.0)}
    # Sets at the threshold that averages 1 concept (the 4th largest logit, 0.9): sizes 1, 2, 1, 0.
    assert rows["avgk_set_size", 0.5]["count"] == 2 and rows["avgk_set_size", 0.5]["precision"] == 1.0
    assert rows["max_prob", 0.5]["precision"] == 1.0 and rows["max_prob", 0.7]["precision"] == pytest.approx(2 / 3)
    assert rows["avgk_set_size", 0.7]["precision"] == pytest.approx(2 / 3)  # the set of 2 (wrong argmax) comes third
    gate_rows = lambda diff: [{"gate": "max_prob", "target_coverage": c, "precision": 0.8} for c in (0.3, 0.5, 0.7)] + \
        [{"gate": "avgk_set_size", "target_coverage": c, "precision": 0.8 + diff} for c in (0.3, 0.5, 0.7)]
    acc = {"single": {"dwce_avgk": {"label": "DW-CE + set head", "against": None,
                                    "runs": {str(s): {"set_gates": gate_rows(0.05 + 0.01 * s)} for s in range(3)}}},
           "ensemble_rounds": {}}
    text = claims(acc)
    assert "Set-size gate of the average-K head vs max-probability of the same DW-CE + set head models" in text
    assert "50% +0.060 +- 0.010 (n=3): higher" in text


def test_run_takes_an_earlier_job_as_soon_as_it_is_ready(tmp_path, monkeypatch):
    import bench.accuracy as accuracy

    ran = []
    finished = lambda name: lambda: name in ran
    todo = [accuracy.Job("a", lambda: ran.append("a"), finished("a"), ready=finished("b")),
            accuracy.Job("b", lambda: ran.append("b"), finished("b")),
            accuracy.Job("c", lambda: ran.append("c"), finished("c"))]
    monkeypatch.setattr(accuracy, "jobs", lambda *args: todo)
    monkeypatch.setattr(accuracy, "collect", lambda plan: {})
    monkeypatch.setattr(accuracy, "save", lambda plan, result: None)
    plan = Plan(root=tmp_path, out=tmp_path / "acc", seeds=[0], epochs=1, rounds=1, min_votes=1,
                train_config="x.yaml", recipe_overrides={}, ledger=None)
    accuracy.run(plan, shared=True)
    assert ran == ["b", "a", "c"]  # a waited for b, then went before the later c
