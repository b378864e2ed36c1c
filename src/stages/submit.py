"""Stage: decode the final ensemble into submission CSVs, one per decoder, validated and scored.

    python -m src.stages.submit CONFIG.yaml [overrides] [--round R] [--kaggle-submit [--decoder D] [--message M]]

Writes submissions/<name>_<decoder>.csv (every test annotation once, names checked; beside it
.<name>_<decoder>.csv.run.json records the run folder that wrote it, and a run never replaces a file written
by another run of the same name under another output_root), and under the run
folder submit/scores.{json,md}: per decoder the validation mean distance (when members have a
validation split) and, when `solution` is configured, the local-leaderboard score of the test CSV.
Decoders: argmax, vote, bayes (least expected distance), bayes_cal (after temperature scaling fitted
on validation), diffusion (taxonomy graph diffusion, a = decoding.diffusion_alpha), frame_bayes and
frame_argmax (frame-aware: each ROI's distribution combined with its frame's other ROIs through a label
co-occurrence prior of the training frames, its weight fitted on the validation frames); the
`decoding` section of the config picks them. Members written with test-time views (train.tta_views)
are decoded from their mean over the views.
`--kaggle-submit` uploads one CSV with the kaggle API (needs credentials and internet).
Members that predicted test ROIs without pixels (frames missing or undecodable: black crops; their
done.json counts them) stop the stage unless the config sets allow_missing_test.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.artifacts import atomic_write_json, atomic_write_text
from src.decoding import decode_ensemble, preferred_decoder
from src.run_files import DONE_FILE, is_done
from src.score import mean_distance, read_solution, score_frames
from src.stages.cli import StageError, check_round, format_table, run_cli, stage_parser
from src.stages.pipeline_config import PipelineConfig, new_run_name
from src.stages.predictions import load_round, load_taxonomy_and_distance
from src.stages.state import open_run
from src.submission import coco_annotation_ids, labels_frame, read_label_csv, validate_submission, write_submission


@dataclass
class RoundEvaluation:
    """Round r's ensemble decoded with every configured decoder, and the mean distances it scores."""

    round: int
    temperature: float | None  # fitted on validation (None without validation predictions)
    test_ids: np.ndarray  # (N,) test annotation ids, sorted
    test_labels: dict[str, np.ndarray]  # decoder -> (N,) decoded class indices
    skipped: dict[str, str]  # decoder -> why it could not run
    val: dict[str, float] = field(default_factory=dict)  # decoder -> validation mean distance
    test: dict[str, float] = field(default_factory=dict)  # decoder -> test mean distance (solution known)
    test_accuracy: dict[str, float] = field(default_factory=dict)  # decoder -> exact test accuracy (solution known)
    distinct: dict[str, int] = field(default_factory=dict)  # decoder -> distinct labels it predicts on the test
    frame_weights: dict[str, float] | None = None  # frame decoder -> w fitted on validation


def evaluate_round(cfg: PipelineConfig, r: int) -> RoundEvaluation:
    """Decode round r's ensemble on validation and test with every decoder; score what has known labels."""
    members = [cfg.layout.member_dir(r, s) for s in cfg.seeds]
    unfinished = [str(m) for m in members if not is_done(m)]
    if unfinished:
        raise StageError(f"round {r} members are not finished: {', '.join(unfinished)}")
    return evaluate_members(cfg, members, r)


