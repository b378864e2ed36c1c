"""The manifest of a packaged ensemble (written by src.stages.package, read by the Kaggle notebook and
src.predict): format, members and their checksums, class order, decoder settings (with the frame decoders'
prior K in frame_prior.npz)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from src.artifacts import atomic_save_npz
from src.decoding import FRAME_DECODERS, FramePrior
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


def is_package_manifest(path: str | Path) -> bool:
    """Whether `path` is a package's manifest.json (it has "format" and "members"), not the manifest.json a
    data download writes in each split folder (src.data.download: "version", "frames", ...)."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format" in manifest and "members" in manifest


def find_manifest(folder: str | Path) -> Path:
    """The package's manifest.json in `folder` or below it (Kaggle may nest an uploaded folder one level);
    a data download's manifest.json (same name) is skipped, and FileNotFoundError says so when it is all
    there is."""
    folder = Path(folder)
    found = sorted(folder.rglob(MANIFEST), key=lambda p: len(p.parts))
    if (folder / MANIFEST).is_file():
        found.insert(0, folder / MANIFEST)
    packages = [p for p in found if is_package_manifest(p)]
    if packages:
        return packages[0]
    if found:
        raise FileNotFoundError(f"{found[0]} is a data download's manifest (src.data.download), not a package's: "
                                "give the folder made by src.stages.package, a training run, or a pipeline round "
                                "or run")
    raise FileNotFoundError(f"no {MANIFEST} in {folder} or below: attach the folder made by src.stages.package")


def check_package_decoder(manifest: dict, decoder: str | None = None) -> str:
    """The decoder to use with a package (`decoder`, default the manifest's); ValueError before any prediction
    when it is not among the package's decoders or lacks its fitted parameters."""
    decoder = decoder or manifest["decoder"]
    decoders = manifest.get("decoders") or [manifest["decoder"]]
    if decoder not in decoders:
        raise ValueError(f"decoder {decoder!r} is not one of the package's decoders {decoders}")
    decoding = manifest.get("decoding", {})
    if decoder == "bayes_cal" and decoding.get("temperature") is None:
        raise ValueError("decoder bayes_cal needs a temperature fitted on validation; the package has none")
    if decoder in FRAME_DECODERS and not decoding.get("frame_prior"):
        raise ValueError(f"decoder {decoder} needs the frame prior fitted on validation; the package has none")
    return decoder


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
