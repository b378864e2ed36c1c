"""Fetch the frames of a COCO file and cut one ROI crop per annotation.

    python -m src.data.download ROOT/dataset_train.json ROOT/train [-n 16]

Writes, under OUT_DIR:
  images/<file_name>                        every frame's coco_url (http, https or file://)
  rois/<image_id>_<annotation_id>.png       the clipped box pixels (native size and aspect)
  annotations.csv                           one row per annotation (problem column says why a row has no crop)
  failures.csv                              every frame or annotation that failed, by id

Context views (3x, 5x the box, the full frame) are cut from the frames by the crop cache
(src.data.cache), not written here. Resumable: a frame is written under a temporary name and renamed
once complete and verified, so a file under its final name is whole; existing valid frames and crops
are not fetched or cut again. Exit status 1 when a frame could not be fetched or decoded; boxes that
cannot be cropped (zero area, outside the frame) are listed in failures.csv but do not fail the run.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import cv2
import numpy as np
import pandas as pd
import requests
from PIL import Image
from tqdm import tqdm

from src.artifacts import atomic_path, atomic_write_bytes, atomic_write_with
from src.data.coco import Coco, ImageDecodeError, image_filename, load_coco, read_rgb, verify_image_file
from src.data.crops import BadBoxError, clip_box, view_pixels

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 16
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # level 1: about the size of level 3-6, much faster


class DownloadError(RuntimeError):
    """A URL that could not be fetched; `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 30.0  # seconds: connect timeout, socket read timeout, and the cap on one attempt
    retries: int = 4  # further attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled each time (with jitter)


@dataclass(frozen=True)
class FetchResult:
    image_id: int
    url: str
    status: str  # 'fetched', 'present' (already there) or 'failed'
    error: str = ""
    attempts: int = 0


# ---------------------------------------------------------------- fetching one URL

def _fetch_http(url: str, tmp: Path, session: requests.Session, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        with session.get(url, stream=True, timeout=(timeout, timeout)) as response:
            if response.status_code != 200:
                retryable = response.status_code in RETRY_STATUS or response.status_code >= 500
                raise DownloadError(f"HTTP {response.status_code}", retryable)
            expected = response.headers.get("Content-Length")
            received = 0
            with open(tmp, "wb") as f:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    if time.monotonic() > deadline:
                        raise DownloadError(f"slower than the {timeout:g} s limit", True)
            if expected is not None and received != int(expected):
                raise DownloadError(f"truncated body: {received} of {expected} bytes", True)
    except requests.RequestException as e:
        raise DownloadError(f"{type(e).__name__}: {e}", True) from None


def _fetch_file(url: str, tmp: Path) -> None:
    source = Path(url2pathname(urlparse(url).path))
    try:
        shutil.copyfile(source, tmp)
    except FileNotFoundError:
        raise DownloadError(f"no such file {source}", False) from None
    except OSError as e:
        raise DownloadError(f"cannot read {source}: {e}", True) from None


def fetch_url(url: str, dest: Path, session: requests.Session, options: FetchOptions) -> int:
    """Fetch `url` to `dest` atomically, verified as an image, retrying with back-off; returns attempts.

    Raises DownloadError with the last reason when every attempt failed."""
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL scheme {scheme!r} in {url!r}", False)
    attempt = 0
    while True:
        attempt += 1
        try:
            with atomic_path(dest) as tmp:
                if scheme == "file":
                    _fetch_file(url, tmp)
                else:
                    _fetch_http(url, tmp, session, options.timeout)
                try:
                    verify_image_file(tmp)
                except ImageDecodeError as e:
                    raise DownloadError(f"received an invalid image ({str(e).split(': ', 1)[-1]})", True) from None
            return attempt
        except DownloadError as e:
            if not e.retryable or attempt > options.retries:
                raise DownloadError(f"{e} (after {attempt} attempt{'s' * (attempt > 1)})", False) from None
            time.sleep(options.backoff * 2 ** (attempt - 1) * random.uniform(1.0, 1.5))


def is_complete(path: Path) -> bool:
    """True when `path` exists and passes the cheap image check (so a resume skips it)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        verify_image_file(path)
    except ImageDecodeError:
        return False
    return True


def download_images(coco: Coco, images_dir: Path, concurrency: int = 8,
                    options: FetchOptions = FetchOptions(), progress: bool = True) -> list[FetchResult]:
    """Fetch every frame's coco_url into `images_dir` with a thread pool; one FetchResult per frame."""
    images_dir.mkdir(parents=True, exist_ok=True)
    local = threading.local()  # requests.Session is not thread-safe: one per worker thread

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["User-Agent"] = "fathomnet-hierarchy-downloader"
        return local.session

    def one(image_id: int, image: dict) -> FetchResult:
        url = str(image.get("coco_url") or image.get("flickr_url") or "")
        dest = images_dir / image_filename(image)
        if is_complete(dest):
            return FetchResult(image_id, url, "present")
        if not url:
            return FetchResult(image_id, url, "failed", "no coco_url", 0)
        try:
            attempts = fetch_url(url, dest, session(), options)
        except DownloadError as e:
            return FetchResult(image_id, url, "failed", str(e))
        return FetchResult(image_id, url, "fetched", attempts=attempts)

    results = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, image_id, image) for image_id, image in coco.images.items()]
        bar = tqdm(as_completed(futures), total=len(futures), desc="frames", unit="img", disable=not progress)
        for future in bar:
            results.append(future.result())
            bar.set_postfix(failed=sum(r.status == "failed" for r in results), refresh=False)
    return sorted(results, key=lambda r: r.image_id)


# ---------------------------------------------------------------- cropping

def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), PNG_PARAMS)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write_bytes(path, buffer.tobytes())


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:
        return None


def crop_frame(out_dir: Path, image_id: int, image: dict, annotations: list[dict], coco: Coco) -> list[dict]:
    """Cut the ROI crops of one frame's annotations; one annotations.csv row per annotation.

    Never raises for bad data: an undecodable frame or a bad box is reported in the row's `problem`."""
    frame_path = out_dir / "images" / image_filename(image)
    rows = []
    for ann in annotations:
        bbox = list(ann.get("bbox") or [None] * 4)
        rows.append({
            "annotation_id": int(ann["id"]), "image_id": image_id, "path": "",
            "label": coco.label_name(ann), "category_id": ann.get("category_id"),
            "bbox_x": bbox[0], "bbox_y": bbox[1], "bbox_w": bbox[2], "bbox_h": bbox[3],
            "frame_w": image.get("width"), "frame_h": image.get("height"), "problem": "",
        })
    if not frame_path.is_file():
        for row in rows:
            row["problem"] = "frame not downloaded"
        return rows

    def roi_path(row) -> Path:
        return out_dir / "rois" / f"{image_id}_{row['annotation_id']}.png"

    rgb = None
    if all(roi_path(row).is_file() for row in rows):
        size = _image_size(frame_path)  # resume: nothing to cut, only the true frame size is needed
    else:
        try:
            rgb = read_rgb(frame_path)
        except ImageDecodeError as e:
            for row in rows:
                row["problem"] = f"undecodable frame: {str(e).split(': ', 1)[-1]}"
            return rows
        size = (rgb.shape[1], rgb.shape[0])
    if size is not None:
        for row in rows:
            row["frame_w"], row["frame_h"] = size

    for ann, row in zip(annotations, rows):
        try:
            box = clip_box(ann.get("bbox"), row["frame_w"], row["frame_h"])
        except BadBoxError as e:
            row["problem"] = str(e)
            continue
        path = roi_path(row)
        row["path"] = path.relative_to(out_dir).as_posix()
        if not path.is_file() and rgb is not None:
            _write_png(path, view_pixels(rgb, box, "roi"))
    return rows


def crop_all(coco: Coco, out_dir: Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Cut the crops of every annotation (threads over frames); returns the annotations table."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in coco.annotations:
        by_image[int(ann["image_id"])].append(ann)
    (out_dir / "rois").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = []
        for image_id, annotations in by_image.items():
            image = coco.images.get(image_id)
            if image is None:
                rows.extend({"annotation_id": int(a["id"]), "image_id": image_id, "path": "",
                             "label": coco.label_name(a), "category_id": a.get("category_id"),
                             "problem": "image_id not in images"} for a in annotations)
                continue
            futures.append(pool.submit(crop_frame, out_dir, image_id, image, annotations, coco))
        for future in tqdm(as_completed(futures), total=len(futures), desc="crops", unit="img",
                           disable=not progress):
            rows.extend(future.result())
    columns = ["annotation_id", "image_id", "path", "label", "category_id", "bbox_x", "bbox_y", "bbox_w",
               "bbox_h", "frame_w", "frame_h", "problem"]
    table = pd.DataFrame(rows, columns=columns).sort_values("annotation_id", kind="stable")
    table["category_id"] = table["category_id"].astype("Int64")
    return table.reset_index(drop=True)


# ---------------------------------------------------------------- the whole step

def failures_table(fetches: list[FetchResult], table: pd.DataFrame) -> pd.DataFrame:
    """One row per failed frame and per annotation without a crop: kind, id, image_id, url, error."""
    rows = [{"kind": "image", "id": r.image_id, "image_id": r.image_id, "url": r.url, "error": r.error}
            for r in fetches if r.status == "failed"]
    failed_frames = {r.image_id for r in fetches if r.status == "failed"}
    for row in table[table["problem"] != ""].itertuples():
        if row.image_id in failed_frames and row.problem == "frame not downloaded":
            continue  # already reported once as its frame
        rows.append({"kind": "annotation", "id": row.annotation_id, "image_id": row.image_id, "url": "",
                     "error": row.problem})
    return pd.DataFrame(rows, columns=["kind", "id", "image_id", "url", "error"])


def download_split(coco_json: str | Path, out_dir: str | Path, concurrency: int = 8,
                   options: FetchOptions = FetchOptions(), progress: bool = True) -> int:
    """Fetch the frames, cut the crops, write annotations.csv and failures.csv; returns the exit status."""
    out_dir = Path(out_dir)
    coco = load_coco(coco_json)
    fetches = download_images(coco, out_dir / "images", concurrency, options, progress)
    table = crop_all(coco, out_dir, progress=progress)
    atomic_write_with(out_dir / "annotations.csv", lambda p: table.to_csv(p, index=False))
    failures = failures_table(fetches, table)
    atomic_write_with(out_dir / "failures.csv", lambda p: failures.to_csv(p, index=False))

    counts = {s: sum(r.status == s for r in fetches) for s in ("fetched", "present", "failed")}
    undecodable = table["problem"].str.startswith("undecodable").groupby(table["image_id"]).any().sum()
    n_crops = int((table["problem"] == "").sum())
    print(f"frames: {counts['fetched']} fetched, {counts['present']} already present, {counts['failed']} failed,"
          f" {undecodable} undecodable; ROIs: {n_crops} of {len(table)} cropped -> {out_dir / 'annotations.csv'}")
    if len(failures):
        print(f"{len(failures)} problems listed in {out_dir / 'failures.csv'}", file=sys.stderr)
    return 1 if counts["failed"] or undecodable else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.data.download",
        description="Download the frames of a COCO file (http, https, file://) and cut ROI crops.")
    parser.add_argument("coco_json", help="dataset_train.json or dataset_test.json")
    parser.add_argument("out_dir", help="split folder to fill, e.g. inputs/fathomnet2025/train")
    parser.add_argument("-n", "--concurrency", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt (default 30)")
    parser.add_argument("--retries", type=int, default=4, help="retries per frame (default 4)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        return download_split(args.coco_json, args.out_dir, args.concurrency,
                              FetchOptions(args.timeout, args.retries, args.backoff), progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
