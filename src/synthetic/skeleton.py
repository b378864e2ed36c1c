"""The real FathomNet 2025 data set's structure, without its pixels: the skeleton the generator fills.

The generated benchmark replays the competition's structure so that models meet the real composition:

  train_frames.csv     frame, category_id: the 8,980 real train frames with their real label multisets
                       (23,699 ROIs), from the competition's train annotations
  test_geometry.csv    frame, width, height, x, y, w, h: the 325 real test frames (sizes) and the real
                       geometry of their 788 boxes, from the public test COCO file (no labels)
  class_sizes.csv      per concept: count and quartiles of the test box long side, in pixels and relative
                       to the frame's long side (aggregated from the published test labels)
  test_composition.csv n_rois, pattern, frames: how many test frames with n ROIs hold taxa in groups of
                       the given sizes (e.g. "2+1": one taxon twice, another once); aggregated, no labels

The files live in src/synthetic/fathomnet_skeleton/ with their origin (ORIGIN.md). `derive_skeleton` rebuilds
them from a folder holding the competition files:

    python -m src.synthetic.skeleton --real DIR --out src/synthetic/fathomnet_skeleton

`sample_frames` picks whole frames for the smaller presets, so their composition stays real.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.artifacts import atomic_write_text

SKELETON_DIR = Path(__file__).with_name("fathomnet_skeleton")
FILES = ("train_frames.csv", "test_geometry.csv", "class_sizes.csv", "test_composition.csv")


@dataclass(frozen=True)
class Skeleton:
    """The real structure. Frames are numbered 0..n-1 per split; class indices follow category ids 1..79."""

    train_frames: pd.DataFrame      # frame, label (class index 0..78)
    test_geometry: pd.DataFrame     # frame, width, height, x, y, w, h (one row per test ROI)
    class_sizes: pd.DataFrame       # indexed by class index: n, long_side_*, rel_* quartiles
    test_composition: pd.DataFrame  # n_rois, pattern, frames

    def train_multisets(self) -> list[np.ndarray]:
        """Class indices of each train frame, in frame order."""
        return [g.to_numpy() for _, g in self.train_frames.groupby("frame", sort=True)["label"]]

    def patterns(self, n_rois: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
        """Group-size patterns seen in test frames with n_rois ROIs (largest n_rois seen if none) and their
        frequencies."""
        table = self.test_composition
        available = table["n_rois"].unique()
        n = n_rois if n_rois in available else int(available[np.argmin(np.abs(available - n_rois))])
        rows = table[table["n_rois"] == n]
        patterns = [tuple(int(k) for k in p.split("+")) for p in rows["pattern"]]
        if n != n_rois:  # rescale a pattern of another size to n_rois groups summing to n_rois
            patterns = [_rescale_pattern(p, n_rois) for p in patterns]
        weights = rows["frames"].to_numpy(dtype=np.float64)
        return patterns, weights / weights.sum()


def _rescale_pattern(pattern: tuple[int, ...], total: int) -> tuple[int, ...]:
    shares = np.asarray(pattern, dtype=np.float64) / sum(pattern) * total
    sizes = np.maximum(1, np.floor(shares)).astype(int)
    while sizes.sum() < total:
        sizes[np.argmax(shares - sizes)] += 1
    while sizes.sum() > total:
        sizes[np.argmax(sizes)] -= 1
    return tuple(int(s) for s in sorted(sizes[sizes > 0], reverse=True))


def load_skeleton(folder: str | Path = SKELETON_DIR) -> Skeleton:
    """Read the skeleton files (the shipped ones by default)."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"skeleton files missing in {folder}: {missing}; rebuild them with "
                                "python -m src.synthetic.skeleton --real DIR --out " + str(folder))
    train = pd.read_csv(folder / "train_frames.csv")
    train = pd.DataFrame({"frame": train["frame"].to_numpy(), "label": train["category_id"].to_numpy() - 1})
    sizes = pd.read_csv(folder / "class_sizes.csv")
    sizes.index = sizes["category_id"].to_numpy() - 1
    return Skeleton(train, pd.read_csv(folder / "test_geometry.csv"), sizes,
                    pd.read_csv(folder / "test_composition.csv", dtype={"pattern": str}))


