"""Quality gate: does the generated person still look like the person in the photo?

The runner calls :func:`identity_similarity` after generation; the figure goes into the
termination message, and a profile's ``min_identity_similarity`` makes the runner retry with a new
seed (``identity_retries``) and finally fail with ``IDENTITY_CHECK_FAILED``. The measure is the
one the InstantID, PuLID and PhotoMaker papers report: the cosine between the ArcFace embedding of
the input face and that of the face found in the output (published InstantID figures: 0.61-0.73).
"""

from __future__ import annotations

from PIL import Image

from compose_inference import faces


def identity_similarity(
    analyzer: faces.FaceAnalyzer, face: faces.Face, image: Image.Image
) -> float | None:
    """ArcFace cosine between ``face`` and the largest face in ``image``; None when it has none.

    The several-faces policy does not apply here: a crowd in the output is judged by its largest
    face, which is the one IdentityNet placed.
    """
    found = analyzer.detect(image)
    if not found:
        return None
    return faces.cosine_similarity(face.embedding, found[0].embedding)
