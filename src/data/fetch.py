"""Get the competition's COCO files from Kaggle.

    python -m src.data.fetch --competition fathomnet-2025 --out inputs/fathomnet2025

Uses the kaggle package's API with the usual credentials (~/.kaggle/kaggle.json, KAGGLE_USERNAME and
KAGGLE_KEY, or KAGGLE_API_TOKEN). Without credentials or network it stops at once with FetchError saying
what to do; the files can always be placed in the folder by hand instead. The frames themselves are not
in the Kaggle download: fetch them with `python -m src.data.download`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import socket
import sys
import zipfile
from pathlib import Path

REQUIRED_FILES = ("dataset_train.json", "dataset_test.json")
KAGGLE_HOST = "www.kaggle.com"


class FetchError(RuntimeError):
    """The competition files could not be fetched; the message says what to do."""


def manual_steps(competition: str, out: Path) -> str:
    """What a person can do instead: set up credentials, or place the files by hand."""
    return (f"Either put your Kaggle API token in ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and "
            f"KAGGLE_KEY), accept the rules at https://www.kaggle.com/competitions/{competition}/rules and "
            f"run this again, or download {' and '.join(REQUIRED_FILES)} yourself and place them in {out}/.")


def kaggle_api(competition: str, out: Path, check_host: str | None = KAGGLE_HOST, timeout: float = 5.0):
    """An authenticated KaggleApi, or FetchError (never kaggle's printed help and SystemExit)."""
    chatter = io.StringIO()  # importing kaggle already tries to authenticate and prints set-up help
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ModuleNotFoundError as e:
        raise FetchError(f"the kaggle package cannot be imported (missing module {e.name!r}): "
                         f"pip install -r requirements.txt. {manual_steps(competition, out)}") from None
    except SystemExit:
        raise FetchError(f"no Kaggle credentials found. {manual_steps(competition, out)}") from None
    except Exception as e:  # e.g. a network error while checking an access token
        raise FetchError(f"Kaggle authentication failed ({type(e).__name__}: {e}). "
                         f"{manual_steps(competition, out)}") from None
    if check_host:
        try:
            socket.create_connection((check_host, 443), timeout=timeout).close()
        except OSError as e:
            raise FetchError(f"cannot reach {check_host} ({e}): no network? {manual_steps(competition, out)}") from None
    return api


def _extract(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (out / member).resolve()
            if out.resolve() not in target.parents and target != out.resolve():
                raise FetchError(f"{archive}: refusing to extract {member!r} outside {out}")
        zf.extractall(out)


def fetch_competition(competition: str, out: str | Path, force: bool = False, api=None) -> list[Path]:
    """Download and unpack the competition files into `out`; returns the paths of REQUIRED_FILES.

    Nothing is fetched when they are already there (unless `force`). `api` is a KaggleApi-like object
    (for tests); by default one is made and authenticated by `kaggle_api`."""
    out = Path(out)
    required = [out / name for name in REQUIRED_FILES]
    if not force and all(p.is_file() for p in required):
        return required
    out.mkdir(parents=True, exist_ok=True)
    api = api if api is not None else kaggle_api(competition, out)
    try:
        api.competition_download_files(competition, path=str(out), force=force, quiet=True)
    except Exception as e:  # HTTP 403 (rules not accepted), 404, network errors...
        raise FetchError(f"downloading competition {competition!r} failed ({type(e).__name__}: {e}). "
                         f"{manual_steps(competition, out)}") from None
    for archive in sorted(out.glob("*.zip")):
        try:
            _extract(archive, out)
        except zipfile.BadZipFile:
            raise FetchError(f"{archive} is not a valid zip: delete it and run this again") from None
    missing = [p.name for p in required if not p.is_file()]
    if missing:
        raise FetchError(f"the download of {competition!r} has no {missing} in {out}. {manual_steps(competition, out)}")
    return required


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--competition", default="fathomnet-2025", help="Kaggle competition slug")
    parser.add_argument("--out", required=True, help="folder for dataset_train.json / dataset_test.json")
    parser.add_argument("--force", action="store_true", help="download again even when the files are there")
    args = parser.parse_args(argv)
    try:
        paths = fetch_competition(args.competition, args.out, force=args.force)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
