"""Forward passes of a model over in-order loaders, and the prediction files a run writes.

What training and validation use at the end of a run (src.train), and what inference (src.inference) runs
through, so both give the same probabilities: autocast dtype, per-head logits and softmax, test-time views,
`<split>_probs.npz` and the predictions CSV (src.run_files names them).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from src.artifacts import atomic_save_npz, atomic_write_with
from src.ensemble import decode_bayes, mean_over_views
from src.run_files import predictions_file, probs_file


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.amp on this device (None: full precision; CPU always runs float32)."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def batch_to(x: torch.Tensor | list[torch.Tensor], device: torch.device):
    """A batch on `device`: one tensor, or a list of per-view tensors (views of different sizes)."""
    if isinstance(x, (list, tuple)):
        return [v.to(device, non_blocking=True) for v in x]
    return x.to(device, non_blocking=True)


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, loader, device: torch.device, dtype) -> dict[str, np.ndarray]:
    """{'logits': (H, N, C) float32} of every item of the loader, in order, plus 'avgk': (N, C) the average-K
    set head's logits when the model has that head."""
    model.eval()
    chunks, set_chunks = [], []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            out = model(batch_to(x, device))
            chunks.append(out["logits"].float().cpu())
            if "avgk" in out:
                set_chunks.append(out["avgk"].float().cpu())
    outputs = {"logits": torch.cat(chunks, dim=1).numpy()}
    if set_chunks:
        outputs["avgk"] = torch.cat(set_chunks).numpy()
    return outputs


def predict_logits(model: torch.nn.Module, loader, device: torch.device, dtype) -> np.ndarray:
    """Logits (H, N, C) float32 of every item of the loader, in order."""
    return predict_outputs(model, loader, device, dtype)["logits"]


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (computed by torch, as in training)."""
    return torch.from_numpy(logits).softmax(dim=-1).numpy().astype(np.float32)


@dataclass
class ViewPredictions:
    """One model's predictions on one split under T test-time views (src.data.transforms.parse_tta_view)."""

    views: tuple[str, ...]
    view_probs: np.ndarray  # (T, H, N, C) float32 softmax per view and head
    avgk_scores: np.ndarray | None  # (N, C) sigmoid of the average-K set head, mean over the views

    @property
    def probs(self) -> np.ndarray:
        """(H, N, C) the mean over the views (`src.ensemble.mean_over_views`)."""
        return mean_over_views(self.view_probs)

    def npz_arrays(self) -> dict[str, np.ndarray]:
        """What <split>_probs.npz holds beside probs: view_probs and views when there are several views,
        avgk_scores with the set head (nothing for one identity view without it: the old layout)."""
        arrays = {}
        if len(self.views) > 1:
            arrays.update(view_probs=self.view_probs, views=np.array(self.views))
        if self.avgk_scores is not None:
            arrays["avgk_scores"] = self.avgk_scores
        return arrays


def predict_views(model: torch.nn.Module, loader_for: Callable[[str], object], views, device: torch.device,
                  dtype) -> ViewPredictions:
    """Softmax per head of every test-time view; `loader_for(view)` is the in-order loader of that view."""
    probs, scores = [], []
    for view in views:
        out = predict_outputs(model, loader_for(view), device, dtype)
        probs.append(softmax_np(out["logits"]))
        if "avgk" in out:
            scores.append(torch.from_numpy(out["avgk"]).sigmoid().numpy())
    avgk = mean_over_views(np.stack(scores)[:, None])[0] if scores else None
    return ViewPredictions(tuple(views), np.stack(probs), avgk)


def write_predictions(run_dir: Path, stem: str, annotation_ids: np.ndarray, probs: np.ndarray,
                      classes: tuple[str, ...], D: np.ndarray, decode: str, labels: np.ndarray | None = None,
                      extra: dict[str, np.ndarray] | None = None):
    """<stem>_probs.npz (probs (H, N, C) per head, then `extra` arrays) and the predictions CSV of the
    head-mean; returns the labels."""
    arrays = {"annotation_id": annotation_ids.astype(np.int64), "probs": probs, "classes": np.array(classes)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    arrays.update(extra or {})
    atomic_save_npz(run_dir / probs_file(stem), **arrays)
    mean = probs.mean(axis=0)
    pred = decode_bayes(mean, D) if decode == "bayes" else mean.argmax(axis=1)
    table = pd.DataFrame({"annotation_id": annotation_ids.astype(np.int64),
                          "concept_name": np.array(classes)[pred],
                          "confidence": mean[np.arange(len(pred)), pred]})
    atomic_write_with(run_dir / predictions_file(stem), lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    return pred
