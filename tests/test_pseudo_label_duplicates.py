"""A pseudo-label CSV naming one ROI twice is refused, naming the ids (defect 6)."""
from pathlib import Path

import pandas as pd
import pytest

import main as main_script
from src.data.training import read_pseudo_labels
from src.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[1]


def test_duplicate_annotation_ids_are_refused(tiny_root, tmp_path, capsys):
    taxonomy = load_taxonomy()
    test_index = pd.read_csv(tiny_root / "test" / "annotations.csv")
    ids = test_index["annotation_id"].to_numpy()[[3, 10, 20]].tolist()
    table = pd.DataFrame({"annotation_id": [ids[0], ids[1], ids[0], ids[2], ids[2]],
                          "concept_name": ["Octopus rubescens", "Porifera", "Sebastes", "Porifera", "Porifera"]})
    table.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match=rf"2 annotation ids appear more than once.*\[{ids[0]}, {ids[2]}\]"):
        read_pseudo_labels(tmp_path / "dup.csv", test_index, taxonomy)
    table.drop_duplicates("annotation_id").to_csv(tmp_path / "ok.csv", index=False)
    rows, labels = read_pseudo_labels(tmp_path / "ok.csv", test_index, taxonomy)
    assert len(rows) == len(labels) == 3

    args = [str(REPO / "cfg" / "demo_tiny.yaml"), f"data.root={tiny_root}", f"output.dir={tmp_path / 'out'}",
            f"data.pseudo_labels={tmp_path / 'dup.csv'}", "train.progress=false"]
    assert main_script.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "more than once" in err and str(ids[0]) in err
