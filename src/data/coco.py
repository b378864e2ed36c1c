"""COCO files and frame images: reading the competition's JSON, naming frames, decoding them to RGB."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image


class ImageDecodeError(OSError):
    """A frame that cannot be decoded (truncated, corrupt, not an image)."""


@dataclass(frozen=True)
class Coco:
    """The parts of a COCO file the pipeline uses, keyed by id."""

    images: dict[int, dict]  # image id -> image record (file_name, coco_url, width, height)
    annotations: list[dict]  # sorted by annotation id
    categories: dict[int, str]  # category id -> concept name

    def label_name(self, annotation: dict) -> str:
        """The annotation's concept name ('' when the category is null, as in the test file)."""
        category_id = annotation.get("category_id")
        return "" if category_id is None else self.categories.get(int(category_id), "")


def load_coco(path: str | Path) -> Coco:
    """Read a COCO JSON (train or test layout); ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: COCO file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("images", "annotations") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO file, missing {missing}")
    images = {int(im["id"]): im for im in data["images"]}
    annotations = sorted(data["annotations"], key=lambda a: int(a["id"]))
    categories = {int(c["id"]): c["name"] for c in data.get("categories", [])}
    return Coco(images=images, annotations=annotations, categories=categories)


def image_filename(image: dict) -> str:
    """Local file name of a frame: the record's file_name (folders stripped), else the URL's last part."""
    name = PurePosixPath(str(image.get("file_name") or "")).name
    if not name:
        url_name = PurePosixPath(unquote(urlparse(str(image.get("coco_url", ""))).path)).name
        name = f"{image['id']}_{url_name}" if url_name else f"{image['id']}.png"
    return name


def verify_image_file(path: str | Path) -> None:
    """Cheap integrity check (headers and PNG chunk CRCs, no full decode); ImageDecodeError if bad."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for bad files
        raise ImageDecodeError(f"{path}: not a valid image ({e})") from None


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
