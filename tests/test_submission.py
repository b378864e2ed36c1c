import pandas as pd

from src.submission import main, read_label_csv, validate_submission, write_submission


def test_write_is_sorted_and_round_trips(tmp_path):
    path = write_submission(tmp_path / "sub" / "a.csv", [3, 1, 2], ["Porifera", "Sebastes", "Caridea"])
    assert path.read_text().splitlines() == ["annotation_id,concept_name", "1,Sebastes", "2,Caridea", "3,Porifera"]
    assert read_label_csv(path)["annotation_id"].tolist() == [1, 2, 3]
    assert not list((tmp_path / "sub").glob(".*tmp"))


def test_validate_reports_each_problem(tmp_path):
    frame = pd.DataFrame({"annotation_id": [1, 2, 5], "concept_name": ["Sebastes", "Nessie", "Porifera"]})
    problems = validate_submission(frame, expected_ids=[1, 2, 3])
    assert len(problems) == 3
    assert "no known concept" in problems[0] and "missing" in problems[1] and "not in the test set" in problems[2]
    assert validate_submission(frame.assign(concept_name="Porifera"), expected_ids=[1, 2, 5]) == []


def test_cli_validate_against_real_test_json(shared_data, tmp_path, capsys):
    key = pd.read_csv(shared_data / "test_labels.csv")
    good = write_submission(tmp_path / "good.csv", key["annotation_id"], key["name"])
    assert main(["validate", str(good), "--test-json", str(shared_data / "dataset_test.json")]) == 0
    assert "788 rows" in capsys.readouterr().out
    short = write_submission(tmp_path / "short.csv", key["annotation_id"][1:], key["name"][1:])
    assert main(["validate", str(short), "--test-json", str(shared_data / "dataset_test.json")]) == 1
    assert "1 test annotation id(s) missing" in capsys.readouterr().err
