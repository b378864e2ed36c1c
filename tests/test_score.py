import json

import numpy as np
import pandas as pd
import pytest

from src.score import bootstrap_interval, main, mean_distance, pair_distances, read_solution, score_files, score_frames
from src.submission import LabelFileError
from src.taxonomy import distance, distance_matrix, load_taxonomy

TAX = load_taxonomy()
D = distance_matrix(TAX)


def frame(ids, names):
    return pd.DataFrame({"annotation_id": np.asarray(ids, dtype=np.int64), "concept_name": list(names)})


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hand_computed_cases():
    solution = frame([1, 2, 3, 4], ["Sebastes", "Sebastes diploproa", "Porifera", "Caridea"])
    submission = frame([4, 3, 2, 1], ["Caridea", "Hexactinellida", "Sebastes", "bogus"])
    result = score_frames(solution, submission, TAX)
    # rows in solution order: bogus -> 12, Sebastes for S. diploproa -> 1, Hexactinellida for Porifera -> 1, exact -> 0
    assert result["distances"].tolist() == [12, 1, 1, 0]
    assert result["score"] == pytest.approx(14 / 4, abs=1e-12)
    assert result["accuracy"] == 0.25 and result["unknown_names"] == 1 and result["n"] == 4
    assert result["by_rank"]["other"] == {"n": 1, "score": 0.0}
    assert result["by_rank"]["genus"] == {"n": 1, "score": 12.0}


def test_vectorised_equals_row_by_row_reference():
    rng = np.random.default_rng(0)
    n = 5000
    names = np.array(list(TAX.names) + ["Unknown thing", ""], dtype=object)
    truth = rng.choice(np.array(TAX.names, dtype=object), n)
    pred = names[rng.integers(0, len(names), n)]
    result = score_frames(frame(np.arange(n), truth), frame(np.arange(n)[::-1], pred[::-1]), TAX)
    reference = np.mean([distance(t, p, TAX) for t, p in zip(truth, pred)])
    assert abs(result["score"] - reference) < 1e-9


def test_pair_distances_unknown_is_twelve():
    assert pair_distances(np.array([0, 1]), np.array([-1, 1]), D).tolist() == [12, 0]


def test_real_answer_key(shared_data, tmp_path):
    key = pd.read_csv(shared_data / "test_labels.csv")
    perfect = write(tmp_path, "perfect.csv", key[["annotation_id"]].assign(concept_name=key["name"]).to_csv(index=False))
    assert score_files(shared_data / "test_labels.csv", perfect)["score"] == 0.0
    porifera = write(tmp_path, "porifera.csv", key[["annotation_id"]].assign(concept_name="Porifera").to_csv(index=False))
    expected = D[TAX.indices(key["name"]), TAX.index("Porifera")].mean()
    assert abs(score_files(shared_data / "test_labels.csv", porifera)["score"] - expected) < 1e-12


