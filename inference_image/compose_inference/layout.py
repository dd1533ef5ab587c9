"""Where things go on the output canvas: the face, the garments and the background.

Pure functions (numpy and PIL only) called by ``pipeline.ComposePipeline``. The generated person
stands in a fixed frame: the person photo's five face keypoints are moved by a similarity
transform (scale + shift, no rotation change) so that the face box sits centred near the top of
the canvas with a height set by the framing (``full_body``: 1/9 of the canvas, so that the
figure fits down to the shoes; ``half_body``: 1/4.5; ``portrait``: 1/2.8). IdentityNet draws
the face there, so the body is below it and the regions for clothing follow from a standing
figure measured in head heights ``h``
below the chin (canon proportions: shoulders ~0.3 h under the chin, hips ~3 h, knees ~4.7 h,
ankles ~6.6 h; shoulder width ~2.6 h):

| category    | rows (below the chin)   | half width |
|-------------|-------------------------|------------|
| upper       | 0.2 h .. 3.1 h          | 1.4 h      |
| outerwear   | 0.1 h .. 3.7 h          | 1.7 h      |
| lower       | 2.6 h .. 6.7 h          | 1.1 h      |
| dress       | 0.2 h .. 5.0 h          | 1.5 h      |
| shoes       | 6.3 h .. 7.3 h          | 1.0 h      |
| accessory   | 0.05 h .. 4.7 h         | 1.9 h      |
| (none)      | 0.1 h .. 6.7 h          | 1.5 h      |

An accessory (bag, belt, scarf, necklace, watch) is worn or carried between the chin and the
hands (hanging arms end near 4.7 h), out to the hands (1.9 h): its region is that whole band. It
stops at the chin on purpose: a hat or glasses region over the face would let the garment
stream compete with the identity conditioning there.

The table is keyed on the API's ``models.ClothingCategory``, so a category the API admits and the
layout cannot place is impossible (a test walks the enum).

The person region is the head (the face box grown by 1.6) plus the widest body band down to the
feet; the background is everything else. Regions outside the canvas are clipped (a portrait
framing has no room for shoes: their mask is then empty and the garment contributes nothing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from compose_api import models

Framing = Literal["full_body", "half_body", "portrait"]
FRAMINGS: dict[str, float] = {"full_body": 1 / 9, "half_body": 1 / 4.5, "portrait": 1 / 2.8}
TOP_MARGIN = 0.04  # of the canvas height, above the face box

_Category = models.ClothingCategory
CATEGORY_BANDS: dict[models.ClothingCategory | None, tuple[float, float, float]] = {
    _Category.UPPER: (0.2, 3.1, 1.4),
    _Category.OUTERWEAR: (0.1, 3.7, 1.7),
    _Category.LOWER: (2.6, 6.7, 1.1),
    _Category.DRESS: (0.2, 5.0, 1.5),
    _Category.SHOES: (6.3, 7.3, 1.0),
    _Category.ACCESSORY: (0.05, 4.7, 1.9),
    None: (0.1, 6.7, 1.5),
}
CATEGORIES = tuple(str(name) for name in CATEGORY_BANDS if name is not None)
# InstantID's keypoint dots: radius 10 px at 1024 px wide (its draw_kps), scaled with the canvas.
KEYPOINT_RADIUS_AT_1024 = 10

# InstantID's keypoint drawing: limbs from the nose to each other point, one colour per point.
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
KEYPOINT_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))

FloatArray = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class Canvas:
    """The face placed on a ``width`` x ``height`` canvas."""

    width: int
    height: int
    face_box: FloatArray  # (4,) x1, y1, x2, y2 on the canvas
    kps: FloatArray  # (5, 2) on the canvas

    @property
    def head(self) -> float:
        return float(self.face_box[3] - self.face_box[1])


def place_face(
    bbox: FloatArray, kps: FloatArray, *, width: int, height: int, framing: str = "full_body"
) -> Canvas:
    """Move the detected face (photo coordinates) to its place on the output canvas."""
    if framing not in FRAMINGS:
        raise ValueError(f"options.framing: expected one of {sorted(FRAMINGS)}, got {framing!r}")
    face_height = float(bbox[3] - bbox[1])
    if face_height <= 0 or bbox[2] <= bbox[0]:
        raise ValueError(f"face.bbox: empty box {bbox.tolist()}")
    target_height = FRAMINGS[framing] * height
    scale = target_height / face_height
    centre_x = float(bbox[0] + bbox[2]) / 2
    target_top = TOP_MARGIN * height
    shift = np.array([width / 2 - centre_x * scale, target_top - float(bbox[1]) * scale])
    new_box = np.array(
        [
            bbox[0] * scale + shift[0],
            target_top,
            bbox[2] * scale + shift[0],
            target_top + target_height,
        ],
        dtype=np.float32,
    )
    new_kps = (np.asarray(kps, dtype=np.float64) * scale + shift).astype(np.float32)
    return Canvas(width=width, height=height, face_box=new_box, kps=new_kps)


def _rectangle(canvas: Canvas, x1: float, y1: float, x2: float, y2: float) -> FloatArray:
    mask = np.zeros((canvas.height, canvas.width), dtype=np.float32)
    left, right = max(0, math.floor(x1)), min(canvas.width, math.ceil(x2))
    top, bottom = max(0, math.floor(y1)), min(canvas.height, math.ceil(y2))
    if right > left and bottom > top:
        mask[top:bottom, left:right] = 1.0
    return mask


def garment_mask(canvas: Canvas, category: models.ClothingCategory | str | None) -> FloatArray:
    """The region a garment of ``category`` covers (1 inside), ``(height, width)``."""
    if category not in CATEGORY_BANDS:
        raise ValueError(f"category: expected one of {list(CATEGORIES)}, got {category!r}")
    key = None if category is None else models.ClothingCategory(category)
    start, end, half_width = CATEGORY_BANDS[key]
    chin = float(canvas.face_box[3])
    centre = float(canvas.face_box[0] + canvas.face_box[2]) / 2
    h = canvas.head
    return _rectangle(
        canvas, centre - half_width * h, chin + start * h, centre + half_width * h, chin + end * h
    )


def face_mask(canvas: Canvas, *, grow: float = 1.6) -> FloatArray:
    """The face box grown by ``grow`` around its centre (IdentityNet's region)."""
    x1, y1, x2, y2 = (float(v) for v in canvas.face_box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) * grow / 2, (y2 - y1) * grow / 2
    return _rectangle(canvas, cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def person_mask(canvas: Canvas) -> FloatArray:
    """Head plus the whole standing figure."""
    body = np.maximum.reduce([garment_mask(canvas, name) for name in CATEGORY_BANDS])
    return np.maximum(face_mask(canvas), body)


def background_mask(canvas: Canvas) -> FloatArray:
    return np.asarray(1.0 - person_mask(canvas), dtype=np.float32)


def draw_keypoints(canvas: Canvas) -> Image.Image:
    """IdentityNet's control image: the five keypoints and their limbs drawn on black."""
    import cv2  # here, not at the top: the request checks import this module, and must be cheap

    stick = max(1, round(4 * canvas.width / 1024))
    image = np.zeros((canvas.height, canvas.width, 3), dtype=np.uint8)
    kps = canvas.kps.astype(np.float64)
    for start, end in KEYPOINT_LIMBS:
        xs = (kps[start, 0], kps[end, 0])
        ys = (kps[start, 1], kps[end, 1])
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly(
            (round(sum(xs) / 2), round(sum(ys) / 2)),
            (round(length / 2), stick),
            round(angle),
            0,
            360,
            1,
        )
        cv2.fillConvexPoly(image, np.asarray(polygon, dtype=np.int32), KEYPOINT_COLOURS[start])
    image = (image * 0.6).astype(np.uint8)
    for index, (x, y) in enumerate(kps):
        radius = max(1, round(KEYPOINT_RADIUS_AT_1024 * canvas.width / 1024))
        cv2.circle(image, (round(x), round(y)), radius, KEYPOINT_COLOURS[index], -1)
    return Image.fromarray(image)


def face_crop(canvas: Canvas, *, grow: float = 2.0) -> tuple[int, int, int, int]:
    """The square region around the placed face that the refinement pass redraws: the face
    box's longer side grown by ``grow``, centred on the face, shifted (not clipped) to stay on
    the canvas, so the crop keeps its square shape; ``(left, top, right, bottom)``."""
    x1, y1, x2, y2 = (float(v) for v in canvas.face_box)
    side = min(round(max(x2 - x1, y2 - y1) * grow), canvas.width, canvas.height)
    side = max(side, 1)
    left = round((x1 + x2) / 2 - side / 2)
    top = round((y1 + y2) / 2 - side / 2)
    left = min(max(left, 0), canvas.width - side)
    top = min(max(top, 0), canvas.height - side)
    return left, top, left + side, top + side


def crop_canvas(canvas: Canvas, box: tuple[int, int, int, int], *, size: int) -> Canvas:
    """The face placement inside ``box``, scaled to a ``size`` x ``size`` canvas."""
    scale = size / (box[2] - box[0])
    offset = np.array([box[0], box[1]], dtype=np.float64)
    face_box = (canvas.face_box.reshape(2, 2).astype(np.float64) - offset) * scale
    kps = (canvas.kps.astype(np.float64) - offset) * scale
    return Canvas(
        width=size,
        height=size,
        face_box=face_box.reshape(4).astype(np.float32),
        kps=kps.astype(np.float32),
    )


def feathered_mask(size: tuple[int, int], *, feather: float = 0.12) -> Image.Image:
    """A blend mask (mode ``L``) for pasting a redrawn crop back: 255 inside, falling smoothly
    to 0 at the edges over ``feather`` of the shorter side, so no seam shows."""
    width, height = size
    ramp = max(1.0, feather * min(width, height))

    def edge(n: int) -> npt.NDArray[np.float64]:
        position = np.arange(n, dtype=np.float64) + 0.5
        distance = np.minimum(position, n - position)
        t = np.clip(distance / ramp, 0.0, 1.0)
        weights: npt.NDArray[np.float64] = t * t * (3 - 2 * t)  # smoothstep
        return weights

    mask = np.outer(edge(height), edge(width))
    return Image.fromarray(np.round(mask * 255).astype(np.uint8))
