"""The frame downloader and ROI cutter end to end, against a real HTTP server on 127.0.0.1."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.data.coco import image_filename, load_coco
from src.data.crops import clip_box
from src.data.download import FetchOptions, download_complete, download_split, main

FAST = FetchOptions(timeout=0.4, retries=2, backoff=0.01)
REPO_ROOT = Path(__file__).resolve().parents[1]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def frame(seed: int, w: int = 64, h: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    array[10:20, 10:30] = (250, 10, 10)  # a red object where the first box of every frame sits
    return array


class FaultyServer:
    """Serves `files` (path -> bytes) with ETag and Last-Modified, GET and HEAD.

    Per-path faults for the first GET requests: 500, slow (headers after 1 s), truncated, drip (the body
    at `drip_rate` bytes/s); `delay` seconds before every GET response. GETs are counted in `hits`,
    HEADs in `heads`; replacing a body with `update` changes its validators."""

    def __init__(self, files: dict, faults: dict, delay: float = 0.0, drip_rate: float = 20_000):
        self.files, self.faults, self.hits, self.heads = files, faults, Counter(), Counter()
        self.delay, self.drip_rate, self.modified = delay, drip_rate, {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    self.serve()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow response: expected here

            def do_HEAD(self):
                server.heads[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.validators(body)
                self.end_headers()

            def validators(self, body):
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"%s"' % hashlib.md5(body).hexdigest())
                self.send_header("Last-Modified", formatdate(server.modified.get(self.path, 1e9), usegmt=True))

            def serve(self):
                server.hits[self.path] += 1
                n = server.hits[self.path]
                kind, times = server.faults.get(self.path, ("", 0))
                body = server.files.get(self.path)
                if server.delay:
                    time.sleep(server.delay)
                if body is None:
                    self.send_error(404)
                    return
                failing = n <= times
                if failing and kind == "500":
                    self.send_error(500)
                    return
                if failing and kind == "slow":
                    time.sleep(1.0)  # longer than the client's timeout
                self.send_response(200)
                if failing and kind == "truncate_nolength":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    return
                self.validators(body)
                self.end_headers()
                if failing and kind == "drip":
                    for start in range(0, len(body), 1000):
                        self.wfile.write(body[start:start + 1000])
                        self.wfile.flush()
                        time.sleep(1000 / server.drip_rate)
                    return
                self.wfile.write(body[: len(body) // 2] if failing and kind == "truncate" else body)
                if failing and kind == "truncate":
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def update(self, path: str, body: bytes) -> None:
        """Replace a file as a server would: new body, new ETag, Last-Modified now."""
        self.files[path], self.modified[path] = body, time.time()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_coco(path: Path, urls: dict[int, str], boxes: dict[int, list], labelled: bool = True,
               names: dict[int, str] | None = None) -> Path:
    names = names or {}
    images = [{"id": i, "file_name": names.get(i, f"frame_{i}.png"), "width": 64, "height": 48, "coco_url": url}
              for i, url in urls.items()]
    annotations, next_id = [], 1
    for image_id, bbs in boxes.items():
        for bbox in bbs:
            annotations.append({"id": next_id, "image_id": image_id, "bbox": bbox,
                                "category_id": (next_id % 79) + 1 if labelled else None})
            next_id += 1
    categories = [{"id": k, "name": f"concept {k}"} for k in range(1, 80)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_downloads_through_faults_then_resumes(tmp_path):
    files = {f"/img/{i}.png": png_bytes(frame(i)) for i in range(1, 8)}
    faults = {"/img/2.png": ("500", 2), "/img/3.png": ("slow", 1), "/img/4.png": ("truncate", 2),
              "/img/5.png": ("truncate_nolength", 1), "/img/6.png": ("500", 99)}
    with FaultyServer(files, faults) as server:
        urls = {i: f"{server.url}/img/{i}.png" for i in range(1, 8)}
        urls[8] = f"{server.url}/img/missing.png"
        coco = write_coco(tmp_path / "train.json", urls, {i: [[10, 10, 20, 10], [50, 40, 30, 30]] for i in urls})
        out = tmp_path / "train"
        status = download_split(coco, out, concurrency=4, options=FAST, progress=False)
        assert status == 1  # frame 6 (always 500) and 8 (404) failed
        hits_first = dict(server.hits)

        images = sorted(p.name for p in (out / "images").iterdir())
        assert images == [f"frame_{i}.png" for i in (1, 2, 3, 4, 5, 7)]  # no partial or temp file left
        for i in (1, 2, 3, 4, 5, 7):
            np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"frame_{i}.png")), frame(i))
        assert hits_first["/img/2.png"] == 3 and hits_first["/img/4.png"] == 3
        assert hits_first["/img/6.png"] == 1 + FAST.retries
        assert hits_first["/img/missing.png"] == 1  # a 404 is not retried

        failures = pd.read_csv(out / "failures.csv")
        frame_failures = failures[failures["kind"] == "image"]
        assert sorted(frame_failures["id"]) == [6, 8]
        assert frame_failures.set_index("id").loc[8, "error"].startswith("HTTP 404")
        table = pd.read_csv(out / "annotations.csv", keep_default_na=False)
        assert len(table) == 16 and table["annotation_id"].is_monotonic_increasing
        assert set(table.loc[table["image_id"].isin([6, 8]), "problem"]) == {"frame not downloaded"}
        ok = table[table["problem"] == ""]
        assert len(ok) == 12
        for row in ok.itertuples():
            assert row.path == f"rois/{row.image_id}_{row.annotation_id}.png"
            roi = np.asarray(Image.open(out / row.path))
            x0, y0, x1, y1 = clip_box([row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h], 64, 48)
            np.testing.assert_array_equal(roi, frame(row.image_id)[y0:y1, x0:x1])
        # the second box [50, 40, 30, 30] sticks out of the 64 x 48 frame: clipped, not dropped
        assert np.asarray(Image.open(out / "rois" / "1_2.png")).shape == (8, 14, 3)

        # resume: nothing that is complete is fetched again; a deleted frame and a deleted ROI come back
        (out / "images" / "frame_3.png").unlink()
        (out / "rois" / "1_1.png").unlink()
        whole = (out / "images" / "frame_5.png").read_bytes()
        (out / "images" / "frame_5.png").write_bytes(whole[: len(whole) // 2])  # a partial file by hand
        server.faults.clear()
        server.files["/img/6.png"] = png_bytes(frame(6))
        assert download_split(coco, out, concurrency=4, options=FAST, progress=False) == 1  # 8 still 404
        new_hits = {k: server.hits[k] - hits_first.get(k, 0) for k in server.hits}
        assert new_hits["/img/3.png"] == 1 and new_hits["/img/6.png"] == 1 and new_hits["/img/5.png"] == 1
        assert all(new_hits.get(f"/img/{i}.png", 0) == 0 for i in (1, 2, 4, 7))
        assert (out / "images" / "frame_5.png").read_bytes() == whole
        assert (out / "rois" / "1_1.png").is_file() and (out / "rois" / "6_11.png").is_file()


def test_file_urls_and_bad_images(tmp_path):
    source = tmp_path / "frames"
    source.mkdir()
    base = frame(1)
    (source / "rgb.png").write_bytes(png_bytes(base))
    (source / "grey.png").write_bytes(png_bytes(base, "L"))
    (source / "palette.png").write_bytes(png_bytes(base, "P"))
    (source / "alpha.png").write_bytes(png_bytes(np.dstack([base, np.full(base.shape[:2], 128, np.uint8)])))
    (source / "greyalpha.png").write_bytes(png_bytes(base, "LA"))
    jpeg = io.BytesIO()
    Image.fromarray(base).save(jpeg, "JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3]
    (source / "truncated.jpg").write_bytes(truncated)  # passes PIL's verify(), fails to decode: refused
    (source / "garbage.png").write_bytes(b"not an image at all")
    names = ["rgb.png", "grey.png", "palette.png", "alpha.png", "greyalpha.png", "truncated.jpg", "garbage.png"]
    urls = {i: (source / n).as_uri() for i, n in enumerate(names, 1)}
    urls[8] = (source / "absent.png").as_uri()
    boxes = {i: [[10, 10, 20, 10]] for i in urls}
    boxes[1] += [[0, 0, 0, 5], [500, 500, 10, 10], [60, 44, 30, 30]]  # zero area, outside, partly outside
    coco = write_coco(tmp_path / "test.json", urls, boxes, labelled=False)
    out = tmp_path / "test"

    status = main([str(coco), str(out), "-n", "3", "--retries", "1", "--backoff", "0.01", "--no-progress"])
    assert status == 1  # truncated.jpg and garbage.png are not whole images, absent.png is absent
    table = pd.read_csv(out / "annotations.csv", keep_default_na=False).set_index("annotation_id")
    assert (table["label"] == "").all() and (table["category_id"] == "").all()
    for image_id in (1, 2, 3, 4, 5):
        row = table[(table["image_id"] == image_id)].iloc[0]
        roi = Image.open(out / row["path"])
        assert roi.mode == "RGB" and roi.size == (20, 10)
    red = np.asarray(Image.open(out / table.loc[1, "path"]))
    assert (red == (250, 10, 10)).all()
    assert "zero-area" in table.loc[2, "problem"] and "outside" in table.loc[3, "problem"]
    assert table.loc[4, "problem"] == "" and Image.open(out / table.loc[4, "path"]).size == (4, 4)
    assert table.loc[table["image_id"] == 6, "problem"].iloc[0] == "frame not downloaded"
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    reported = set(zip(failures["kind"], failures["id"]))
    assert reported == {("image", 6), ("image", 7), ("image", 8), ("annotation", 2), ("annotation", 3)}
    assert "truncated" in failures.set_index(["kind", "id"]).loc[("image", 6), "error"]
    assert "no such file" in failures.set_index(["kind", "id"]).loc[("image", 8), "error"]
    assert not list((out / "images").glob(".*"))  # no temp files left behind


def test_unsupported_scheme_and_missing_json(tmp_path, capsys):
    coco = write_coco(tmp_path / "c.json", {1: "ftp://example.org/a.png"}, {1: [[1, 1, 5, 5]]})
    assert main([str(coco), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "unsupported URL scheme" in pd.read_csv(tmp_path / "out" / "failures.csv")["error"][0]
    assert main([str(tmp_path / "nope.json"), str(tmp_path / "out2"), "--no-progress"]) == 2
    assert "COCO file not found" in capsys.readouterr().err


def test_real_test_json_structure(shared_data):
    coco = load_coco(shared_data / "dataset_test.json")
    assert len(coco.images) == 325 and len(coco.annotations) == 788 and len(coco.categories) == 79
    ids = [a["id"] for a in coco.annotations]
    assert len(set(ids)) == len(ids)
    names = {image_filename(im) for im in coco.images.values()}
    assert len(names) == 325 and all(n.endswith(".png") for n in names)
    assert all(im["coco_url"].startswith("https://") for im in coco.images.values())
    assert all(coco.label_name(a) == "" for a in coco.annotations)
    widths = []
    for a in coco.annotations:
        image = coco.images[a["image_id"]]
        x0, y0, x1, y1 = clip_box(a["bbox"], image["width"], image["height"])
        widths.append(x1 - x0)
    assert 40 <= np.median(widths) <= 70  # the real test set: median box width 54 px


def test_clean_run_exits_zero_and_resume_fetches_nothing(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png_bytes(frame(1)))
    coco = write_coco(tmp_path / "c.json", {1: (tmp_path / "a.png").as_uri()}, {1: [[10, 10, 20, 10]]})
    assert main([str(coco), str(tmp_path / "out"), "--no-progress"]) == 0
    assert main([str(coco), str(tmp_path / "out"), "--no-progress"]) == 0
    assert "0 fetched, 1 already present" in capsys.readouterr().out.splitlines()[-1]
    assert len(pd.read_csv(tmp_path / "out" / "failures.csv")) == 0


# ---------------------------------------------------------------- issue 12: nothing silently wrong

BOX = [30, 20, 20, 15]  # random pixels (not the red object every frame has), so the crops of two frames differ


def roi_of(seed: int) -> np.ndarray:
    return frame(seed)[20:35, 30:50]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def file_coco(tmp_path: Path, seeds: dict[int, int], boxes: dict[int, list] | None = None) -> Path:
    """A COCO file whose frames are file:// URLs of frame(seed) written under tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for image_id, seed in seeds.items():
        (src / f"{image_id}.png").write_bytes(png_bytes(frame(seed)))
    urls = {i: (src / f"{i}.png").as_uri() for i in seeds}
    return write_coco(tmp_path / "c.json", urls, boxes or {i: [BOX] for i in seeds})


