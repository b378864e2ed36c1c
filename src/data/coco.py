"""COCO files and frame images: reading the competition's JSON, naming frames, decoding them to RGB."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from PIL import Image


class ImageDecodeError(OSError):
    """A frame that cannot be decoded (truncated, corrupt, not an image)."""


@dataclass(frozen=True)
class Coco:
    """The parts of a COCO file the pipeline uses, keyed by id."""

    images: dict[int, dict]  # image id -> image record (file_name, coco_url, width, height)
    annotations: list[dict]  # sorted by annotation id
    categories: dict[int, str]  # category id -> concept name
    frame_names: dict[int, str] = field(default_factory=dict)  # image id -> local file name (see local_frame_names)

    def label_name(self, annotation: dict) -> str:
        """The annotation's concept name ('' when the category is null, as in the test file)."""
        category_id = annotation.get("category_id")
        return "" if category_id is None else self.categories.get(int(category_id), "")

    def frame_name(self, image_id: int) -> str:
        """Local file name of a frame, unique within this COCO file."""
        return self.frame_names.get(image_id) or image_filename(self.images[image_id])


def _int_field(records, key: str, where: str, path: Path) -> list[int]:
    """record[key] of every record as int; ValueError naming the first record without one."""
    values = []
    for i, record in enumerate(records):
        value = record.get(key) if isinstance(record, dict) else None
        try:
            if isinstance(value, bool) or value is None:
                raise TypeError
            values.append(int(value))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where}[{i}] has no integer {key!r} (found {value!r})") from None
    return values


def load_coco(path: str | Path) -> Coco:
    """Read a COCO JSON (train or test layout); ValueError naming the file when it is not one.

    Every image needs an integer id and every annotation an integer id and image_id (checked here, so
    a bad file stops a download before anything is fetched); ids must be unique."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a COCO file")
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: COCO file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("images", "annotations") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO file, missing {missing}")
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: not a COCO file, {key!r} is not a list")
    image_ids = _int_field(data["images"], "id", "images", path)
    annotation_ids = _int_field(data["annotations"], "id", "annotations", path)
    _int_field(data["annotations"], "image_id", "annotations", path)
    for ids, where in ((image_ids, "image"), (annotation_ids, "annotation")):
        duplicate, count = Counter(ids).most_common(1)[0] if ids else (None, 0)
        if count > 1:
            raise ValueError(f"{path}: {where} id {duplicate} appears {count} times")
    images = dict(zip(image_ids, data["images"]))
    annotations = sorted(data["annotations"], key=lambda a: int(a["id"]))
    categories = {int(c["id"]): c["name"] for c in data.get("categories", [])}
    return Coco(images=images, annotations=annotations, categories=categories,
                frame_names=local_frame_names(images))


def annotation_table(coco: Coco | str | Path) -> pd.DataFrame:
    """One row per annotation, sorted by id: annotation_id, image_id (its frame), concept_name ('' unlabelled)."""
    coco = coco if isinstance(coco, Coco) else load_coco(coco)
    return pd.DataFrame({"annotation_id": [int(a["id"]) for a in coco.annotations],
                         "image_id": [int(a["image_id"]) for a in coco.annotations],
                         "concept_name": [coco.label_name(a) for a in coco.annotations]})


def frame_ids_of(table: pd.DataFrame, annotation_ids) -> np.ndarray:
    """(N,) int64 frame (image_id) of each annotation id, from an `annotation_table`; ValueError naming ids
    the table lacks."""
    frames = pd.Series(table["image_id"].to_numpy(np.int64), index=table["annotation_id"].to_numpy(np.int64))
    ids = np.asarray(annotation_ids, dtype=np.int64)
    missing = ~np.isin(ids, frames.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} annotation ids are not in the COCO file, "
                         f"e.g. {ids[missing][:3].tolist()}")
    return frames.loc[ids].to_numpy(np.int64)


def image_filename(image: dict) -> str:
    """File name of a frame: the record's file_name (folders stripped), else the URL's last part."""
    name = PurePosixPath(str(image.get("file_name") or "")).name
    if not name:
        url_name = PurePosixPath(unquote(urlparse(str(image.get("coco_url", ""))).path)).name
        name = f"{image['id']}_{url_name}" if url_name else f"{image['id']}.png"
    return name


def local_frame_names(images: dict[int, dict]) -> dict[int, str]:
    """Image id -> local file name, distinct for distinct images (also ignoring case).

    A frame keeps its image_filename when no other image has the same one; images whose names clash
    (e.g. cam1/x.png and cam2/x.png) are prefixed with their id: 1_x.png, 2_x.png."""
    base = {image_id: image_filename(image) for image_id, image in images.items()}
    counts = Counter(name.lower() for name in base.values())
    taken = {name.lower() for name in base.values() if counts[name.lower()] == 1}
    names = {}
    for image_id in sorted(base):
        name = base[image_id]
        if counts[name.lower()] > 1:
            name = f"{image_id}_{name}"
            while name.lower() in taken:
                name = f"{image_id}_{name}"
            taken.add(name.lower())
        names[image_id] = name
    return names


def decode_check(path: str | Path, shown_name: str | None = None) -> None:
    """Check that an image file is whole: chunk checksums (PIL verify()) and a full decode (verify()
    alone passes a truncated JPEG). ImageDecodeError naming `shown_name` (default: the path) if not."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises many types for bad files
        reason = str(e).replace(str(path), shown_name or str(path))
        raise ImageDecodeError(f"{shown_name or path}: cannot decode ({reason})") from None


def to_rgb(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> HWC uint8 RGB (greyscale/palette expanded, alpha dropped, 16 bit scaled)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        grey = np.asarray(im, dtype=np.float32)
        grey = np.clip(grey * (255.0 / 65535.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
    return np.asarray(im.convert("RGB"))


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode a frame fully to HWC uint8 RGB; ImageDecodeError (with the reason) for bad files."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except Exception as e:
        raise ImageDecodeError(f"{path}: cannot decode image ({e})") from None
