"""ROI and context windows: pure functions, arrays in, arrays out (no I/O).

Geometry policy (shared by the ROI files written by `src.data.download` and the crop cache):

- A COCO bbox [x, y, w, h] (float pixels) becomes the integer box [floor(x), floor(y), ceil(x+w),
  ceil(y+h)) clipped to the frame. A box with a negative or zero size, or no area left inside the frame,
  is rejected (BadBoxError).
- View 'roi' is the clipped box's own pixels. Written to disk as they are; squared for the cache by
  padding the short side with a constant fill (centred), never by stretching.
- View 'ctx<k>' (e.g. 'ctx3', 'ctx5') is a square window of side k * max(box w, box h) centred on the box
  centre. The window is NOT shifted to stay inside the frame (the object stays centred and the scale stays
  k for every crop); what falls outside the frame is filled with the constant fill.
- View 'frame' is the whole frame, padded to a square (centred) with the fill.
- Squaring for a fixed size S: resize so the long side is S (area interpolation when shrinking, linear when
  enlarging), then pad the short side. The aspect ratio is always preserved.
"""
from __future__ import annotations

import math
import re

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive
DEFAULT_FILL = 0  # black: underwater frames are dark, so padding looks like the scene's background

_VIEW_RE = re.compile(r"^(roi|frame|ctx(\d+(?:\.\d+)?))$")


class BadBoxError(ValueError):
    """A bbox that cannot be cropped (zero area, outside the frame, not numbers)."""


def clip_box(bbox, frame_w: int, frame_h: int) -> Box:
    """COCO [x, y, w, h] -> integer box clipped to the frame; BadBoxError when nothing is left."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise BadBoxError(f"bbox is not 4 numbers: {bbox!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise BadBoxError(f"bbox has non-finite values: {bbox!r}")
    if w < 0 or h < 0:
        raise BadBoxError(f"bbox {bbox!r} has a negative size")
    if w == 0 or h == 0:
        raise BadBoxError(f"zero-area bbox {bbox!r}")
    x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
    x1, y1 = min(math.ceil(x + w), frame_w), min(math.ceil(y + h), frame_h)
    if x1 <= x0 or y1 <= y0:
        raise BadBoxError(f"bbox {bbox!r} lies outside the {frame_w}x{frame_h} frame")
    return x0, y0, x1, y1


def context_window(box: Box, k: float) -> Box:
    """Square window of side k * max(box w, box h) centred on the box (may extend past the frame)."""
    x0, y0, x1, y1 = box
    side = max(1, round(k * max(x1 - x0, y1 - y0)))
    left = math.floor((x0 + x1) / 2 - side / 2)
    top = math.floor((y0 + y1) / 2 - side / 2)
    return left, top, left + side, top + side


def crop_padded(image: np.ndarray, window: Box, fill: int = DEFAULT_FILL) -> np.ndarray:
    """Pixels of `window` in an HWC image; parts outside the image are filled with `fill`."""
    x0, y0, x1, y1 = window
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0) + image.shape[2:], fill, dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def fit_square(image: np.ndarray, size: int, fill: int = DEFAULT_FILL) -> np.ndarray:
    """Resize so the long side is `size`, then pad the short side (centred): (size, size, C), no squashing."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if new_w == new_h == size:
        return image
    out = np.full((size, size) + image.shape[2:], fill, dtype=image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = image
    return out


def window_square(image: np.ndarray, window: Box, size: int, fill: int = DEFAULT_FILL) -> np.ndarray:
    """`fit_square(crop_padded(image, window), size)` without materialising a huge padded window.

    Only the part of the window inside the image is resized, then placed on a filled canvas, so a 5x
    context window of a large box costs no more than the frame itself."""
    x0, y0, x1, y1 = window
    scale = size / max(x1 - x0, y1 - y0)
    canvas_w, canvas_h = round((x1 - x0) * scale), round((y1 - y0) * scale)
    out = np.full((size, size) + image.shape[2:], fill, dtype=image.dtype)
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 <= sx0 or sy1 <= sy0:
        return out
    top, left = (size - canvas_h) // 2, (size - canvas_w) // 2
    dx0, dy0 = left + round((sx0 - x0) * scale), top + round((sy0 - y0) * scale)
    dx1 = min(max(left + round((sx1 - x0) * scale), dx0 + 1), size)
    dy1 = min(max(top + round((sy1 - y0) * scale), dy0 + 1), size)
    piece = image[sy0:sy1, sx0:sx1]
    if piece.shape[1] != dx1 - dx0 or piece.shape[0] != dy1 - dy0:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        piece = cv2.resize(piece, (dx1 - dx0, dy1 - dy0), interpolation=interpolation)
        piece = piece.reshape((dy1 - dy0, dx1 - dx0) + image.shape[2:])
    out[dy0:dy1, dx0:dx1] = piece
    return out


def parse_view(name: str) -> float | None:
    """View name -> context factor: 'roi' -> 0.0 (the box itself), 'ctx3' -> 3.0, 'frame' -> None."""
    match = _VIEW_RE.match(name)
    if not match:
        raise ValueError(f"unknown view {name!r}: use 'roi', 'ctx<k>' (e.g. ctx3, ctx5) or 'frame'")
    if name == "roi":
        return 0.0
    if name == "frame":
        return None
    return float(match.group(2))


def one_or_per_view(sizes) -> int | tuple[int, ...]:
    """The one size when every view has it (the (N, V, S, S, 3) layout), else the sizes per view."""
    if isinstance(sizes, int):
        return sizes
    sizes = tuple(int(s) for s in sizes)
    return sizes[0] if len(set(sizes)) == 1 else sizes


def view_pixels(image: np.ndarray, box: Box, view: str, fill: int = DEFAULT_FILL) -> np.ndarray:
    """The native-resolution pixels of one view of a box (not squared, not resized)."""
    k = parse_view(view)
    if k is None:
        return image
    if k == 0.0:
        x0, y0, x1, y1 = box
        return image[y0:y1, x0:x1]
    return crop_padded(image, context_window(box, k), fill)


def square_view(image: np.ndarray, box: Box, view: str, size: int, fill: int = DEFAULT_FILL) -> np.ndarray:
    """One view of a box squared to (size, size, C): `fit_square(view_pixels(...))`, computed cheaply."""
    k = parse_view(view)
    if k is None or k == 0.0:
        return fit_square(view_pixels(image, box, view, fill), size, fill)
    return window_square(image, context_window(box, k), size, fill)


def extract_views(image: np.ndarray, box: Box, views, size: int, fill: int = DEFAULT_FILL,
                  frame_square: np.ndarray | None = None) -> np.ndarray:
    """All views of one box as a (V, size, size, C) stack.

    `frame_square` (the 'frame' view, the same for every box of a frame) can be passed in to avoid
    resizing the whole frame once per box."""
    out = []
    for view in views:
        if view == "frame" and frame_square is not None:
            out.append(frame_square)
        else:
            out.append(square_view(image, box, view, size, fill))
    return np.stack(out)
