"""Sample inputs written from photos shipped with scikit-image: no network needed.

``compose samples`` writes them for the first command of the README, and a pool worker
(``pool_worker``) runs its warm-up generation on them before it takes any job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_samples(folder: Path) -> list[Path]:
    """person.png (skimage's astronaut), shirt.png and trousers.png (tinted fabric-like
    textures), place.png (skimage's rocket launch site)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skimage_data

    data: Any = skimage_data  # scikit-image ships no type hints
    folder.mkdir(parents=True, exist_ok=True)

    def tinted(gray: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
        level = gray.astype(np.float32)[..., None] / 255.0
        return Image.fromarray((level * np.array(colour, dtype=np.float32)).astype(np.uint8))

    outputs = {
        "person.png": Image.fromarray(data.astronaut()),
        "shirt.png": tinted(data.brick(), (200, 40, 40)),
        "trousers.png": tinted(data.grass(), (40, 60, 160)),
        "place.png": Image.fromarray(data.rocket()),
    }
    written = []
    for name, image in outputs.items():
        path = folder / name
        image.save(path)
        written.append(path)
    return written
