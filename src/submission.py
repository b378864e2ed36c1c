"""Submission files: `annotation_id,concept_name`, one row per test annotation, sorted by id.

    python -m src.submission validate FILE [--test-json dataset_test.json]

checks a file before upload: a readable CSV with exactly the two columns, plain integer ids (not 4.0,
4e0 or " 4 "), every test id exactly once (when the test COCO file is given) and every name one of the
79 concepts. Exit status 0 valid, 1 invalid, 2 the test COCO file cannot be read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from src.artifacts import atomic_write_with
from src.data.coco import load_coco
from src.taxonomy import Taxonomy, load_taxonomy

SUBMISSION_COLUMNS = ("annotation_id", "concept_name")


class LabelFileError(ValueError):
    """A label CSV (submission or solution) cannot be read as one; the message says why."""


def _shown(name: str, limit: int = 40) -> str:
    """A column name or cell fit for a one-line message (control characters escaped, long values cut)."""
    text = name if name.isprintable() else repr(name)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def read_label_csv(path: str | Path, name_columns: Iterable[str] = ("concept_name",),
                   exact_columns: bool = False) -> pd.DataFrame:
    """Read a CSV of annotation ids and concept names into columns annotation_id (int64), concept_name (str).

    `name_columns` lists the accepted names of the concept column, first match wins (the answer key
    of the competition calls it `name`); other columns are ignored unless `exact_columns`, which demands
    exactly annotation_id,concept_name (the pre-upload check). Ids must be plain integers (`4`, not `4.0`,
    `4e0` or ` 4 `) within int64. Raises LabelFileError with one line on any problem."""
    path = Path(path)
    if path.is_dir():
        raise LabelFileError(f"{path}: is a folder, not a CSV file")
    if not path.is_file():
        raise LabelFileError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            if b"\0" in f.read(1 << 16):
                raise LabelFileError(f"{path}: binary file (NUL bytes), not a CSV")
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise LabelFileError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise LabelFileError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise LabelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    found = ", ".join(_shown(str(c)) for c in header)
    duplicated = sorted({str(c) for c in header if header.count(c) > 1})
    if duplicated:
        raise LabelFileError(f"{path}: duplicated column name(s): {', '.join(map(_shown, duplicated))}")
    name_columns = tuple(name_columns)
    name_col = next((c for c in name_columns if c in frame.columns), None)
    if exact_columns and sorted(header) != sorted(SUBMISSION_COLUMNS):
        raise LabelFileError(f"{path}: needs exactly the columns {','.join(SUBMISSION_COLUMNS)}; found {found}")
    if "annotation_id" not in frame.columns or name_col is None:
        raise LabelFileError(
            f"{path}: needs columns annotation_id and one of {', '.join(name_columns)}; found {found}")
    if frame.empty:
        raise LabelFileError(f"{path}: no rows")
    ids = _parse_plain_ids(frame["annotation_id"], path)
    # categorical names: each distinct name is hashed once, later lookups are integer takes
    out = pd.DataFrame({"annotation_id": ids, "concept_name": frame[name_col].astype("category")})
    duplicated = out["annotation_id"][out["annotation_id"].duplicated()]
    if len(duplicated):
        raise LabelFileError(
            f"{path}: {duplicated.nunique()} duplicated annotation_id(s), e.g. {int(duplicated.iloc[0])}")
    return out


def _parse_plain_ids(text: pd.Series, path: str | Path) -> pd.Series:
    """Strings of plain decimal integers (optional minus sign) -> int64; LabelFileError naming the first bad one."""
    plain = text.str.fullmatch(r"-?[0-9]+")
    if not plain.all():
        raise LabelFileError(f"{path}: annotation_id must be a plain integer, got {_shown(text[~plain].iloc[0])!r}")
    digits = text.str.lstrip("-").str.lstrip("0").str.len()
    for value in text[digits >= 19]:  # int64 holds every 18-digit number; check the longer ones exactly
        if not -2**63 <= int(value) < 2**63:
            raise LabelFileError(f"{path}: annotation_id {_shown(value)} is out of range (at most 2^63 - 1)")
    return text.astype("int64")


def coco_annotation_ids(test_json: str | Path) -> list[int]:
    """Annotation ids of a COCO test file (FileNotFoundError / ValueError with one line when it is not one)."""
    return sorted(int(a["id"]) for a in load_coco(test_json).annotations)


def write_submission(path: str | Path, annotation_ids, concept_names) -> Path:
    """Write a submission CSV (sorted by annotation_id) atomically; returns the path."""
    frame = pd.DataFrame({"annotation_id": list(annotation_ids), "concept_name": list(concept_names)})
    if frame["annotation_id"].duplicated().any():
        raise ValueError("write_submission: duplicated annotation ids")
    frame = frame.astype({"annotation_id": "int64"}).sort_values("annotation_id")
    return atomic_write_with(path, lambda tmp: frame.to_csv(tmp, index=False))


def labels_frame(annotation_id, labels, taxonomy: Taxonomy) -> pd.DataFrame:
    """Submission rows (annotation_id, concept_name) of class indices in the taxonomy's order."""
    return pd.DataFrame({"annotation_id": np.asarray(annotation_id).astype(np.int64),
                         "concept_name": np.asarray(taxonomy.names, dtype=object)[labels]})


def validate_submission(submission: str | Path | pd.DataFrame, expected_ids: Iterable[int] | None = None,
                        taxonomy: Taxonomy | None = None) -> list[str]:
    """Problems that would make a submission invalid or lose points; an empty list means valid."""
    taxonomy = taxonomy or load_taxonomy()
    try:
        frame = submission if isinstance(submission, pd.DataFrame) else read_label_csv(submission, exact_columns=True)
    except LabelFileError as err:
        return [str(err)]
    problems = []
    unknown = frame.loc[taxonomy.indices(frame["concept_name"]) < 0, "concept_name"]
    if len(unknown):
        problems.append(f"{len(unknown)} row(s) name no known concept (each scores 12), e.g. {unknown.iloc[0]!r}")
    if expected_ids is not None:
        expected, got = set(int(i) for i in expected_ids), set(frame["annotation_id"].tolist())
        if missing := sorted(expected - got):
            problems.append(f"{len(missing)} test annotation id(s) missing, e.g. {missing[:5]}")
        if extra := sorted(got - expected):
            problems.append(f"{len(extra)} annotation id(s) not in the test set, e.g. {extra[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.submission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check a submission CSV before upload")
    check.add_argument("file", help="submission CSV (annotation_id,concept_name)")
    check.add_argument("--test-json", help="the competition's dataset_test.json: every test id must appear once")
    args = parser.parse_args(argv)
    try:
        expected = coco_annotation_ids(args.test_json) if args.test_json else None
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = validate_submission(args.file, expected)
    if problems:
        for problem in problems:
            print(f"invalid: {problem}", file=sys.stderr)
        return 1
    rows = len(read_label_csv(args.file, exact_columns=True))
    print(f"valid: {args.file} ({rows} rows{', every test id once' if expected is not None else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
