"""Fetch the frames of a COCO file and cut one ROI crop per annotation.

    python -m src.data.download ROOT/dataset_train.json ROOT/train [-n 16]

Writes, under OUT_DIR:
  images/<file_name>                        every frame's coco_url (http, https or file://); images whose
                                            file names clash (cam1/x.png, cam2/x.png) get <id>_x.png
  rois/<image_id>_<annotation_id>.png       the clipped box pixels (native size and aspect)
  annotations.csv                           one row per annotation (problem column says why a row has no crop)
  failures.csv                              every frame or annotation that failed, by id
  manifest.json                             what each frame was fetched from and each crop was cut from

Context views (3x, 5x the box, the full frame) are cut from the frames by the crop cache
(src.data.cache), not written here. Each frame is fetched and then cut at once. A frame is written under a temporary name and renamed once
fully decoded. A resume reuses a frame only while it matches both its manifest record and its source
(size and mtime for file://; ETag, Last-Modified and Content-Length from a HEAD request for http; a
source that cannot be reached keeps the local copy, with a warning), and a crop only while its frame,
box and size are unchanged; a source that changed or is gone is fetched again (its old copy removed if
that fails). Ctrl-C stops within a second (exit 130), writing annotations.csv, failures.csv and the
manifest for what is done; the same command resumes, and removes the temporary files a killed run left.
Exit status 1 when a frame could not be fetched or decoded; boxes that cannot be cropped (zero or
negative size, outside the frame) are listed in failures.csv but do not fail the run; 2 for an unusable
COCO file or output folder.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse
from urllib.request import url2pathname

import cv2
import numpy as np
import pandas as pd
import requests
from PIL import Image
from tqdm import tqdm

from src.artifacts import atomic_path, atomic_write_bytes, atomic_write_text, atomic_write_with, remove_stale_temps
from src.data.coco import Coco, ImageDecodeError, decode_check, load_coco, read_rgb
from src.data.crops import BadBoxError, clip_box, view_pixels

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 1 << 16
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # level 1: about the size of level 3-6, much faster
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SAVE_EVERY_S = 10.0  # the manifest is also saved during a run, so a killed run loses little
POLL_S = 0.1  # how often a worker waiting on a transfer looks for Ctrl-C
USABLE = ("fetched", "present", "unchecked")  # frame statuses whose local file is cut
INTERRUPTED = "not processed yet (download interrupted)"  # the problem of rows that Ctrl-C left undone


class DownloadError(RuntimeError):
    """A URL that could not be fetched; `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a download, raised after what was done has been written."""


class _Stopped(Exception):
    """Ctrl-C was pressed: a worker drops what it is doing."""


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 30.0  # seconds for one attempt, all of it: connect, headers and the whole body
    retries: int = 4  # further attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled each time (with jitter)


@dataclass(frozen=True)
class FetchResult:
    image_id: int
    url: str
    status: str  # 'fetched', 'present' (reused), 'unchecked' (reused: source unreachable), 'failed', 'interrupted'
    error: str = ""
    attempts: int = 0
    record: dict | None = None  # the frame's manifest record when its local file is usable


class Manifest:
    """manifest.json of a split folder: per frame what it was fetched from, per crop what it was cut from.

    Changed only by the thread that runs the download (workers read it); written atomically. An
    unreadable or older manifest counts as empty: everything is then checked again."""

    def __init__(self, path: Path):
        self.path, self.frames, self.crops, self.complete = path, {}, {}, False
        self._saved = time.monotonic()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("version") == MANIFEST_VERSION:
            self.frames, self.crops = dict(data.get("frames") or {}), dict(data.get("crops") or {})
            self.complete = bool(data.get("complete"))

    def save(self, complete: bool | None = None, every: float = 0.0) -> None:
        """Write the manifest (at most once per `every` seconds); `complete` marks a run that went through."""
        if complete is not None:
            self.complete = complete
        if time.monotonic() - self._saved < every:
            return
        data = {"version": MANIFEST_VERSION, "complete": self.complete, "frames": self.frames, "crops": self.crops}
        atomic_write_text(self.path, json.dumps(data, separators=(",", ":")) + "\n")
        self._saved = time.monotonic()


def download_complete(split_dir: str | Path) -> bool:
    """True when the last download into `split_dir` went through every frame (not stopped by Ctrl-C or a kill)."""
    return (Path(split_dir) / "annotations.csv").is_file() and Manifest(Path(split_dir) / MANIFEST).complete


# ---------------------------------------------------------------- fetching one URL

def _run_until(work: Callable[[threading.Event], object], deadline: float, stop: threading.Event, limit: float):
    """Run `work(abandoned)` in a daemon thread; wait for it until `deadline` or Ctrl-C (`stop`) at most.

    A transfer still running then is abandoned (its event set; it cleans up after itself when it ends),
    so neither a server that drips bytes nor a stuck socket holds a worker past its deadline."""
    outcome: dict = {}
    abandoned = threading.Event()

    def target():
        try:
            outcome["value"] = work(abandoned)
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while True:
        thread.join(min(POLL_S, max(0.0, deadline - time.monotonic())))
        if not thread.is_alive():
            break
        if stop.is_set():
            abandoned.set()
            raise _Stopped
        if time.monotonic() >= deadline:
            abandoned.set()
            raise DownloadError(f"slower than the {limit:g} s limit", True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _http_stamp(headers) -> dict:
    """The validators of an HTTP response: what says whether the source changed."""
    stamp = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"),
             "content_length": headers.get("Content-Length")}
    return {k: v for k, v in stamp.items() if v is not None}


def _http_get(url: str, tmp: Path, session: requests.Session, timeout: float, abandoned: threading.Event) -> dict:
    try:
        with session.get(url, stream=True, timeout=(timeout, timeout)) as response:
            if response.status_code != 200:
                retryable = response.status_code in RETRY_STATUS or response.status_code >= 500
                raise DownloadError(f"HTTP {response.status_code}", retryable)
            expected = response.headers.get("Content-Length")
            received = 0
            with open(tmp, "wb") as f:
                for chunk in response.iter_content(CHUNK):
                    if abandoned.is_set():
                        return {}
                    f.write(chunk)
                    received += len(chunk)
            if expected is not None and received != int(expected):
                raise DownloadError(f"truncated body: {received} of {expected} bytes", True)
            return _http_stamp(response.headers)
    except requests.RequestException as e:
        raise DownloadError(f"{type(e).__name__}: {e}", True) from None
    finally:
        if abandoned.is_set():
            tmp.unlink(missing_ok=True)


def _http_head(url: str, session: requests.Session, timeout: float, abandoned: threading.Event) -> dict | None:
    """The source's validators now; None when it is gone (404, 410)."""
    try:
        response = session.head(url, timeout=(timeout, timeout), allow_redirects=True)
    except requests.RequestException as e:
        raise DownloadError(f"{type(e).__name__}: {e}", True) from None
    if response.status_code in (404, 410):
        return None
    if response.status_code != 200:
        raise DownloadError(f"HTTP {response.status_code} to HEAD", False)
    return _http_stamp(response.headers)


def _file_source(url: str) -> Path:
    return Path(url2pathname(urlparse(url).path))


def _file_stamp(source: Path) -> dict:
    stat = source.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _file_copy(source: Path, tmp: Path, abandoned: threading.Event) -> dict:
    try:
        stamp = _file_stamp(source)  # taken first: a source changed while copying is fetched again next time
        shutil.copyfile(source, tmp)
        return stamp
    except FileNotFoundError:
        raise DownloadError(f"no such file {source}", False) from None
    except OSError as e:
        raise DownloadError(f"cannot read {source}: {e}", True) from None
    finally:
        if abandoned.is_set():
            tmp.unlink(missing_ok=True)


class _Sessions:
    """One requests.Session per worker thread (a Session is not thread-safe), replaced after a failure
    (an abandoned transfer may still be using it)."""

    def __init__(self):
        self.local = threading.local()

    def get(self) -> requests.Session:
        if getattr(self.local, "session", None) is None:
            self.local.session = requests.Session()
            self.local.session.headers["User-Agent"] = "fathomnet-hierarchy-downloader"
        return self.local.session

    def drop(self) -> None:
        self.local.session = None


def fetch_frame(url: str, dest: Path, options: FetchOptions, stop: threading.Event | None = None,
                sessions: _Sessions | None = None) -> tuple[dict, int]:
    """Fetch `url` to `dest` atomically, fully decoded, retrying with back-off; returns (manifest record, attempts).

    Each attempt has `options.timeout` seconds in all. Raises DownloadError with the last reason when
    every attempt failed."""
    stop, sessions = stop or threading.Event(), sessions or _Sessions()
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL scheme {scheme!r} in {url!r}", False)
    attempt = 0
    while True:
        attempt += 1
        try:
            with atomic_path(dest) as tmp:
                if scheme == "file":
                    work = partial(_file_copy, _file_source(url), tmp)
                else:
                    work = partial(_http_get, url, tmp, sessions.get(), options.timeout)
                stamp = _run_until(work, time.monotonic() + options.timeout, stop, options.timeout)
                try:
                    decode_check(tmp, dest.name)
                except ImageDecodeError as e:
                    raise DownloadError(f"received an invalid image: {e}", True) from None
            stat = dest.stat()
            return {"file": dest.name, "url": url, "source": stamp, "local": [stat.st_size, stat.st_mtime_ns]}, attempt
        except DownloadError as e:
            sessions.drop()
            if not e.retryable or attempt > options.retries:
                raise DownloadError(f"{e} (after {attempt} attempt{'s' * (attempt > 1)})", False) from None
            if stop.wait(options.backoff * 2 ** (attempt - 1) * random.uniform(1.0, 1.5)):
                raise _Stopped from None


def _source_now(url: str, options: FetchOptions, stop: threading.Event, sessions: _Sessions) -> dict | None:
    """The source's stamp now (None when it is gone); DownloadError when it cannot be asked."""
    if urlparse(url).scheme.lower() == "file":
        try:
            return _file_stamp(_file_source(url))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DownloadError(f"cannot stat {_file_source(url)}: {e}", True) from None
    try:
        return _run_until(partial(_http_head, url, sessions.get(), options.timeout),
                          time.monotonic() + options.timeout, stop, options.timeout)
    except DownloadError:
        sessions.drop()
        raise


def _matches_local(record: dict, dest: Path, url: str) -> bool:
    """True when `dest` is the very file that `record` describes (same URL, name, size and mtime)."""
    if not isinstance(record, dict) or not isinstance(record.get("source"), dict):
        return False  # an edited or damaged manifest: check the frame again
    try:
        stat = dest.stat()
    except OSError:
        return False
    return (record.get("url") == url and record.get("file") == dest.name
            and record.get("local") == [stat.st_size, stat.st_mtime_ns])


def check_or_fetch(image_id: int, url: str, dest: Path, record: dict | None, options: FetchOptions,
                   stop: threading.Event, sessions: _Sessions) -> FetchResult:
    """Reuse the local frame while it matches its record and its source, else fetch it."""
    known = record is not None and _matches_local(record, dest, url)
    if known:
        try:
            now = _source_now(url, options, stop, sessions)
        except DownloadError as e:
            return FetchResult(image_id, url, "unchecked", f"source not checked ({e})", record=record)
        common = [k for k in record["source"] if now is not None and k in now]
        if now is not None and not common:
            return FetchResult(image_id, url, "unchecked", "the source gives no size, date or ETag", record=record)
        if now is not None and all(record["source"][k] == now[k] for k in common):
            return FetchResult(image_id, url, "present", record=record)
    stale = dest.exists()  # changed or gone at its source, or a file no record vouches for
    try:
        if not url:
            raise DownloadError("no coco_url", False)
        record, attempts = fetch_frame(url, dest, options, stop, sessions)
    except DownloadError as e:
        if stale:
            dest.unlink(missing_ok=True)  # never leave a frame that does not match its source in use
        return FetchResult(image_id, url, "failed", str(e))
    return FetchResult(image_id, url, "fetched", attempts=attempts, record=record)


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


def _crop_signature(frame: os.stat_result, bbox) -> str:
    """What a ROI crop was cut from: the frame file (size, mtime) and the box."""
    key = [frame.st_size, frame.st_mtime_ns, bbox, "path", None]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]


def _annotation_rows(image_id: int, image: dict | None, annotations: list[dict], coco: Coco, problem: str = "") -> list[dict]:
    rows = []
    for ann in annotations:
        bbox = list(ann.get("bbox") or [None] * 4)
        rows.append({
            "annotation_id": int(ann["id"]), "image_id": image_id, "path": "",
            "label": coco.label_name(ann), "category_id": ann.get("category_id"),
            "bbox_x": bbox[0], "bbox_y": bbox[1], "bbox_w": bbox[2], "bbox_h": bbox[3],
            "frame_w": (image or {}).get("width"), "frame_h": (image or {}).get("height"), "problem": problem,
        })
    return rows


def crop_frame(out_dir: Path, image_id: int, image: dict, annotations: list[dict], coco: Coco,
               recorded: Mapping[str, str] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Cut the ROI crops of one frame's annotations.

    Returns one annotations.csv row per annotation and the signature of every crop file of the rows
    (see _crop_signature). An existing crop file is kept only when `recorded` (path -> signature, from
    the manifest) holds the same signature. Never raises for bad data: an undecodable frame or a bad box
    is reported in the row's `problem`."""
    recorded = recorded if recorded is not None else {}
    frame_path = out_dir / "images" / coco.frame_name(image_id)
    rows = _annotation_rows(image_id, image, annotations, coco)
    try:
        frame_stat = frame_path.stat()
    except FileNotFoundError:
        return _annotation_rows(image_id, image, annotations, coco, "frame not downloaded"), {}

    def outputs(row, bbox) -> dict[str, tuple[Path, str]]:
        path = out_dir / "rois" / f"{image_id}_{row['annotation_id']}.png"
        return {"path": (path, _crop_signature(frame_stat, bbox))}

    signatures: dict[str, str] = {}

    def kept(path: Path, signature: str) -> bool:
        rel = path.relative_to(out_dir).as_posix()
        return signatures.get(rel, recorded.get(rel)) == signature and path.is_file()

    def boxes(size) -> list:
        out = []
        for ann in annotations:
            try:
                out.append(clip_box(ann.get("bbox"), *size))
            except BadBoxError as e:
                out.append(e)
        return out

    rgb, size = None, _image_size(frame_path)
    plan = [outputs(row, ann.get("bbox")) for ann, row in zip(annotations, rows)]
    if size is None or any(not kept(*target) for box, outs in zip(boxes(size), plan)
                           if not isinstance(box, BadBoxError) for target in outs.values()):
        try:
            rgb = read_rgb(frame_path)
        except ImageDecodeError as e:
            for row in rows:
                row["problem"] = f"undecodable frame: {str(e).split(': ', 1)[-1]}"
            return rows, {}
        size = (rgb.shape[1], rgb.shape[0])
    for row in rows:
        row["frame_w"], row["frame_h"] = size

    for box, row, outs in zip(boxes(size), rows, plan):
        if isinstance(box, BadBoxError):
            row["problem"] = str(box)
            continue
        for column, (path, signature) in outs.items():
            rel = path.relative_to(out_dir).as_posix()
            row[column] = rel
            if not kept(path, signature):
                _write_png(path, view_pixels(rgb, box, "roi"))
            signatures[rel] = signature
    return rows, signatures


def _group_annotations(coco: Coco) -> tuple[dict[int, list[dict]], list[dict]]:
    """Annotations by image id, and the rows of annotations whose image is not in the file."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    orphans: list[dict] = []
    for ann in coco.annotations:
        image_id = int(ann["image_id"])
        if image_id in coco.images:
            by_image[image_id].append(ann)
        else:
            orphans.extend(_annotation_rows(image_id, None, [ann], coco, "image_id not in images"))
    return by_image, orphans


def _annotations_table(rows: list[dict]) -> pd.DataFrame:
    columns = ["annotation_id", "image_id", "path", "label", "category_id", "bbox_x", "bbox_y", "bbox_w",
               "bbox_h", "frame_w", "frame_h", "problem"]
    table = pd.DataFrame(rows, columns=columns).sort_values("annotation_id", kind="stable")
    table["category_id"] = table["category_id"].astype("Int64")
    return table.reset_index(drop=True)


def _make_folders(out_dir: Path) -> None:
    """Create the output folders, check they are writable (before anything is fetched) and remove the
    temporary files a killed run left in them."""
    for folder in (out_dir, out_dir / "images", out_dir / "rois"):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        remove_stale_temps(folder)


def crop_all(coco: Coco, out_dir: Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Cut the crops of every annotation from the frames in out_dir/images (threads over frames).

    Returns the annotations table; crops whose frame, box and size are unchanged since they were cut
    (manifest.json) are kept."""
    out_dir = Path(out_dir)
    _make_folders(out_dir)
    manifest = Manifest(out_dir / MANIFEST)
    by_image, rows = _group_annotations(coco)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(crop_frame, out_dir, image_id, coco.images[image_id], annotations, coco,
                               manifest.crops)
                   for image_id, annotations in by_image.items()]
        for future in tqdm(as_completed(futures), total=len(futures), desc="crops", unit="img",
                           disable=not progress):
            frame_rows, signatures = future.result()
            rows.extend(frame_rows)
            manifest.crops.update(signatures)
    manifest.save()
    return _annotations_table(rows)


# ---------------------------------------------------------------- the whole step

def failures_table(fetches: list[FetchResult], table: pd.DataFrame) -> pd.DataFrame:
    """One row per failed frame and per annotation without a crop: kind, id, image_id, url, error.

    Frames and annotations that an interruption left unprocessed are not failures."""
    rows = [{"kind": "image", "id": r.image_id, "image_id": r.image_id, "url": r.url, "error": r.error}
            for r in fetches if r.status == "failed"]
    failed_frames = {r.image_id for r in fetches if r.status == "failed"}
    for row in table[table["problem"] != ""].itertuples():
        if row.image_id in failed_frames and row.problem == "frame not downloaded":
            continue  # already reported once as its frame
        if row.problem == INTERRUPTED:
            continue
        rows.append({"kind": "annotation", "id": row.annotation_id, "image_id": row.image_id, "url": "",
                     "error": row.problem})
    return pd.DataFrame(rows, columns=["kind", "id", "image_id", "url", "error"])


class _SplitDownload:
    """Fetch-then-cut of every frame of one COCO file into one folder, with Ctrl-C handling."""

    def __init__(self, coco: Coco, out_dir: Path, options: FetchOptions, manifest: Manifest):
        self.coco, self.out_dir, self.options, self.manifest = coco, out_dir, options, manifest
        self.by_image, self.orphans = _group_annotations(coco)
        self.stop, self.sessions = threading.Event(), _Sessions()

    def frame(self, image_id: int) -> tuple[FetchResult, list[dict], dict[str, str]]:
        """Check or fetch one frame, then cut its crops: (fetch result, its rows, its crop signatures)."""
        image, annotations = self.coco.images[image_id], self.by_image.get(image_id, [])
        url = str(image.get("coco_url") or image.get("flickr_url") or "")
        try:
            if self.stop.is_set():
                raise _Stopped
            result = check_or_fetch(image_id, url, self.out_dir / "images" / self.coco.frame_name(image_id),
                                    self.manifest.frames.get(str(image_id)), self.options, self.stop, self.sessions)
        except _Stopped:
            return FetchResult(image_id, url, "interrupted"), \
                _annotation_rows(image_id, image, annotations, self.coco, INTERRUPTED), {}
        if result.status not in USABLE:
            return result, _annotation_rows(image_id, image, annotations, self.coco, "frame not downloaded"), {}
        rows, signatures = crop_frame(self.out_dir, image_id, image, annotations, self.coco,
                                      recorded=self.manifest.crops)
        return result, rows, signatures

    def record(self, outcome: tuple[FetchResult, list[dict], dict[str, str]]) -> None:
        """Note one frame's outcome in the manifest (main thread only)."""
        result, rows, signatures = outcome
        key = str(result.image_id)
        if any(row["problem"].startswith("undecodable") for row in rows):
            self.manifest.frames.pop(key, None)  # fetched again next time
        elif result.status in USABLE:
            self.manifest.frames[key] = result.record
        elif result.status == "failed":
            self.manifest.frames.pop(key, None)
        self.manifest.crops.update(signatures)

    def run(self, concurrency: int, progress: bool) -> tuple[list[FetchResult], list[dict]]:
        """Process every frame; on Ctrl-C stop the workers and gather what they finished."""
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(self.frame, image_id) for image_id in self.coco.images]
            bar = tqdm(total=len(futures), desc="frames", unit="img", disable=not progress)

            def on_result(outcome) -> None:
                self.record(outcome)
                bar.update(outcome[0].status != "interrupted")
                self.manifest.save(every=SAVE_EVERY_S)

            try:
                _gather(futures, self.stop, on_result)
            finally:
                bar.close()
        outcomes = [f.result() for f in futures]
        for outcome in outcomes:  # again: a Ctrl-C may have cut one short in the loop above
            self.record(outcome)
        return [o[0] for o in outcomes], self.orphans + [row for o in outcomes for row in o[1]]


def _gather(futures: list[Future], stop: threading.Event, on_result: Callable[[object], object]) -> None:
    """Pass each finished future's result to `on_result` until all are done. The first Ctrl-C (or an
    error) sets `stop`, after which the tasks end at once; a second Ctrl-C is raised."""
    pending = set(futures)
    while pending:
        try:
            for future in as_completed(pending):
                pending.discard(future)
                on_result(future.result())
        except KeyboardInterrupt:
            if stop.is_set():
                raise
            stop.set()
            print("\ninterrupted: stopping (Ctrl-C again to quit without saving)", file=sys.stderr)
        except BaseException:
            stop.set()
            raise


def download_split(coco_json: str | Path, out_dir: str | Path, concurrency: int = 8,
                   options: FetchOptions = FetchOptions(), progress: bool = True) -> int:
    """Fetch the frames, cut the crops, write annotations.csv, failures.csv and manifest.json; returns the
    exit status. Raises DownloadInterrupted (a KeyboardInterrupt) after writing them when Ctrl-C stopped it."""
    out_dir = Path(out_dir)
    coco = load_coco(coco_json)
    _make_folders(out_dir)
    manifest = Manifest(out_dir / MANIFEST)
    manifest.save(complete=False)
    job = _SplitDownload(coco, out_dir, options, manifest)
    try:
        fetches, rows = job.run(concurrency, progress)
    except BaseException:
        with contextlib.suppress(OSError):
            manifest.save()  # what finished stays reusable
        raise
    table = _annotations_table(rows)
    atomic_write_with(out_dir / "annotations.csv", lambda p: table.to_csv(p, index=False))
    failures = failures_table(fetches, table)
    atomic_write_with(out_dir / "failures.csv", lambda p: failures.to_csv(p, index=False))
    manifest.save(complete=not job.stop.is_set())

    counts = {s: sum(r.status == s for r in fetches) for s in ("fetched", "present", "failed", "unchecked")}
    undecodable = table["problem"].str.startswith("undecodable").groupby(table["image_id"]).any().sum()
    n_crops = int((table["problem"] == "").sum())
    if job.stop.is_set():
        done = len(fetches) - sum(r.status == "interrupted" for r in fetches)
        print(f"stopped after {done} of {len(fetches)} frames ({n_crops} ROIs cut); annotations.csv, failures.csv "
              f"and manifest.json in {out_dir} hold what is done", file=sys.stderr)
        raise DownloadInterrupted
    print(f"frames: {counts['fetched']} fetched, {counts['present']} already present, {counts['failed']} failed,"
          f" {undecodable} undecodable; ROIs: {n_crops} of {len(table)} cropped -> {out_dir / 'annotations.csv'}")
    if counts["unchecked"]:
        first = next(r for r in fetches if r.status == "unchecked")
        print(f"warning: {counts['unchecked']} frames kept without checking their source, e.g. image {first.image_id}:"
              f" {first.error}", file=sys.stderr)
    if len(failures):
        print(f"{len(failures)} problems listed in {out_dir / 'failures.csv'}", file=sys.stderr)
    return 1 if counts["failed"] or undecodable else 0


def _os_error_line(e: OSError) -> str:
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m src.data.download",
        description="Download the frames of a COCO file (http, https, file://) and cut ROI crops. "
                    "Resumable: run the same command again after a failure, a kill or Ctrl-C; a frame or crop "
                    "is reused only while its source and box are unchanged (manifest.json).")
    parser.add_argument("coco_json", help="dataset_train.json or dataset_test.json")
    parser.add_argument("out_dir", help="split folder to fill, e.g. inputs/fathomnet2025/train")
    parser.add_argument("-n", "--concurrency", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for one attempt at one frame, the whole transfer included (default 30)")
    parser.add_argument("--retries", type=int, default=4, help="retries per frame (default 4)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        return download_split(args.coco_json, args.out_dir, args.concurrency,
                              FetchOptions(args.timeout, args.retries, args.backoff),
                              progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"to resume, run the same command again: python -m src.data.download {shlex.join(argv)}",
              file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing COCO file, an output folder that cannot be written, a full disk
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
