"""Face analysis on real photos: the astronaut has one face, textures and flat colours none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from compose_api import contract
from compose_inference import faces, quality


def test_astronaut_has_one_face_in_the_face_region(person_face: faces.Face) -> None:
    x1, y1, x2, y2 = person_face.bbox.tolist()
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    # Her face spans about x 175-275, y 60-175 of the 512x512 photo.
    assert 180 < centre[0] < 270 and 70 < centre[1] < 170
    assert 60 < x2 - x1 < 160 and 60 < y2 - y1 < 180
    assert person_face.faces_found == 1
    assert person_face.kps.shape == (5, 2) and person_face.embedding.shape == (512,)
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in person_face.kps.tolist())


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (400, 300), (128, 128, 128)),
        Image.new("RGB", (400, 300), (200, 160, 130)),  # skin-coloured but flat
        Image.fromarray(data.brick()).convert("RGB"),
        Image.fromarray(data.grass()).convert("RGB"),
    ],
    ids=["grey", "flat-skin", "brick", "grass"],
)
def test_photos_without_a_person_have_no_face(
    analyzer: faces.FaceAnalyzer, image: Image.Image
) -> None:
    with pytest.raises(faces.NoFaceError, match=r"^spec\.inputs\.person\.uri: no face") as caught:
        analyzer.analyze(image)
    assert caught.value.exit_code == contract.ExitCode.NO_FACE


def _two_people(astronaut: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (1024, 512), (0, 0, 0))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut, (512, 0))
    return canvas


def test_several_faces_take_the_largest(
    analyzer: faces.FaceAnalyzer, astronaut: Image.Image
) -> None:
    found = analyzer.detect(_two_people(astronaut))
    assert len(found) == 2
    assert {round(float(face.bbox[0])) // 512 for face in found} == {0, 1}  # one per photo
    assert [face.area for face in found] == sorted((face.area for face in found), reverse=True)
    chosen = analyzer.analyze(_two_people(astronaut))
    assert chosen.faces_found == 2
    assert np.array_equal(chosen.bbox, found[0].bbox)


def test_several_faces_rejected_when_the_profile_asks(
    tiny_models: dict[str, Path], astronaut: Image.Image
) -> None:
    strict = faces.FaceAnalyzer.load(tiny_models["face_analysis"], multiple_faces="reject")
    assert strict.analyze(astronaut).faces_found == 1
    with pytest.raises(faces.MultipleFacesError, match="2 faces found"):
        strict.analyze(_two_people(astronaut))


def test_unknown_policy_and_missing_models_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"options\.multiple_faces"):
        faces.FaceAnalyzer(object(), multiple_faces="first")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="face_analysis: no ONNX models"):
        faces.FaceAnalyzer.load(tmp_path)


def test_identity_similarity(
    analyzer: faces.FaceAnalyzer, person_face: faces.Face, astronaut: Image.Image
) -> None:
    same = quality.identity_similarity(analyzer, person_face, astronaut)
    assert same is not None and same == pytest.approx(1.0, abs=1e-5)
    mirrored = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    other = quality.identity_similarity(analyzer, person_face, mirrored)
    assert other is not None and -1.0 <= other < 0.999
    flat = Image.new("RGB", (256, 256), (90, 90, 90))
    assert quality.identity_similarity(analyzer, person_face, flat) is None
    assert np.isfinite(faces.cosine_similarity(person_face.embedding, person_face.embedding))


@pytest.fixture(scope="module")
def cascade(tiny_models: dict[str, Path]) -> faces.FaceAnalyzer:
    """The smoke profile's analyzer: the frontal-face cascade shipped in scikit-image."""
    return faces.FaceAnalyzer.load(tiny_models["face_analysis"], detector="cascade")


def test_the_cascade_detector_finds_the_astronaut_with_aligned_keypoints(
    cascade: faces.FaceAnalyzer, astronaut: Image.Image, analyzer: faces.FaceAnalyzer
) -> None:
    face = cascade.analyze(astronaut)
    x1, y1, x2, y2 = face.bbox.tolist()
    assert 180 < (x1 + x2) / 2 < 270 and 70 < (y1 + y2) / 2 < 170
    assert face.faces_found == 1
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.kps.tolist())
    left_eye, right_eye = face.kps[0], face.kps[1]
    assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 2
    assert face.embedding.shape == (512,) and float(np.linalg.norm(face.embedding)) > 0
    # The same photo twice gives the same embedding; a larger copy finds the face scaled.
    assert np.allclose(cascade.analyze(astronaut).embedding, face.embedding)
    big = cascade.analyze(astronaut.resize((2048, 2048)))
    assert np.allclose(big.bbox / 4, face.bbox, atol=25)


@pytest.mark.parametrize("name", ["coffee", "rocket", "brick", "grass", "coins"])
def test_the_cascade_detector_sees_no_face_in_things(
    cascade: faces.FaceAnalyzer, name: str
) -> None:
    photo = Image.fromarray(getattr(data, name)()).convert("RGB")
    with pytest.raises(faces.NoFaceError, match=r"^spec\.inputs\.person\.uri: no face"):
        cascade.analyze(photo)


def test_the_tiny_detector_is_fooled_by_a_coffee_cup_which_is_why_smoke_uses_the_cascade(
    analyzer: faces.FaceAnalyzer,
) -> None:
    from compose_inference import catalogue

    coffee = Image.fromarray(data.coffee())
    assert analyzer.detect(coffee)  # the skin-colour heuristic "finds" a face
    assert catalogue.smoke_profile(Path("/m")).options["face_detector"] == "cascade"


def test_an_unknown_detector_is_named() -> None:
    with pytest.raises(ValueError, match=r"options\.face_detector: expected"):
        faces.FaceAnalyzer(object(), detector="magic")  # type: ignore[arg-type]
