"""Face analysis stage: find the person's face and its ArcFace identity embedding.

Runs insightface's ``FaceAnalysis`` on an ``antelopev2``-layout folder (a SCRFD detector with five
keypoints and a 512-d ArcFace recognition model), keeping only those two tasks. The runner calls
:meth:`FaceAnalyzer.analyze` on the person photo before any diffusion weights are loaded, so a
photo without a face fails in seconds; ``quality`` calls it again on the generated image.

Detectors (profile option ``face_detector``): ``insightface`` (default), the SCRFD model of the
``antelopev2`` folder; ``cascade``, OpenCV's LBP frontal-face cascade as scikit-image ships it
(``skimage.data.lbp_frontal_face_cascade_filename()``: inside a Python package, no download),
with the five keypoints placed by ArcFace's alignment template inside the box. The smoke
profile uses the cascade, so that its tiny random detector cannot see a face in a coffee cup.

Policy for several faces: the largest face is taken (InstantID's own choice), unless the profile
option ``multiple_faces: reject`` asks for exactly one face, in which case
:class:`MultipleFacesError` is raised.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from compose_inference import errors

# The detector's input; real antelopev2 accepts any size, the tiny test detector only 640x640.
DETECTION_SIZE = (640, 640)
DETECTION_THRESHOLD = 0.5
MultipleFacesPolicy = Literal["largest", "reject"]
Detector = Literal["insightface", "cascade"]
# ArcFace's five-point alignment template in its 112x112 crop: eyes, nose, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float32,
)  # fmt: skip
CASCADE_LONG_SIDE = 1024  # photos are scanned at most this large (boxes scaled back)
CASCADE_MIN_FACE = 40  # pixels, at the scanned size
# Overlapping windows a face must gather: 8 keeps the astronaut's one face and drops the
# single-window hits on her suit and the flag, which 4 (OpenCV's usual 3-5) lets through.
CASCADE_NEIGHBOURS = 8


class NoFaceError(errors.NoFaceFound):
    """The photo shows no face the detector accepts."""


class MultipleFacesError(NoFaceError):
    """The photo shows several faces and the profile asks for exactly one."""


@dataclasses.dataclass(frozen=True)
class Face:
    """The chosen face in image pixel coordinates."""

    bbox: npt.NDArray[np.float32]  # (4,): x1, y1, x2, y2
    kps: npt.NDArray[np.float32]  # (5, 2): eyes, nose, mouth corners
    embedding: npt.NDArray[np.float32]  # (512,): raw (not normalised) ArcFace embedding
    det_score: float
    faces_found: int

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


def cosine_similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / norm)


class FaceAnalyzer:
    """Loaded face models; :meth:`analyze` may be called any number of times."""

    def __init__(
        self,
        app: Any,
        *,
        multiple_faces: MultipleFacesPolicy = "largest",
        detector: Detector = "insightface",
    ) -> None:
        if multiple_faces not in ("largest", "reject"):
            raise ValueError(
                f"options.multiple_faces: expected 'largest' or 'reject', got {multiple_faces!r}"
            )
        if detector not in ("insightface", "cascade"):
            raise ValueError(
                f"options.face_detector: expected 'insightface' or 'cascade', got {detector!r}"
            )
        self._app = app
        self.multiple_faces: MultipleFacesPolicy = multiple_faces
        self.detector: Detector = detector
        self._cascade: Any = None
        if detector == "cascade":
            from skimage import data, feature

            self._cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())

    @classmethod
    def load(
        cls,
        antelopev2_dir: Path,
        *,
        providers: list[str] | None = None,
        multiple_faces: MultipleFacesPolicy = "largest",
        detector: Detector = "insightface",
    ) -> FaceAnalyzer:
        """Load the detector and recognition model from ``antelopev2_dir`` (``*.onnx`` inside)."""
        from insightface.app import FaceAnalysis

        if not antelopev2_dir.is_dir() or not any(antelopev2_dir.glob("*.onnx")):
            raise FileNotFoundError(f"face_analysis: no ONNX models in {antelopev2_dir}")
        chosen = providers or ["CPUExecutionProvider"]
        app = FaceAnalysis(
            name=str(antelopev2_dir),
            allowed_modules=["detection", "recognition"],
            providers=chosen,
        )
        if "recognition" not in app.models:
            raise FileNotFoundError(f"face_analysis: no recognition model in {antelopev2_dir}")
        ctx_id = 0 if "CUDAExecutionProvider" in chosen else -1
        app.prepare(ctx_id=ctx_id, det_thresh=DETECTION_THRESHOLD, det_size=DETECTION_SIZE)
        return cls(app, multiple_faces=multiple_faces, detector=detector)

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face found, largest first (no policy applied)."""
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        found = self._cascade_faces(image, bgr) if self._cascade is not None else self._app.get(bgr)
        faces = [
            Face(
                bbox=np.asarray(item.bbox, dtype=np.float32),
                kps=np.asarray(item.kps, dtype=np.float32),
                embedding=np.asarray(item.embedding, dtype=np.float32),
                det_score=float(item.det_score),
                faces_found=len(found),
            )
            for item in found
        ]
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def analyze(self, image: Image.Image) -> Face:
        """The person's face: the largest one, or an error per the several-faces policy."""
        faces = self.detect(image)
        if not faces:
            raise NoFaceError("spec.inputs.person.uri: no face found in the person photo")
        if len(faces) > 1 and self.multiple_faces == "reject":
            raise MultipleFacesError(
                f"spec.inputs.person.uri: {len(faces)} faces found; this profile needs exactly one"
                " (options.multiple_faces: reject)"
            )
        return faces[0]

    def _cascade_faces(self, image: Image.Image, bgr: npt.NDArray[np.uint8]) -> list[Any]:
        """Faces found by the frontal-face cascade, as insightface ``Face`` objects with the
        keypoints of the alignment template and the recognition model's embedding."""
        from insightface.app.common import Face as InsightFace

        rgb = image.convert("RGB")
        scale = min(1.0, CASCADE_LONG_SIDE / max(rgb.size))
        if scale < 1.0:
            rgb = rgb.resize(
                (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                Image.Resampling.BILINEAR,
            )
        scanned = np.asarray(rgb)
        side = min(scanned.shape[0], scanned.shape[1])
        if side < CASCADE_MIN_FACE:
            return []
        hits = self._cascade.detect_multi_scale(
            img=scanned,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(CASCADE_MIN_FACE, CASCADE_MIN_FACE),
            max_size=(side, side),
            min_neighbor_number=CASCADE_NEIGHBOURS,
        )
        # Largest first; a window centred inside a larger kept one is the same face.
        hits = sorted(hits, key=lambda hit: hit["width"] * hit["height"], reverse=True)
        kept: list[dict[str, int]] = []
        for hit in hits:
            cx, cy = hit["c"] + hit["width"] / 2, hit["r"] + hit["height"] / 2
            if not any(
                k["c"] <= cx <= k["c"] + k["width"] and k["r"] <= cy <= k["r"] + k["height"]
                for k in kept
            ):
                kept.append(hit)
        recognition = self._app.models["recognition"]
        found = []
        for hit in kept:
            left, top = hit["c"] / scale, hit["r"] / scale
            width, height = hit["width"] / scale, hit["height"] / scale
            bbox = np.array([left, top, left + width, top + height], dtype=np.float32)
            kps = ARCFACE_TEMPLATE / 112.0 * np.array([width, height], dtype=np.float32)
            kps = kps + np.array([left, top], dtype=np.float32)
            face = InsightFace(bbox=bbox, kps=kps, det_score=1.0)
            recognition.get(bgr, face)
            found.append(face)
        return found