def evaluate_members(cfg: PipelineConfig, members: list[Path], r: int = 0) -> RoundEvaluation:
    """Decode the ensemble of finished `members` (run folders) with the decoders of cfg.decoding, fitting
    their parameters on the members' validation predictions; score what has known labels. `r` only labels
    the result."""
    taxonomy, D = load_taxonomy_and_distance()
    loaded = load_round(cfg, members, taxonomy)
    val, test, temperature, frame_prior = loaded.val, loaded.test, loaded.temperature, loaded.frame_prior
    if test is None:
        raise StageError(f"members {members[0]}, ... have no test_probs.npz")
    d = cfg.decoding
    val_scores = {}
    if val is not None and val.labels is not None:
        keep = val.labels >= 0
        decoded = decode_ensemble(val, d.decoders, taxonomy, d.sigma, d.diffusion_alpha, temperature, frame_prior)
        val_scores = {k: mean_distance(val.labels[keep], v[keep], D) for k, v in decoded.labels.items()}
    decoded = decode_ensemble(test, d.decoders, taxonomy, d.sigma, d.diffusion_alpha, temperature, frame_prior)
    test_scores, test_accuracy = {}, {}
    if cfg.solution:
        truth = read_solution(cfg.solution, test.annotation_id, taxonomy)
        test_scores = {k: mean_distance(truth, v, D) for k, v in decoded.labels.items()}
        test_accuracy = {k: float(np.mean(truth == v)) for k, v in decoded.labels.items()}
    # A collapsed model predicts a handful of labels; real competition models use 78-79 of the 79.
    distinct = {k: int(len(np.unique(v))) for k, v in decoded.labels.items()}
    return RoundEvaluation(r, temperature, test.annotation_id, decoded.labels, decoded.skipped, val_scores, test_scores,
                           test_accuracy, distinct, frame_prior.weights if frame_prior else None)


def check_test_pixels(cfg: PipelineConfig, r: int) -> None:
    """StageError when a member of round r predicted test ROIs from black crops (frames missing or
    undecodable), unless cfg.allow_missing_test (then a warning)."""
    for seed in cfg.seeds:
        done = cfg.layout.member_dir(r, seed) / DONE_FILE
        missing = json.loads(done.read_text()).get("test_missing_pixels", 0) if done.is_file() else 0
        if not missing:
            continue
        what = (f"{done.parent} predicted {missing} test ROIs without pixels (frames missing or undecodable) "
                "from black crops")
        if not cfg.allow_missing_test:
            raise StageError(f"{what}; no submission is written from them: fetch the test frames (python -m "
                             f"src.data.download) and train a new run (name={new_run_name(cfg)}), or set "
                             "allow_missing_test: true")
        print(f"warning: {what} (allow_missing_test)", flush=True)
        return


def owner_file(path: Path) -> Path:
    """The file beside a submission CSV that records the run which wrote it (the CSV itself holds only the
    competition's two columns)."""
    return path.with_name(f".{path.name}.run.json")


def check_submission_owner(cfg: PipelineConfig, path: Path) -> None:
    """StageError when `path` exists and was written by another run (a run of the same name under another
    output_root), or is not a regular file; a CSV written before submissions recorded their run is replaced
    with a warning."""
    if path.exists() and not path.is_file():
        raise StageError(f"{path} exists and is not a regular file: set another submissions_dir")
    if not path.exists():
        return
    run = str(cfg.layout.root.resolve())
    try:
        owner = json.loads(owner_file(path).read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):
        print(f"warning: replacing {path}, which does not record the run that wrote it", flush=True)
        return
    if owner != run:
        raise StageError(f"{path} was written by the run {owner}, not by this one ({run}): submissions of runs "
                         f"with the same name would overwrite each other; set another name (e.g. "
                         f"name={new_run_name(cfg)}) or submissions_dir")