def test_cli_json_and_bootstrap(tmp_path, capsys):
    sol = write(tmp_path, "sol.csv", "annotation_id,concept_name\n1,Sebastes\n2,Porifera\n")
    sub = write(tmp_path, "sub.csv", "annotation_id,concept_name\n2,Porifera\n1,Sebastolobus\n")
    assert main([str(sol), str(sub), "--json", "--bootstrap", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == 1.0 and out["n"] == 2 and out["accuracy"] == 0.5
    low, high = out["bootstrap_95"]
    assert 0.0 <= low <= 1.0 <= high <= 2.0


def test_bootstrap_interval_brackets_mean():
    values = np.random.default_rng(1).integers(0, 12, 788).astype(float)
    low, high = bootstrap_interval(values, 500)
    assert low < values.mean() < high and high - low < 1.5


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("annotation_id,label\n1,Sebastes\n", "needs columns"),
    ("annotation_id,concept_name\n1,Sebastes\n1,Porifera\n", "duplicated"),
    ("annotation_id,concept_name\nx,Sebastes\n", "integer"),
    ("annotation_id,concept_name\n", "no rows"),
    ("annotation_id,concept_name\n1,Sebastes\n2,Porifera\n3,Porifera\n", "not in the solution"),
    ("annotation_id,concept_name\n1,Sebastes\n", "lacks 1"),
    ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "binary file"),
    ("annotation_id,concept_name\n\xff\xfe,Sebastes\n", "not a readable CSV"),
])
def test_bad_submissions_give_one_line_error(tmp_path, capsys, content, message):
    sol = write(tmp_path, "sol.csv", "annotation_id,concept_name\n1,Sebastes\n2,Porifera\n")
    sub = tmp_path / "sub.csv"
    sub.write_bytes(content.encode("latin-1"))
    assert main([str(sol), str(sub)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_answer_key_layout_accepted(tmp_path):
    sol = write(tmp_path, "key.csv", "annotation_id,image_id,category_id,name\n1,1,71,Sebastolobus\n")
    sub = write(tmp_path, "sub.csv", "annotation_id,concept_name\n1,Sebastolobus\n")
    assert score_files(sol, sub)["score"] == 0.0
    with pytest.raises(LabelFileError, match="unknown concept"):
        score_files(write(tmp_path, "bad.csv", "annotation_id,name\n1,Nessie\n"), sub)


# ---------------------------------------------------------------- issue 12: bootstrap memory, input checks

def bootstrap_reference(values, n_resamples, seed=0, level=0.95):
    """The earlier one-shot version: an (N, rows) index array."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return tuple(float(v) for v in np.percentile(means, [tail, 100 - tail]))


@pytest.mark.parametrize("n_rows, chunk_elements", [(788, 1000), (1001, 50), (5, 1 << 22)])
def test_chunked_bootstrap_gives_the_one_shot_interval(n_rows, chunk_elements):
    values = np.random.default_rng(3).integers(0, 13, n_rows).astype(np.float64)
    for seed in (0, 7):
        assert bootstrap_interval(values, 300, seed=seed, chunk_elements=chunk_elements) == \
            bootstrap_reference(values, 300, seed=seed)


def test_bootstrap_memory_is_bounded_by_the_chunk():
    import tracemalloc

    values = np.random.default_rng(1).integers(0, 13, 20_000).astype(np.float64)
    tracemalloc.start()
    try:
        bootstrap_interval(values, 200, chunk_elements=1 << 14)  # one shot: 200 x 20,000 x 8 B = 32 MB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


@pytest.mark.parametrize("args, message", [
    (["--bootstrap", "-5"], "--bootstrap"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    sol = write(tmp_path, "sol.csv", "annotation_id,concept_name\n1,Sebastes\n")
    with pytest.raises(SystemExit) as stop:
        main([str(sol), str(sol), *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]


@pytest.mark.parametrize("content, message", [
    ("annotation_id,concept_name\ninf,Sebastes\n", "plain integer, got 'inf'"),
    ("annotation_id,concept_name\n4.0,Sebastes\n", "plain integer, got '4.0'"),
    ("annotation_id,concept_name\n 1 ,Sebastes\n", "plain integer, got ' 1 '"),
    ("annotation_id,concept_name\n9223372036854775808,Sebastes\n", "9223372036854775808 is out of range"),
    ("annotation_id,concept_name,concept_name\n1,Sebastes,Porifera\n", "duplicated column name(s): concept_name"),
    pytest.param("\0" * 64, "binary file", id="NUL bytes"),
])
def test_scorer_input_errors_are_one_line(tmp_path, capsys, content, message):
    sol = write(tmp_path, "sol.csv", "annotation_id,concept_name\n1,Sebastes\n")
    sub = write(tmp_path, "sub.csv", content)
    assert main([str(sol), str(sub)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "\0" not in err


def test_a_folder_is_not_called_missing(tmp_path, capsys):
    sol = write(tmp_path, "sol.csv", "annotation_id,concept_name\n1,Sebastes\n")
    assert main([str(sol), str(tmp_path)]) == 2
    assert "is a folder, not a CSV file" in capsys.readouterr().err


def test_mean_distance_is_the_metric(tmp_path):
    truth, pred = np.array([0, 5, 9]), np.array([0, 7, -1])
    assert mean_distance(truth, pred, D) == pytest.approx((0 + D[5, 7] + 12) / 3)
    assert np.isnan(mean_distance(truth[:0], pred[:0], D))
    sub = frame([3, 1, 2], [TAX.names[0], TAX.names[5], TAX.names[9]])
    assert score_frames(frame([1, 2, 3], [TAX.names[t] for t in (0, 5, 9)]), sub, TAX)["score"] == \
        mean_distance(np.array([0, 5, 9]), np.array([5, 9, 0]), D)


def test_read_solution_never_scores_a_partial_overlap(tmp_path):
    path = write(tmp_path, "solution.csv", f"annotation_id,name\n3,{TAX.names[2]}\n1,{TAX.names[0]}\n2,Porifera\n")
    assert read_solution(path, np.array([2, 3, 1]), TAX).tolist() == [TAX.index("Porifera"), 2, 0]
    with pytest.raises(LabelFileError, match="1 missing"):
        read_solution(path, np.array([1, 2, 3, 4]), TAX)
    with pytest.raises(LabelFileError, match="1 extra"):
        read_solution(path, np.array([1, 2]), TAX)
    bad = write(tmp_path, "bad.csv", "annotation_id,concept_name\n1,Nessie\n")
    with pytest.raises(LabelFileError, match="unknown concept 'Nessie'"):
        read_solution(bad, np.array([1]), TAX)