def run_quiet(coco: Path, out: Path, *extra: str) -> int:
    return main([str(coco), str(out), "--no-progress", "--retries", "0", *extra])


def test_a_regenerated_source_frame_is_fetched_again(tmp_path, capsys):
    # case 2a: regenerating a benchmark in place must not leave the old frames (and their crops) in use
    coco, out = file_coco(tmp_path, {1: 1, 2: 2}), tmp_path / "out"
    assert run_quiet(coco, out) == 0
    (tmp_path / "src" / "2.png").write_bytes(png_bytes(frame(22)))
    assert run_quiet(coco, out) == 0
    assert "1 fetched, 1 already present" in capsys.readouterr().out.splitlines()[-1]
    np.testing.assert_array_equal(read_png(out / "images" / "frame_2.png"), frame(22))
    np.testing.assert_array_equal(read_png(out / "rois" / "2_2.png"), roi_of(22))
    np.testing.assert_array_equal(read_png(out / "rois" / "1_1.png"), roi_of(1))
    # a source that is gone: its old copy is not kept under the frame's name
    (tmp_path / "src" / "1.png").unlink()
    assert run_quiet(coco, out) == 1
    assert not (out / "images" / "frame_1.png").exists()
    table = pd.read_csv(out / "annotations.csv", keep_default_na=False).set_index("annotation_id")
    assert table.loc[1, "problem"] == "frame not downloaded" and table.loc[1, "path"] == ""


