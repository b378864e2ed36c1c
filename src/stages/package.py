"""Stage: package the final ensemble as a folder to upload as a Kaggle dataset (for the submission notebook).

    python -m src.stages.package CONFIG.yaml [overrides] --out DIR [--round R] [--decoder D] [--kaggle-id USER/SLUG]

DIR (created; never an existing folder) holds:
  manifest.json            written last: members, class order, decoder and its parameters (temperature
                           and frame weights fitted on validation exactly as `submit` does), file checksums
  frame_prior.npz          with frame decoders configured: the label co-occurrence prior K of the frame
                           decoders (its checksum and the weights in the manifest's "decoding")
  members/seed_<s>/        model.pt (weights + class names + config; optimiser state dropped),
                           config.yaml, metrics.csv, done.json of each member of round R
  classes.json             the canonical class order (category ids 1..79)
  pipeline.yaml            the pipeline config that trained the ensemble
  src/                     a copy of the project's library (not the benchmark generator), with the taxonomy (src/fathomnet2025_taxonomy.json)
  dataset-metadata.json    with --kaggle-id: what `kaggle datasets create -p DIR --dir-mode tar` needs
The folder is assembled beside DIR and renamed into place, so DIR is either complete or absent.
notebooks/kaggle_submission.ipynb and `python -m src.predict` read it with src.manifest.read_package.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from src.artifacts import atomic_write_json, atomic_write_text
from src.config import config_to_yaml
from src.decoding import FRAME_DECODERS, preferred_decoder
from src.manifest import MANIFEST, MANIFEST_FORMAT, sha256, write_frame_prior
from src.run_files import CONFIG_FILE, DONE_FILE, METRICS_FILE, WEIGHTS_FILE, has_weights, is_done, weights_file
from src.stages.cli import StageError, check_round, run_cli, stage_parser
from src.stages.pipeline_config import PipelineConfig
from src.stages.predictions import load_round
from src.stages.state import open_run
from src.taxonomy import DEFAULT_TAXONOMY_PATH, load_taxonomy

SRC_DIR = Path(__file__).resolve().parents[1]  # the project's src/ package
MEMBER_FILES = (CONFIG_FILE, METRICS_FILE, DONE_FILE)
# The licence names Kaggle accepts in a dataset's dataset-metadata.json (github.com/Kaggle/kaggle-cli,
# docs/datasets_metadata.md, "Licenses").
KAGGLE_DATASET_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO",
    "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
    "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0",
    "GPL-3.0")
# FathomNet's images are CC BY-NC-ND 4.0 (its annotations CC BY-ND 4.0): weights trained on them carry the
# stricter of the two.
DEFAULT_LICENSE = "CC-BY-NC-ND-4.0"


def inference_only(folder: str, names: list[str]) -> list[str]:
    """copytree's ignore: the package ships the library without caches and without the generated benchmark."""
    research = ("synthetic",) if Path(folder) == SRC_DIR else ()
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc") or n in research]


def slim_weights(member: Path, out: Path) -> None:
    """model.pt: the member's model weights, class names, config and epoch (no optimiser/RNG state), from its
    weights-only model.pt or, for runs trained before there was one, its checkpoint.pt."""
    import torch

    from src.serialization import UnsafeFileError, load_state_file

    try:
        state = load_state_file(weights_file(member))
    except UnsafeFileError as err:
        raise StageError(str(err)) from None
    slim = {key: state[key] for key in ("model", "classes", "config", "epoch") if key in state}
    torch.save(slim, out)


WEIGHTS_DTYPES = ("float32", "bfloat16", "float16")


def cast_weights(path: Path, dtype: str) -> None:
    """Store a slim model.pt's floating-point tensors in `dtype` (bfloat16 halves a package; src.predict loads
    them into the float32 model unchanged: load_state_dict copies with a cast)."""
    import torch

    from src.serialization import load_state_file

    state = load_state_file(path)
    cast = getattr(torch, dtype)
    state["model"] = {k: v.to(cast) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, path)


def default_decoder(cfg: PipelineConfig, frame_prior_fitted: bool = True) -> str:
    """preferred_decoder of the configured decoders (the frame decoders only when their frame weight could be
    fitted)."""
    return preferred_decoder([d for d in cfg.decoding.decoders if frame_prior_fitted or d not in FRAME_DECODERS])


