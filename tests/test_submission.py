import pandas as pd
import pytest

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


# ---------------------------------------------------------------- issue 12: a strict pre-upload check

GOOD = "annotation_id,concept_name\n4,Sebastes\n5,Porifera\n"


@pytest.mark.parametrize("content, message", [
    ("annotation_id,concept_name,score\n4,Sebastes,0.9\n", "exactly the columns annotation_id,concept_name"),
    ("annotation_id,concept_name,concept_name\n4,Sebastes,Porifera\n", "duplicated column name(s): concept_name"),
    ("annotation_id,annotation_id,concept_name\n4,4,Sebastes\n", "duplicated column name(s): annotation_id"),
    ("annotation_id,concept_name\n4.0,Sebastes\n", "plain integer, got '4.0'"),
    ("annotation_id,concept_name\n4e0,Sebastes\n", "plain integer, got '4e0'"),
    ("annotation_id,concept_name\n 4 ,Sebastes\n", "plain integer, got ' 4 '"),
    ("annotation_id,concept_name\ninf,Sebastes\n", "plain integer, got 'inf'"),
    ("annotation_id,concept_name\n9223372036854775808,Sebastes\n", "9223372036854775808 is out of range"),
    ("annotation_id,concept_name\n18446744073709551617,Sebastes\n", "18446744073709551617 is out of range"),
    pytest.param("\0" * 100, "binary file", id="NUL bytes"),
])
def test_validator_refuses_what_is_not_exactly_a_submission(tmp_path, capsys, content, message):
    path = tmp_path / "sub.csv"
    path.write_text(content)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "\0" not in err and "-" not in err.split("range")[0][-25:]


def test_validator_accepts_a_plain_file(tmp_path, capsys):
    path = tmp_path / "sub.csv"
    path.write_text(GOOD)
    assert main(["validate", str(path)]) == 0
    assert "2 rows" in capsys.readouterr().out


def test_validator_names_a_folder(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 1
    assert "is a folder, not a CSV file" in capsys.readouterr().err


@pytest.mark.parametrize("test_json, message", [
    ("missing", "COCO file not found"),
    ("not coco", "not a COCO file"),
    ("binary", "not valid JSON"),
    ("folder", "is a folder"),
])
def test_validator_test_json_errors_are_one_line(tmp_path, capsys, test_json, message):
    sub = tmp_path / "sub.csv"
    sub.write_text(GOOD)
    path = tmp_path / "test.json"
    if test_json == "not coco":
        path.write_text('{"info": {}}')
    if test_json == "binary":
        path.write_bytes(bytes(range(256)))
    if test_json == "folder":
        path.mkdir()
    assert main(["validate", str(sub), "--test-json", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
