"""The frame downloader and ROI cutter end to end, against a real HTTP server on 127.0.0.1."""
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from src.data.coco import image_filename, load_coco
from src.data.crops import clip_box
from src.data.download import FetchOptions, download_split, main

FAST = FetchOptions(timeout=0.4, retries=2, backoff=0.01)


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
    """Serves `files` (path -> bytes); per-path faults for the first requests: 500, slow, truncated."""

    def __init__(self, files: dict, faults: dict):
        self.files, self.faults, self.hits = files, faults, Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    self.serve()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow response: expected here

            def serve(self):
                server.hits[self.path] += 1
                n = server.hits[self.path]
                kind, times = server.faults.get(self.path, ("", 0))
                body = server.files.get(self.path)
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
                self.send_header("Content-Type", "image/png")
                if failing and kind == "truncate_nolength":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if failing and kind == "truncate" else body)
                if failing and kind == "truncate":
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_coco(path: Path, urls: dict[int, str], boxes: dict[int, list], labelled: bool = True) -> Path:
    images = [{"id": i, "file_name": f"frame_{i}.png", "width": 64, "height": 48, "coco_url": url}
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
    (source / "truncated.jpg").write_bytes(truncated)  # passes the cheap check, fails to decode
    (source / "garbage.png").write_bytes(b"not an image at all")
    names = ["rgb.png", "grey.png", "palette.png", "alpha.png", "greyalpha.png", "truncated.jpg", "garbage.png"]
    urls = {i: (source / n).as_uri() for i, n in enumerate(names, 1)}
    urls[8] = (source / "absent.png").as_uri()
    boxes = {i: [[10, 10, 20, 10]] for i in urls}
    boxes[1] += [[0, 0, 0, 5], [500, 500, 10, 10], [60, 44, 30, 30]]  # zero area, outside, partly outside
    coco = write_coco(tmp_path / "test.json", urls, boxes, labelled=False)
    out = tmp_path / "test"

    status = main([str(coco), str(out), "-n", "3", "--retries", "1", "--backoff", "0.01", "--no-progress"])
    assert status == 1  # truncated.jpg is undecodable; garbage.png and absent.png cannot be fetched
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
    assert table.loc[table["image_id"] == 6, "problem"].iloc[0].startswith("undecodable frame")
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    reported = set(zip(failures["kind"], failures["id"]))
    assert {("image", 7), ("image", 8), ("annotation", 2), ("annotation", 3)} <= reported
    assert ("annotation", table.index[table["image_id"] == 6][0]) in reported
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
