"""Face analysis stage: find the person's face and its ArcFace identity embedding.

Runs insightface's ``FaceAnalysis`` on an ``antelopev2``-layout folder (a SCRFD detector with five
keypoints and a 512-d ArcFace recognition model), keeping only those two tasks. The runner calls
:meth:`FaceAnalyzer.analyze` on the person photo before any diffusion weights are loaded, so a
photo without a face fails in seconds; ``quality`` calls it again on the generated image.

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

    def __init__(self, app: Any, *, multiple_faces: MultipleFacesPolicy = "largest") -> None:
        if multiple_faces not in ("largest", "reject"):
            raise ValueError(
                f"options.multiple_faces: expected 'largest' or 'reject', got {multiple_faces!r}"
            )
        self._app = app
        self.multiple_faces: MultipleFacesPolicy = multiple_faces

    @classmethod
    def load(
        cls,
        antelopev2_dir: Path,
        *,
        providers: list[str] | None = None,
        multiple_faces: MultipleFacesPolicy = "largest",
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
        return cls(app, multiple_faces=multiple_faces)

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face found, largest first (no policy applied)."""
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        found = self._app.get(bgr)
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
            raise NoFaceError("personImage: no face found in the person photo")
        if len(faces) > 1 and self.multiple_faces == "reject":
            raise MultipleFacesError(
                f"personImage: {len(faces)} faces found; this profile needs exactly one"
                " (options.multiple_faces: reject)"
            )
        return faces[0]