# ---------------------------------------------------------------- deriving the files from the real data

def _quartiles(values: pd.Series) -> tuple[float, float, float]:
    q = values.quantile([0.25, 0.5, 0.75]).to_numpy()
    return float(q[0]), float(q[1]), float(q[2])


def derive_skeleton(real_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the skeleton files from a folder with train_labels.csv (annotation_id, image_id, category_id,
    name), dataset_test.json (the official test COCO file) and test_labels.csv (same layout as the train
    labels). Per-ROI test labels are used only in aggregates (class size quartiles, frame patterns)."""
    real_dir, out_dir = Path(real_dir), Path(out_dir)
    train = pd.read_csv(real_dir / "train_labels.csv").sort_values(["image_id", "annotation_id"])
    frame_of = {image_id: k for k, image_id in enumerate(sorted(train["image_id"].unique()))}
    train_frames = pd.DataFrame({"frame": train["image_id"].map(frame_of).to_numpy(),
                                 "category_id": train["category_id"].to_numpy()})

    coco = json.loads((real_dir / "dataset_test.json").read_text())
    images = pd.DataFrame(coco["images"]).set_index("id")
    frame_of_test = {image_id: k for k, image_id in enumerate(sorted(images.index))}
    anns = pd.DataFrame(coco["annotations"]).sort_values("id")
    box = np.array(anns["bbox"].tolist(), dtype=np.float64)
    geometry = pd.DataFrame({
        "frame": anns["image_id"].map(frame_of_test).to_numpy(),
        "width": images.loc[anns["image_id"], "width"].to_numpy(),
        "height": images.loc[anns["image_id"], "height"].to_numpy(),
        "x": box[:, 0], "y": box[:, 1], "w": box[:, 2], "h": box[:, 3]})

    labels = pd.read_csv(real_dir / "test_labels.csv").set_index("annotation_id")
    test = geometry.assign(category_id=labels.loc[anns["id"], "category_id"].to_numpy(),
                           name=labels.loc[anns["id"], "name"].to_numpy())
    test["long_side"] = test[["w", "h"]].max(axis=1)
    test["rel"] = test["long_side"] / test[["width", "height"]].max(axis=1)
    rows = []
    for (cid, name), group in test.groupby(["category_id", "name"]):
        l25, l50, l75 = _quartiles(group["long_side"])
        r25, r50, r75 = _quartiles(group["rel"])
        rows.append({"category_id": cid, "name": name, "n": len(group), "long_side_q25": l25,
                     "long_side_median": l50, "long_side_q75": l75, "rel_q25": round(r25, 5),
                     "rel_median": round(r50, 5), "rel_q75": round(r75, 5)})
    class_sizes = pd.DataFrame(rows).sort_values("category_id")

    patterns = []
    for _, group in test.groupby("frame"):
        sizes = sorted(group["category_id"].value_counts().tolist(), reverse=True)
        patterns.append((len(group), "+".join(str(s) for s in sizes)))
    composition = (pd.DataFrame(patterns, columns=["n_rois", "pattern"]).value_counts().rename("frames")
                   .reset_index().sort_values(["n_rois", "frames", "pattern"], ascending=[True, False, True]))

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in zip(FILES, (train_frames, geometry, class_sizes, composition)):
        atomic_write_text(out_dir / name, table.to_csv(index=False, float_format="%.6g"))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.synthetic.skeleton",
        description="Derive the generator's skeleton files (real frame compositions and test geometry, no "
                    "pixels, no per-ROI test labels) from the competition's files.")
    parser.add_argument("--real", required=True, type=Path,
                        help="folder with train_labels.csv, dataset_test.json and test_labels.csv")
    parser.add_argument("--out", type=Path, default=SKELETON_DIR, help=f"output folder (default {SKELETON_DIR})")
    args = parser.parse_args(argv)
    missing = [n for n in ("train_labels.csv", "dataset_test.json", "test_labels.csv") if not (args.real / n).is_file()]
    if missing:
        print(f"error: {args.real} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    out = derive_skeleton(args.real, args.out)
    print(f"wrote {', '.join(FILES)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