def test_an_http_frame_is_reused_only_while_its_validators_match(tmp_path):
    files = {f"/img/{i}.png": png_bytes(frame(i)) for i in (1, 2)}
    with FaultyServer(files, {}) as server:
        coco = write_coco(tmp_path / "c.json", {i: f"{server.url}/img/{i}.png" for i in (1, 2)},
                          {i: [BOX] for i in (1, 2)})
        out = tmp_path / "out"
        assert download_split(coco, out, options=FAST, progress=False) == 0
        assert download_split(coco, out, options=FAST, progress=False) == 0
        assert dict(server.hits) == {"/img/1.png": 1, "/img/2.png": 1}  # checked with HEAD, not fetched
        assert server.heads["/img/1.png"] == server.heads["/img/2.png"] == 1
        server.update("/img/2.png", png_bytes(frame(22)))
        assert download_split(coco, out, options=FAST, progress=False) == 0
        assert dict(server.hits) == {"/img/1.png": 1, "/img/2.png": 2}
    np.testing.assert_array_equal(read_png(out / "rois" / "2_2.png"), roi_of(22))
    np.testing.assert_array_equal(read_png(out / "rois" / "1_1.png"), roi_of(1))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"]["2"]["source"]["etag"] == '"%s"' % hashlib.md5(files["/img/2.png"]).hexdigest()