def package(cfg: PipelineConfig, out: str | Path, r: int | None = None, decoder: str | None = None,
            kaggle_id: str | None = None, license: str = DEFAULT_LICENSE, weights_dtype: str = "float32") -> Path:
    """Assemble the upload folder `out` from round r's members (default: the last round); returns it.

    license: the licence dataset-metadata.json names (one of KAGGLE_DATASET_LICENSES). weights_dtype: how the
    members' weights are stored (WEIGHTS_DTYPES; bfloat16 halves the package, bench/results_dry_run.md)."""
    out = Path(out)
    r = check_round(cfg, cfg.rounds if r is None else r)
    if out.exists():
        raise StageError(f"{out} already exists: choose a new folder (a package is never overwritten)")
    if decoder is not None and decoder not in cfg.decoding.decoders:
        raise StageError(f"decoder {decoder!r} is not among the configured decoders {cfg.decoding.decoders}")
    if kaggle_id is not None and kaggle_id.count("/") != 1:
        raise StageError(f"--kaggle-id must look like USER/dataset-slug, got {kaggle_id!r}")
    if weights_dtype not in WEIGHTS_DTYPES:
        raise StageError(f"--weights-dtype {weights_dtype!r}: choose one of {', '.join(WEIGHTS_DTYPES)}")
    if license not in KAGGLE_DATASET_LICENSES:
        raise StageError(f"--license {license!r} is not a licence Kaggle accepts for datasets: "
                         f"{', '.join(KAGGLE_DATASET_LICENSES)} (default {DEFAULT_LICENSE}: that of the FathomNet "
                         "images the weights are trained on)")
    taxonomy = load_taxonomy()
    members = [cfg.layout.member_dir(r, s) for s in cfg.seeds]
    unfinished = [str(m) for m in members if not is_done(m) or not has_weights(m)]
    if unfinished:
        raise StageError(f"round {r} members are not finished (no done.json, or neither model.pt nor "
                         f"checkpoint.pt): {', '.join(unfinished)}")
    fitted = load_round(cfg, members, taxonomy)
    temperature, frame_prior = fitted.temperature, fitted.frame_prior
    decoder = decoder or default_decoder(cfg, frame_prior is not None)
    if decoder == "bayes_cal" and temperature is None:
        raise StageError("decoder bayes_cal needs validation predictions to fit a temperature; the members have none")
    if decoder in FRAME_DECODERS and frame_prior is None:
        raise StageError(f"decoder {decoder} needs labelled validation predictions to fit its frame weight; "
                         "the members have none")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for seed, member in zip(cfg.seeds, members):
            dest = tmp / "members" / f"seed_{seed}"
            dest.mkdir(parents=True)
            print(f"  member seed {seed}: {member} -> {dest.relative_to(tmp)}", flush=True)
            slim_weights(member, dest / WEIGHTS_FILE)
            if weights_dtype != "float32":
                cast_weights(dest / WEIGHTS_FILE, weights_dtype)
            for name in MEMBER_FILES:
                if (member / name).is_file():
                    shutil.copy2(member / name, dest / name)
            entries.append({"seed": seed, "dir": f"members/seed_{seed}", "source": str(member),
                            "model_sha256": sha256(dest / WEIGHTS_FILE)})
        shutil.copytree(SRC_DIR, tmp / "src", ignore=inference_only)
        atomic_write_json(tmp / "classes.json", list(taxonomy.names))
        decoding = {"sigma": cfg.decoding.sigma, "diffusion_alpha": cfg.decoding.diffusion_alpha,
                    "temperature": temperature}
        if frame_prior is not None:
            decoding.update(write_frame_prior(tmp, frame_prior))
        atomic_write_text(tmp / "pipeline.yaml", config_to_yaml(cfg))
        if kaggle_id is not None:
            atomic_write_json(tmp / "dataset-metadata.json", {
                "title": f"fathomnet ensemble {cfg.name}"[:50], "id": kaggle_id,
                "licenses": [{"name": license}]})
        manifest = {
            "format": MANIFEST_FORMAT, "name": cfg.name, "round": r,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "members": entries, "classes_file": "classes.json",
            "taxonomy_file": f"src/{DEFAULT_TAXONOMY_PATH.name}", "pipeline_config": "pipeline.yaml",
            "decoder": decoder, "decoders": list(cfg.decoding.decoders), "weights_dtype": weights_dtype,
            "decoding": decoding,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        os.rename(tmp, out)  # atomic on one file system; fails rather than replace a folder made meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packaged {len(entries)} members of round {r} (decoder {decoder}) into {out} ({size / 1e6:.1f} MB)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("package", __doc__)
    parser.add_argument("--out", required=True, help="folder to create (must not exist)")
    parser.add_argument("--round", type=int, default=None, help="ensemble round to package (default: the last)")
    parser.add_argument("--decoder", default=None, help="decoder the notebook uses (default: frame_bayes if configured and the members have "
                        "validation predictions, else bayes if configured)")
    parser.add_argument("--kaggle-id", default=None, help="USER/slug: also write dataset-metadata.json")
    parser.add_argument("--weights-dtype", default="float32", choices=WEIGHTS_DTYPES,
                        help="how the members' weights are stored (default float32; bfloat16 halves the package: "
                             "see bench/results_dry_run.md)")
    parser.add_argument("--license", default=DEFAULT_LICENSE, metavar="NAME",
                        help="licence named in dataset-metadata.json (default %(default)s: FathomNet's images are "
                             "CC BY-NC-ND 4.0, its annotations CC BY-ND 4.0, and the weights derive from both); "
                             "one of the names Kaggle accepts: " + ", ".join(KAGGLE_DATASET_LICENSES))

    def body(cfg, args):
        with open_run(cfg, wait=args.wait):
            package(cfg, args.out, args.round, args.decoder, args.kaggle_id, args.license, args.weights_dtype)

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
