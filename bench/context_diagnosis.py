"""What limits the context twin on a generated benchmark? Two diagnoses of one generator seed, run by
bench.realism after the twin and on their own:

    python -m bench.context_diagnosis --root outputs/realism/bench_g0 \\
        --reference outputs/realism/runs/<ref>/g0_s0 --twin outputs/realism/runs/<twin>/g0_s0

- Habitat read-out: the ROI-only reference's test probabilities times p(concept | biotope, depth zone) / p(concept),
  both counted on the train frames (the generator's frame_habitats.csv). It is the gain an ideal reader of the
  generator's habitat would add to the reference, with no model trained: when the twin gains less, the twin
  fails to read the context; when this read-out gains little, the generated context lacks the content.
- View reliance: the twin scored with each context view replaced by the same view of a test ROI of another
  frame. A view the twin ignores costs nothing; a view it leans on costs accuracy.

Seconds on CPU (one inference pass over the test per row).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.runs import frame_habitats, run_probs, test_table
from src.synthetic import error_profile as ep
from src.taxonomy import distance_matrix, load_taxonomy

SMOOTHING = 0.5  # pseudo-count per (habitat, concept): habitats that never saw a concept keep it possible


def habitat_posterior(keys: np.ndarray, labels: np.ndarray, n_keys: int, n_classes: int,
                      smoothing: float = SMOOTHING) -> tuple[np.ndarray, np.ndarray]:
    """(p(concept | habitat) (K, C), p(concept) (C,)) from the habitat index and concept of each train ROI,
    with `smoothing` added to every (habitat, concept) count."""
    counts = np.full((n_keys, n_classes), float(smoothing))
    np.add.at(counts, (np.asarray(keys), np.asarray(labels)), 1.0)
    return counts / counts.sum(1, keepdims=True), counts.sum(0) / counts.sum()


def with_habitat(probs: np.ndarray, conditional: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Bayes' rule for a model that saw the ROI but not the habitat: p(c | roi, h) ~ p(c | roi) p(c | h) / p(c),
    per row (`conditional` is each ROI's row of p(c | h))."""
    joint = probs * conditional / prior
    return joint / joint.sum(1, keepdims=True)


