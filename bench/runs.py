"""Readers shared by bench.realism and bench.context_diagnosis: a generated benchmark's test split and habitats,
and a finished run's saved probabilities."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def run_probs(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(annotation ids, probabilities averaged over heads (N, C), labels or None) of a run's <split>_probs.npz."""
    z = np.load(run_dir / f"{split}_probs.npz")
    return z["annotation_id"], z["probs"].mean(0), (z["labels"] if "labels" in z.files else None)


def test_table(root: Path, taxonomy) -> pd.DataFrame:
    """One row per test annotation: truth, frame, box and frame size (rendered px)."""
    coco = json.loads((root / "dataset_test.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    truth = pd.read_csv(root / "solution.csv").set_index("annotation_id")["concept_name"]
    rows = [{"annotation_id": a["id"], "frame": a["image_id"], "truth": taxonomy.index(truth[a["id"]]),
             "w": a["bbox"][2], "h": a["bbox"][3], "frame_w": images[a["image_id"]]["width"],
             "frame_h": images[a["image_id"]]["height"]} for a in coco["annotations"]]
    return pd.DataFrame(rows).set_index("annotation_id")


def frame_habitats(root: Path) -> tuple[int, dict[str, pd.Series]]:
    """(number of habitats, per split a Series image_id -> habitat index) from the generator's frame_habitats.csv;
    a habitat is a biotope x depth zone."""
    scene = pd.read_csv(root / "frame_habitats.csv")
    key = scene["biotope"] + "/" + scene["zone"]
    levels = {k: i for i, k in enumerate(sorted(key.unique()))}
    scene["habitat"] = key.map(levels)
    return len(levels), {split: part.set_index("image_id")["habitat"] for split, part in scene.groupby("split")}
