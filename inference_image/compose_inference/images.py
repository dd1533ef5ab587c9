"""Stage 2: turn fetched bytes into a safe RGB image, or refuse them with a clear reason.

The runner calls ``decode`` on every input right after fetching, before any model is loaded.
Checks, in order: byte limit; format by content (JPEG, PNG, WebP only; the extension and the
declared content type are ignored); pixel limit read from the header before any decoding, so a
decompression bomb is refused without allocating its pixels; a full decode that catches truncated
files; EXIF orientation applied; conversion to RGB (transparency flattened onto white).
"""

from __future__ import annotations

import dataclasses
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from compose_inference import errors

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; a phone photo is 12-50 MP
MIN_SIDE = 32


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = MIN_SIDE


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, orientation applied
    format: str  # JPEG, PNG or WEBP: what the bytes are, whatever the name said
    source_size: tuple[int, int]  # width, height as stored (before EXIF rotation)


def decode(data: bytes, *, field: str, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode and check one input image; raise InputRejected naming ``field`` and the reason."""
    if not data:
        raise errors.InputRejected(f"{field}: empty file")
    if len(data) > limits.max_bytes:
        raise errors.InputRejected(
            f"{field}: {len(data)} bytes, more than the limit of {limits.max_bytes}"
        )
    # 1. identify by content, reading the header only
    try:
        with warnings.catch_warnings():
            # Our own limit (below) is checked next, with a clearer message; Pillow's hard limit
            # (DecompressionBombError, twice Image.MAX_IMAGE_PIXELS) still stops huge headers.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data), formats=None)
    except UnidentifiedImageError:
        raise errors.InputRejected(f"{field}: not an image (JPEG, PNG or WebP expected)") from None
    except Image.DecompressionBombError as error:
        # Pillow's own guard (Image.MAX_IMAGE_PIXELS) fired while reading the header.
        raise errors.InputRejected(
            f"{field}: too many pixels, more than the limit of {limits.max_pixels} ({error})"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise errors.InputRejected(f"{field}: unreadable image header: {error}") from None
    kind = (probe.format or "").upper()
    if kind == "MPO":  # a JPEG with extra pictures (previews, depth): the first one is the photo
        kind = "JPEG"
    elif getattr(probe, "n_frames", 1) > 1 and kind != "WEBP":
        raise errors.InputRejected(f"{field}: animated images are not supported")
    if kind not in ALLOWED_FORMATS:
        raise errors.InputRejected(
            f"{field}: unsupported format {kind or 'unknown'} (JPEG, PNG or WebP expected)"
        )
    # 2. size from the header, before decoding any pixel
    width, height = probe.size
    if width * height > limits.max_pixels:
        raise errors.InputRejected(
            f"{field}: {width}x{height} is {width * height} pixels, more than the limit of "
            f"{limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise errors.InputRejected(
            f"{field}: {width}x{height} is too small (at least {limits.min_side} pixels a side)"
        )
    # 3. full decode: truncated or corrupt data fails here
    try:
        probe.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise errors.InputRejected(f"{field}: truncated or corrupt {kind} file: {error}") from None
    # 4. orientation and colour
    try:
        oriented = ImageOps.exif_transpose(probe)
    except (OSError, SyntaxError, ValueError) as error:
        raise errors.InputRejected(f"{field}: bad EXIF data: {error}") from None
    image = oriented if oriented is not None else probe
    return DecodedImage(image=_to_rgb(image), format=kind, source_size=(width, height))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def encode(image: Image.Image, fmt: str, *, quality: int = 95) -> bytes:
    """Encode the result for upload: ``png``, ``jpeg`` or ``webp`` (post-process stage)."""
    kind = fmt.lower()
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if kind == "png":
        rgb.save(buffer, format="PNG", optimize=False)
    elif kind in ("jpeg", "jpg"):
        rgb.save(buffer, format="JPEG", quality=quality, subsampling=0)
    elif kind == "webp":
        rgb.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"spec.output.format: {fmt!r} is not png, jpeg or webp")
    return buffer.getvalue()


CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