def foreign_permutation(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """A permutation `perm` of the ROIs with frames[perm[i]] != frames[i] for every i: the frames in a random
    order, their ROIs side by side, each ROI taking the ROI `largest frame` places further on (cyclically),
    which lies in another frame. ValueError when one frame holds more than half of the ROIs."""
    frames = np.asarray(frames)
    names, sizes = np.unique(frames, return_counts=True)
    if 2 * sizes.max() > len(frames):
        raise ValueError(f"one frame holds {sizes.max()} of {len(frames)} ROIs: no ROI of another frame for each")
    rank = np.random.default_rng(seed).permutation(len(names))[np.searchsorted(names, frames)]
    order = np.lexsort((np.arange(len(frames)), rank))  # ROIs grouped by frame, frames in random order
    perm = np.empty(len(frames), np.int64)
    perm[order] = np.roll(order, -int(sizes.max()))
    return perm


def _scores(truth: np.ndarray, pred: np.ndarray, D: np.ndarray, long_side: np.ndarray) -> dict[str, float]:
    by_size = ep.accuracy_by_size(truth, pred, long_side)
    return {"accuracy": float(np.mean(truth == pred)), "mean_distance": float(D[truth, pred].mean()),
            **{k: by_size[k] for k in ("q1", "q2", "q3", "q4") if k in by_size}}


def _rows(table: pd.DataFrame, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, frame, box long side) of the test annotations `ids` (rows of `bench.runs.test_table`)."""
    rows = table.loc[ids]
    return rows["truth"].to_numpy(), rows["frame"].to_numpy(), rows[["w", "h"]].max(axis=1).to_numpy(float)


def habitat_readout(root: Path, reference: Path, table: pd.DataFrame, taxonomy=None) -> dict[str, dict[str, float]]:
    """The reference's test scores alone and with the train frames' habitat posterior (`with_habitat`);
    `table`: `bench.runs.test_table` of root."""
    taxonomy = taxonomy or load_taxonomy()
    n_habitats, habitat_of = frame_habitats(root)
    train = json.loads((root / "dataset_train.json").read_text())["annotations"]
    column = {c: k for k, c in enumerate(taxonomy.category_ids)}
    conditional, prior = habitat_posterior(habitat_of["train"].loc[[a["image_id"] for a in train]].to_numpy(),
                                           [column[a["category_id"]] for a in train], n_habitats, len(taxonomy))
    ids, probs, _ = run_probs(reference, "test")
    truth, frames, side = _rows(table, ids)
    habitat = habitat_of["test"].loc[frames].to_numpy()
    D = distance_matrix(taxonomy)
    return {"reference": _scores(truth, probs.argmax(1), D, side),
            "reference + habitat": _scores(truth, with_habitat(probs, conditional[habitat], prior).argmax(1), D, side)}


def view_reliance(root: Path, twin: Path, table: pd.DataFrame, taxonomy=None,
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """The twin's test scores with all its views, with each non-ROI view (and all of them together) taken
    from a test ROI of another frame (`foreign_permutation`), and with the ROI view so taken; `table`:
    `bench.runs.test_table` of root."""
    from src.inference import load_crops, load_member, predict_crops

    taxonomy = taxonomy or load_taxonomy()
    member = load_member(twin, taxonomy, "cpu")
    ids, crops = load_crops(root / "dataset_test.json", root / "cache", member.crop_size, member.views,
                            images_dir=root / "frames" / "test", taxonomy=taxonomy, progress=False)
    truth, frames, side = _rows(table, ids)
    perm = foreign_permutation(frames, seed)
    per_view = isinstance(crops, tuple)
    views = list(crops) if per_view else [crops[:, v] for v in range(crops.shape[1])]
    D = distance_matrix(taxonomy)

    def score(swapped: tuple[int, ...]) -> dict[str, float]:
        parts = [view[perm] if v in swapped else view for v, view in enumerate(views)]
        pred = predict_crops(member, tuple(parts) if per_view else np.stack(parts, 1)).mean(0).argmax(1)
        return _scores(truth, pred, D, side)

    names = member.views
    out = {"all views": score(())}
    context = tuple(v for v, name in enumerate(names) if name != "roi")
    for v in context:
        out[f"{names[v]} from another frame"] = score((v,))
    if len(context) > 1:
        out["every context view from another frame"] = score(context)
    if "roi" in names:
        out["roi from another frame"] = score((names.index("roi"),))
    return out


def diagnosis_table(diagnosis: dict[str, dict[str, float]]) -> str:
    """Markdown rows: accuracy, mean distance and accuracy per quarter of box size per diagnosed condition."""
    lines = ["| condition | accuracy | mean distance | accuracy by box-size quarter (smallest first) |",
             "|---|---|---|---|"]
    for name, s in diagnosis.items():
        quarters = " / ".join(f"{s[q]:.2f}" for q in ("q1", "q2", "q3", "q4") if q in s)
        lines.append(f"| {name} | {s['accuracy']:.3f} | {s['mean_distance']:.2f} | {quarters} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.context_diagnosis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="a generated benchmark (with frame_habitats.csv)")
    parser.add_argument("--reference", type=Path, help="a finished ROI-only run on it (test_probs.npz)")
    parser.add_argument("--twin", type=Path, help="a finished context run on it (model.pt)")
    args = parser.parse_args(argv)
    if not (args.reference or args.twin):
        parser.error("give --reference, --twin or both")
    for path, needs in ((args.root, "dataset_test.json"), (args.root, "frame_habitats.csv"),
                        (args.reference, "test_probs.npz"), (args.twin, "model.pt")):
        if path is not None and not (path / needs).is_file():
            parser.error(f"{path / needs} not found")
    taxonomy = load_taxonomy()
    table, rows = test_table(args.root, taxonomy), {}
    if args.reference:
        rows.update(habitat_readout(args.root, args.reference, table, taxonomy))
    if args.twin:
        rows.update({f"twin: {k}": v for k, v in view_reliance(args.root, args.twin, table, taxonomy).items()})
    print(diagnosis_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
