"""Where the face, the garments and the background go on the canvas (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from compose_api import models
from compose_inference import layout

BOX = np.array([166.0, 58.0, 269.0, 173.0], dtype=np.float32)
KPS = np.array([[190, 100], [245, 100], [218, 130], [195, 155], [240, 155]], dtype=np.float32)


def _rows(mask: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[0]), int(rows[-1])


def test_face_goes_to_the_top_centre_at_the_framing_height() -> None:
    canvas = layout.place_face(BOX, KPS, width=768, height=1024, framing="full_body")
    x1, y1, x2, y2 = canvas.face_box.tolist()
    assert (x1 + x2) / 2 == pytest.approx(384, abs=0.5)
    assert y2 - y1 == pytest.approx(1024 / 9, rel=1e-4)
    assert y1 == pytest.approx(layout.TOP_MARGIN * 1024, rel=1e-4)
    # The keypoints keep their place inside the face box.
    assert np.all((canvas.kps[:, 0] > x1) & (canvas.kps[:, 0] < x2))
    assert np.all((canvas.kps[:, 1] > y1) & (canvas.kps[:, 1] < y2))


def test_garments_stack_from_shoulders_to_feet() -> None:
    canvas = layout.place_face(BOX, KPS, width=512, height=1024)
    upper = _rows(layout.garment_mask(canvas, "upper"))
    lower = _rows(layout.garment_mask(canvas, "lower"))
    shoes = _rows(layout.garment_mask(canvas, "shoes"))
    assert canvas.face_box[3] <= upper[0] < lower[0] < shoes[0]
    assert upper[1] < lower[1] < shoes[1] < 1024


def test_background_is_everything_but_the_person() -> None:
    canvas = layout.place_face(BOX, KPS, width=256, height=256)
    person = layout.person_mask(canvas)
    background = layout.background_mask(canvas)
    assert np.array_equal(person + background, np.ones_like(person))
    assert 0.1 < person.mean() < 0.6
    assert background[0, 0] == 1.0 and person[int(canvas.face_box[1]) + 2, 128] == 1.0


def test_a_portrait_has_no_room_for_shoes() -> None:
    canvas = layout.place_face(BOX, KPS, width=512, height=512, framing="portrait")
    assert layout.garment_mask(canvas, "shoes").sum() == 0
    assert layout.garment_mask(canvas, "upper").sum() > 0


def test_keypoint_image_is_drawn_on_black_around_the_keypoints() -> None:
    canvas = layout.place_face(BOX, KPS, width=256, height=256)
    image = np.asarray(layout.draw_keypoints(canvas))
    assert image.shape == (256, 256, 3)
    lit = np.argwhere(image.any(axis=2))
    assert lit.size and image[-1, -1].sum() == 0
    x1, y1, x2, y2 = canvas.face_box.tolist()
    assert x1 - 4 <= lit[:, 1].min() and lit[:, 1].max() <= x2 + 4
    assert y1 - 4 <= lit[:, 0].min() and lit[:, 0].max() <= y2 + 4


def test_bad_layout_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"options\.framing"):
        layout.place_face(BOX, KPS, width=64, height=64, framing="wide")
    canvas = layout.place_face(BOX, KPS, width=64, height=64)
    with pytest.raises(ValueError, match=r"^category: expected one of"):
        layout.garment_mask(canvas, "hat")


def test_full_body_framing_fits_the_shoes() -> None:
    canvas = layout.place_face(BOX, KPS, width=512, height=768)
    shoes = layout.garment_mask(canvas, "shoes")
    assert _rows(shoes)[1] < 767  # the shoes end above the bottom edge


def test_every_category_the_api_admits_has_a_region() -> None:
    """The layout table is keyed on the API's enum: no admitted category is refused later."""
    assert set(layout.CATEGORY_BANDS) == {*models.ClothingCategory, None}
    canvas = layout.place_face(BOX, KPS, width=512, height=768)
    for category in models.ClothingCategory:
        for spelled in (category, str(category)):  # the enum and its wire string
            region = layout.garment_mask(canvas, spelled)
            assert region.sum() > 0, category
    accessory = layout.garment_mask(canvas, "accessory")
    face = layout.face_mask(canvas, grow=1.0)
    # An accessory's region stays off the face (the identity's region).
    assert (accessory * face).sum() == 0


def test_keypoint_dots_have_the_reference_radius() -> None:
    """InstantID draws each keypoint as a disc of radius 10 px on a 1024-wide canvas."""
    canvas = layout.place_face(BOX, KPS, width=1024, height=1024)
    image = np.asarray(layout.draw_keypoints(canvas))
    x, y = (round(v) for v in canvas.kps[0])
    colour = np.array(layout.KEYPOINT_COLOURS[0])
    row = np.all(image[y] == colour, axis=1)
    run = np.flatnonzero(row[x - 15 : x + 16])
    assert run.max() - run.min() + 1 == 21  # 2 * 10 + 1 pixels across the centre
    half = layout.place_face(BOX, KPS, width=512, height=512)
    small = np.asarray(layout.draw_keypoints(half))
    x, y = (round(v) for v in half.kps[0])
    run = np.flatnonzero(np.all(small[y] == colour, axis=1)[x - 10 : x + 11])
    assert run.max() - run.min() + 1 == 11  # scaled with the canvas: radius 5


def test_face_crop_is_square_on_the_canvas_and_moves_the_keypoints() -> None:
    canvas = layout.place_face(BOX, KPS, width=1024, height=1024)
    box = layout.face_crop(canvas, grow=2.0)
    left, top, right, bottom = box
    assert right - left == bottom - top and left >= 0 and top >= 0
    assert right <= 1024 and bottom <= 1024
    x1, y1, x2, y2 = canvas.face_box.tolist()
    assert left <= x1 and x2 <= right and top <= y1 and y2 <= bottom
    inside = layout.crop_canvas(canvas, box, size=512)
    scale = 512 / (right - left)
    assert np.allclose(inside.kps, (canvas.kps - [left, top]) * scale, atol=1e-3)
    mask = np.asarray(layout.feathered_mask((100, 60), feather=0.2))
    assert mask[30, 50] == 255 and mask[0, 0] < 10 and mask[30, 0] < 30
    assert np.all(np.diff(mask[30, :50].astype(int)) >= 0)  # rises smoothly to the middle
