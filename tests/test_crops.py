"""ROI and context window geometry (src.data.crops)."""
import numpy as np
import pytest

from src.data.crops import (
    BadBoxError,
    clip_box,
    context_window,
    crop_padded,
    extract_views,
    fit_square,
    parse_view,
    square_view,
    view_pixels,
    window_square,
)


def test_clip_box_rounds_outwards_and_clips_to_frame():
    assert clip_box([10.4, 5.6, 20.2, 10.0], 100, 50) == (10, 5, 31, 16)
    assert clip_box([-5, -3, 20, 10], 100, 50) == (0, 0, 15, 7)
    assert clip_box([90, 45, 30, 30], 100, 50) == (90, 45, 100, 50)


@pytest.mark.parametrize("bbox, reason", [
    ([10, 10, 0, 5], "zero-area"),
    ([10, 10, 5, -1], "negative size"),
    ([10, 10, -3, 4], "negative size"),
    ([200, 10, 5, 5], "outside"),
    ([-20, -20, 10, 10], "outside"),
    ([1, 2, 3], "4 numbers"),
    (None, "4 numbers"),
    ([1, float("nan"), 3, 4], "non-finite"),
])
def test_clip_box_rejects_bad_boxes(bbox, reason):
    with pytest.raises(BadBoxError, match=reason):
        clip_box(bbox, 100, 50)


def test_context_window_is_square_centred_and_k_times_long_side():
    x0, y0, x1, y1 = context_window((40, 20, 60, 30), 3)  # 20 x 10 box centred on (50, 25)
    assert x1 - x0 == y1 - y0 == 60
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (50, 25)


def test_crop_padded_fills_outside_and_copies_inside():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3) + 1  # no zero pixels
    out = crop_padded(image, (-2, -1, 4, 3), fill=0)
    assert out.shape == (4, 6, 3)
    assert (out[0] == 0).all() and (out[:, :2] == 0).all()
    np.testing.assert_array_equal(out[1:, 2:], image[0:3, 0:4])
    assert (crop_padded(image, (10, 10, 12, 12), fill=7) == 7).all()


def test_fit_square_pads_instead_of_squashing():
    tall = np.full((40, 10, 3), 255, np.uint8)
    out = fit_square(tall, 20)
    assert out.shape == (20, 20, 3)
    white_cols = np.where(out[10, :, 0] > 128)[0]
    assert len(white_cols) == 5 and white_cols[0] == 7  # 10/40 of the width, centred
    assert (out[:, :7] == 0).all() and (out[:, 12:] == 0).all()
    assert (out[:, 7:12] == 255).all()  # full height kept


def test_window_square_matches_the_naive_padded_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    for window in [(-40, -30, 80, 90), (100, 40, 200, 140), (10, 10, 70, 70), (-500, -500, -400, -400)]:
        fast = window_square(image, window, 32).astype(int)
        naive = fit_square(crop_padded(image, window), 32).astype(int)
        assert fast.shape == naive.shape == (32, 32, 3)
        # the same picture up to resampling at the frame edge
        assert np.abs(fast - naive).mean() < 6
        assert ((fast == 0).all(axis=2) ^ (naive == 0).all(axis=2)).mean() < 0.08


def test_views_of_a_box_near_the_border():
    image = np.full((100, 200, 3), 100, np.uint8)
    image[0:10, 0:20] = 255  # the object, in the top-left corner
    box = clip_box([-5, -5, 25, 15], 200, 100)
    assert box == (0, 0, 20, 10)
    assert view_pixels(image, box, "roi").shape == (10, 20, 3)
    assert (view_pixels(image, box, "roi") == 255).all()
    ctx = view_pixels(image, box, "ctx3")  # 60 x 60 centred on (10, 5): mostly outside top/left
    assert ctx.shape == (60, 60, 3)
    assert (ctx[:25] == 0).all() and (ctx[25:35, 20:40] == 255).all()
    views = extract_views(image, box, ("roi", "ctx3", "ctx5", "frame"), 24)
    assert views.shape == (4, 24, 24, 3) and views.dtype == np.uint8
    assert (views[0][12, :, 0] == 255).all() and (views[0][:6] == 0).all()  # 2:1 box padded top/bottom
    np.testing.assert_array_equal(views[3], fit_square(image, 24))
    frame_square = np.full((24, 24, 3), 9, np.uint8)
    assert (extract_views(image, box, ("frame",), 24, frame_square=frame_square)[0] == 9).all()
    np.testing.assert_array_equal(square_view(image, box, "ctx3", 24), views[1])


def test_context_of_a_large_box_stays_cheap_and_centred():
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[240:840, 660:1260] = 200  # a 600 px object: ctx5 is a 3000 px window
    out = square_view(image, (660, 240, 1260, 840), "ctx5", 50)
    centre = out[20:30, 20:30]
    assert (centre == 200).all() and (out[:5] == 0).all()


def test_parse_view():
    assert parse_view("roi") == 0.0 and parse_view("frame") is None
    assert parse_view("ctx3") == 3.0 and parse_view("ctx1.5") == 1.5
    with pytest.raises(ValueError, match="unknown view"):
        parse_view("context")
