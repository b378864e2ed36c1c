"""The manifest of a packaged ensemble (written by src.stages.package, read by the Kaggle notebook and
src.predict): format, members and their checksums, class order, decoder settings (with the frame decoders'
prior K in frame_prior.npz)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from src.artifacts import atomic_save_npz
from src.decoding import FramePrior
from src.run_files import WEIGHTS_FILE
from src.taxonomy import load_taxonomy

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
FRAME_PRIOR_FILE = "frame_prior.npz"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_manifest(folder: str | Path) -> Path:
    """The package's manifest.json in `folder` or below it (Kaggle may nest an uploaded folder one level)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return folder / MANIFEST
    found = sorted(folder.rglob(MANIFEST), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"no {MANIFEST} in {folder} or below: attach the folder made by src.stages.package")
    return found[0]


def read_package(folder: str | Path, verify: bool = False) -> tuple[Path, dict]:
    """(package root, manifest) of a packaged ensemble; ValueError when the class order or a checksum is off."""
    path = find_manifest(folder)
    root = path.parent
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')} is not {MANIFEST_FORMAT}")
    classes = json.loads((root / manifest["classes_file"]).read_text())
    if tuple(classes) != load_taxonomy(root / manifest["taxonomy_file"]).names:
        raise ValueError(f"{root}: classes.json differs from the packaged taxonomy's order")
    if verify:
        for entry in manifest["members"]:
            if sha256(root / entry["dir"] / WEIGHTS_FILE) != entry["model_sha256"]:
                raise ValueError(f"{root / entry['dir'] / 'model.pt'}: checksum differs from the manifest")
        frame = manifest["decoding"].get("frame_prior")
        if frame and sha256(root / frame["file"]) != frame["sha256"]:
            raise ValueError(f"{root / frame['file']}: checksum differs from the manifest")
    return root, manifest


def write_frame_prior(root: Path, prior: FramePrior) -> dict:
    """Save the prior's K as root/frame_prior.npz; returns the manifest "decoding" entries that describe it."""
    atomic_save_npz(root / FRAME_PRIOR_FILE, K=prior.K)
    return {"frame_prior": {"file": FRAME_PRIOR_FILE, "sha256": sha256(root / FRAME_PRIOR_FILE),
                            "weights": dict(prior.weights), "iterations": prior.iterations}}


def package_decoding(root: Path, manifest: dict) -> dict:
    """The decoding parameters of `src.inference.decode_predictions` from a package: the manifest's "decoding"
    with its frame_prior entry (if any) loaded as a `src.ensemble.FramePrior`."""
    decoding = dict(manifest["decoding"])
    frame = decoding.get("frame_prior")
    if frame:
        with np.load(Path(root) / frame["file"], allow_pickle=False) as z:
            decoding["frame_prior"] = FramePrior(z["K"], dict(frame["weights"]), int(frame["iterations"]))
    return decoding