def test_a_changed_box_is_cut_again(tmp_path):
    # case 2b: annotations.csv and rois/<id>.png must agree after the COCO file changes
    coco, out = file_coco(tmp_path, {1: 1}, {1: [[10, 10, 20, 10]]}), tmp_path / "out"
    assert run_quiet(coco, out) == 0
    data = json.loads(coco.read_text())
    data["annotations"][0]["bbox"] = BOX
    coco.write_text(json.dumps(data))
    assert run_quiet(coco, out) == 0
    table = pd.read_csv(out / "annotations.csv", keep_default_na=False)
    assert table.loc[0, ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].tolist() == BOX
    np.testing.assert_array_equal(read_png(out / "rois" / "1_1.png"), roi_of(1))


def test_file_names_differing_only_by_folder_get_two_local_frames(tmp_path):
    # case 2c: cam1/x.png and cam2/x.png are two images
    urls = {}
    for i in (1, 2):
        (tmp_path / f"cam{i}").mkdir()
        (tmp_path / f"cam{i}" / "x.png").write_bytes(png_bytes(frame(i)))
        urls[i] = (tmp_path / f"cam{i}" / "x.png").as_uri()
    coco = write_coco(tmp_path / "c.json", urls, {1: [BOX], 2: [BOX]}, names={1: "cam1/x.png", 2: "cam2/x.png"})
    out = tmp_path / "out"
    assert run_quiet(coco, out) == 0
    names = load_coco(coco).frame_names
    assert len(set(names.values())) == 2 and len(list((out / "images").iterdir())) == 2
    np.testing.assert_array_equal(read_png(out / "rois" / "1_1.png"), roi_of(1))
    np.testing.assert_array_equal(read_png(out / "rois" / "2_2.png"), roi_of(2))