def submit(cfg: PipelineConfig, r: int | None = None) -> list[dict]:
    """Write and validate one submission per decoder from round r (default: the last round); score them."""
    r = check_round(cfg, cfg.rounds if r is None else r)
    check_test_pixels(cfg, r)
    taxonomy, _ = load_taxonomy_and_distance()
    evaluation = evaluate_round(cfg, r)
    expected = coco_annotation_ids(Path(cfg.data_root) / "dataset_test.json")
    solution = read_label_csv(cfg.solution, name_columns=("concept_name", "name")) if cfg.solution else None
    for decoder in evaluation.test_labels:  # every file checked before any is written
        check_submission_owner(cfg, cfg.layout.submission(decoder))
    rows = []
    for decoder, labels in evaluation.test_labels.items():
        path = cfg.layout.submission(decoder)
        frame = labels_frame(evaluation.test_ids, labels, taxonomy)
        write_submission(path, frame["annotation_id"], frame["concept_name"])
        atomic_write_json(owner_file(path), {"run": str(cfg.layout.root.resolve()), "round": r, "decoder": decoder})
        problems = validate_submission(path, expected, taxonomy)
        if problems:
            raise StageError(f"{path} is not a valid submission: {'; '.join(problems)}")
        row = {"decoder": decoder, "file": str(path), "val_distance": evaluation.val.get(decoder)}
        if solution is not None:
            scored = score_frames(solution, read_label_csv(path), taxonomy)
            row.update(test_score=scored["score"], test_accuracy=scored["accuracy"])
        rows.append(row)
    for decoder, why in evaluation.skipped.items():
        rows.append({"decoder": decoder, "file": f"skipped: {why}"})
    columns = ["decoder", "val_distance", "test_score", "test_accuracy", "file"]
    table = format_table(rows, [c for c in columns if any(c in row for row in rows)])
    header = f"# {cfg.name}: submissions from round {r} ({len(cfg.seeds)} members)\n\n"
    if evaluation.temperature is not None:
        header += f"temperature fitted on validation: {evaluation.temperature:.3f}\n\n"
    scores = {"round": r, "temperature": evaluation.temperature, "rows": rows}
    if evaluation.frame_weights is not None:
        header += f"frame weights fitted on validation: {evaluation.frame_weights}\n\n"
        scores["frame_weights"] = evaluation.frame_weights
    atomic_write_text(cfg.layout.submit_dir / "scores.md", header + table + "\n")
    atomic_write_json(cfg.layout.submit_dir / "scores.json", scores)
    print(table)
    return rows


def kaggle_submit(path: Path, competition: str, message: str) -> None:
    """Upload a CSV with the kaggle API, imported lazily; StageError offline or without credentials."""
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as err:
        raise StageError(f"the kaggle package is not importable ({err}); pip install kaggle six") from None
    except SystemExit:  # kaggle exits instead of raising when no credentials are configured
        raise StageError("kaggle credentials not found: save an API token as ~/.kaggle/access_token "
                         "(or kaggle.json, or set KAGGLE_API_TOKEN)") from None
    try:
        api.competition_submit(str(path), message, competition)
    except Exception as err:  # network and API errors come in many types: report the first line
        raise StageError(f"kaggle upload of {path} failed (offline?): {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    print(f"uploaded {path} to {competition}: {message!r}")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("submit", __doc__)
    parser.add_argument("--round", type=int, default=None, help="ensemble round to decode (default: the last)")
    parser.add_argument("--kaggle-submit", action="store_true", help="upload one submission with the kaggle API")
    parser.add_argument("--decoder", default=None, help="which decoder's CSV to upload (default: frame_bayes if "
                        "written, else bayes if written)")
    parser.add_argument("--message", default=None, help="submission message (default from kaggle.message)")

    def body(cfg, args):
        last = args.round is None or args.round == cfg.rounds  # the pipeline's submit step
        with open_run(cfg, "submit" if last else None, args.wait):
            rows = submit(cfg, args.round)
        if args.kaggle_submit:
            written = [row["decoder"] for row in rows if not str(row["file"]).startswith("skipped")]
            decoder = args.decoder or preferred_decoder(written)
            if decoder not in written:
                raise StageError(f"no submission for decoder {decoder!r}; written: {', '.join(written)}")
            message = args.message or cfg.kaggle.message.format(name=cfg.name, decoder=decoder)
            kaggle_submit(cfg.layout.submission(decoder), cfg.kaggle.competition, message)

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