def test_local_frame_names_are_unique():
    from src.data.coco import local_frame_names

    images = {1: {"id": 1, "file_name": "a/x.png"}, 2: {"id": 2, "file_name": "b/X.png"},
              3: {"id": 3, "file_name": "y.png"}, 4: {"id": 4, "file_name": "d/y.png"},
              7: {"id": 7, "file_name": "4_y.png"}, 6: {"id": 6, "file_name": "z.png"}}
    names = local_frame_names(images)
    assert names[6] == "z.png" and names[7] == "4_y.png"  # unique names are kept: existing downloads stay valid
    assert names[3] == "3_y.png" and names[4] == "4_4_y.png"  # 4_y.png is 7's
    assert len({n.lower() for n in names.values()}) == 6  # also on case-insensitive file systems


def truncated_jpeg(seed: int) -> tuple[bytes, bytes]:
    buffer = io.BytesIO()
    Image.fromarray(frame(seed)).save(buffer, "JPEG", quality=95)
    whole = buffer.getvalue()
    return whole, whole[: len(whole) * 2 // 3]


def test_a_truncated_jpeg_is_refused_then_fetched_once_fixed(tmp_path):
    # case 4: PIL's verify() does not decode JPEG data; the frame must be decoded before it is accepted
    whole, truncated = truncated_jpeg(1)
    (tmp_path / "a.jpg").write_bytes(truncated)
    coco = write_coco(tmp_path / "c.json", {1: (tmp_path / "a.jpg").as_uri()}, {1: [BOX]}, names={1: "a.jpg"})
    out = tmp_path / "out"
    assert run_quiet(coco, out) == 1
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    assert failures[["kind", "id"]].values.tolist() == [["image", 1]]
    error = failures.loc[0, "error"]
    assert "invalid image" in error and "a.jpg" in error and ".tmp" not in error  # case 12: the frame's name
    assert not (out / "images" / "a.jpg").exists()
    (tmp_path / "a.jpg").write_bytes(whole)
    assert run_quiet(coco, out) == 0
    assert (out / "rois" / "1_1.png").is_file()


def test_an_undecodable_local_frame_is_fetched_again(tmp_path):
    # a truncated JPEG saved by an earlier version (only verify()d), with a good source now
    whole, truncated = truncated_jpeg(1)
    (tmp_path / "a.jpg").write_bytes(whole)
    coco = write_coco(tmp_path / "c.json", {1: (tmp_path / "a.jpg").as_uri()}, {1: [BOX]}, names={1: "a.jpg"})
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "a.jpg").write_bytes(truncated)
    assert run_quiet(coco, out) == 0
    assert (out / "images" / "a.jpg").read_bytes() == whole
    # a frame that stops decoding although size and time look unchanged: reported, then fetched again
    local = out / "images" / "a.jpg"
    stat = local.stat()
    local.write_bytes(b"garbage!" + whole[8:])
    os.utime(local, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (out / "rois" / "1_1.png").unlink()
    assert run_quiet(coco, out) == 1
    assert run_quiet(coco, out) == 0
    assert local.read_bytes() == whole and (out / "rois" / "1_1.png").is_file()


def test_timeout_is_a_deadline_for_the_whole_transfer(tmp_path):
    # case 12: the limit was checked between 64 KB chunks only (1 s became 3.5 s at 20 KB/s)
    body = png_bytes(frame(1, 400, 300))  # about 360 KB: 18 s at 20 KB/s
    with FaultyServer({"/a.png": body}, {"/a.png": ("drip", 99)}) as server:
        coco = write_coco(tmp_path / "c.json", {1: f"{server.url}/a.png"}, {1: [BOX]})
        start = time.monotonic()
        status = download_split(coco, tmp_path / "out", options=FetchOptions(timeout=0.5, retries=0), progress=False)
        elapsed = time.monotonic() - start
    assert status == 1 and elapsed < 2.0
    assert "0.5 s" in pd.read_csv(tmp_path / "out" / "failures.csv")["error"][0]


def test_ctrl_c_stops_at_once_saves_what_is_done_and_resumes(tmp_path):
    # case 6: a SIGINT used to let every queued frame be fetched, then end in a traceback
    files = {f"/img/{i}.png": png_bytes(frame(i)) for i in range(1, 41)}
    with FaultyServer(files, {}, delay=0.4) as server:
        coco = write_coco(tmp_path / "c.json", {i: f"{server.url}/img/{i}.png" for i in range(1, 41)},
                          {i: [BOX] for i in range(1, 41)})
        out = tmp_path / "out"
        # A shell starts background jobs with SIGINT ignored and children inherit that (pytest run with `&`):
        # give the child the default action, so it sees the Ctrl-C a user's terminal would send.
        process = subprocess.Popen([sys.executable, "-m", "src.data.download", str(coco), str(out), "-n", "2",
                                    "--no-progress"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_until = time.monotonic() + 60
        while sum(server.hits.values()) < 6 and time.monotonic() < wait_until and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = process.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
        assert process.returncode == 130, err
        assert stopped_after < 3.0  # the 34 frames left take about 7 s
        assert "Traceback" not in err and "resume" in err and "src.data.download" in err
        table = pd.read_csv(out / "annotations.csv", keep_default_na=False)
        assert len(table) == 40
        done = table[table["problem"] == ""]
        assert 3 <= len(done) < 40
        for row in done.itertuples():
            np.testing.assert_array_equal(read_png(out / row.path), roi_of(row.image_id))
        assert json.loads((out / "manifest.json").read_text())["complete"] is False and not download_complete(out)
        before = dict(server.hits)
        server.delay = 0
        assert download_split(coco, out, options=FAST, progress=False) == 0
        assert all(server.hits[f"/img/{i}.png"] == before[f"/img/{i}.png"] for i in done["image_id"])
    assert len(pd.read_csv(out / "annotations.csv").query("problem == problem")) == 0  # every ROI cut
    assert download_complete(out) and not list(out.rglob(".*.tmp"))


def test_a_resumed_download_removes_stale_temp_files(tmp_path):
    # case 9: a killed run leaves .<name>.<random>.tmp files behind
    coco, out = file_coco(tmp_path, {1: 1}), tmp_path / "out"
    assert run_quiet(coco, out) == 0
    stale = [out / "images" / ".frame_1.png.k2j3h4.tmp", out / "rois" / ".1_1.png.abcdef.tmp",
             out / ".annotations.csv.zzz.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    (out / "images" / ".keep").write_text("")
    assert run_quiet(coco, out) == 0
    assert not any(p.exists() for p in stale) and (out / "images" / ".keep").exists()


@pytest.mark.parametrize("case, message", [
    ("image without id", "images[1] has no integer 'id'"),
    ("annotation without image_id", "annotations[0] has no integer 'image_id'"),
    ("folder", "is a folder"),
    ("binary", "not valid JSON"),
])
def test_bad_coco_files_are_one_line_errors_before_any_fetch(tmp_path, capsys, case, message):
    coco = file_coco(tmp_path, {1: 1, 2: 2})
    data = json.loads(coco.read_text())
    if case == "image without id":
        del data["images"][1]["id"]
    if case == "annotation without image_id":
        del data["annotations"][0]["image_id"]
    coco.write_text(json.dumps(data))
    if case == "folder":
        coco = tmp_path / "src"
    if case == "binary":
        coco.write_bytes(bytes(range(256)) * 4)
    assert run_quiet(coco, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "images").exists()  # nothing was fetched


def test_an_unwritable_output_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    coco = file_coco(tmp_path, {1: 1})
    (tmp_path / "a_file").write_text("")
    assert run_quiet(coco, tmp_path / "a_file" / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a_file" in err and len(err.strip().splitlines()) == 1
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root writes anyway: answer as the kernel would for others

        def refuse(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(dir))

        monkeypatch.setattr("src.data.download.tempfile.TemporaryFile", refuse)
    assert run_quiet(coco, read_only) == 2
    err = capsys.readouterr().err
    assert err == f"error: {read_only}: Permission denied\n"
    assert not (read_only / "manifest.json").exists()
