"""Input image validation: formats by content, pixel and byte limits, truncation, EXIF
orientation, colour conversion; and result encoding."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from compose_api import contract
from compose_inference import errors, images
from tests.inference.io.conftest import encode


def test_png_jpeg_webp_decode_to_rgb(astronaut: Image.Image) -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        decoded = images.decode(encode(astronaut, fmt), field="spec.inputs.person.uri")
        assert decoded.format == fmt
        assert decoded.image.mode == "RGB"
        assert decoded.image.size == (512, 512)


def test_format_is_read_from_content_not_name(astronaut: Image.Image) -> None:
    # JPEG bytes are JPEG whatever the URI said; the decoder never sees a name.
    decoded = images.decode(encode(astronaut, "JPEG"), field="person.png")
    assert decoded.format == "JPEG"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"%PDF-1.7 not an image at all", "not an image (JPEG, PNG or WebP expected)"),
        (b"<html><body>404</body></html>", "not an image"),
    ],
)
def test_not_an_image(data: bytes, message: str) -> None:
    with pytest.raises(errors.InputRejected) as info:
        images.decode(data, field="spec.inputs.place.uri")
    assert info.value.exit_code == contract.ExitCode.INPUT_REJECTED
    assert str(info.value) == f"spec.inputs.place.uri: {message}" or message in str(info.value)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_unsupported_formats(astronaut: Image.Image, fmt: str) -> None:
    with pytest.raises(errors.InputRejected) as info:
        images.decode(encode(astronaut, fmt), field="spec.inputs.clothing[0].uri")
    assert str(info.value) == (
        f"spec.inputs.clothing[0].uri: unsupported format {fmt} (JPEG, PNG or WebP expected)"
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(astronaut: Image.Image, fmt: str) -> None:
    data = encode(astronaut, fmt)
    with pytest.raises(errors.InputRejected, match=f"truncated or corrupt {fmt} file"):
        images.decode(data[: len(data) // 2], field="f")


def test_oversized_pixels_refused_from_the_header() -> None:
    # 1-bit PNGs are tiny on disk whatever their size: the classic decompression bomb shape.
    bomb = encode(Image.new("1", (8000, 6000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(errors.InputRejected) as info:
        images.decode(bomb, field="spec.inputs.person.uri")
    assert str(info.value) == (
        "spec.inputs.person.uri: 8000x6000 is 48000000 pixels, more than the limit of 40000000"
    )


def test_huge_bomb_stopped_by_pillows_guard_too() -> None:
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(errors.InputRejected) as info:
        images.decode(bomb, field="spec.inputs.person.uri")
    assert str(info.value).startswith(
        "spec.inputs.person.uri: too many pixels, more than the limit of 40000000"
    )


def test_pixel_limit_is_configurable(astronaut: Image.Image) -> None:
    limits = images.ImageLimits(max_pixels=100_000)
    with pytest.raises(errors.InputRejected, match="512x512 is 262144 pixels"):
        images.decode(encode(astronaut, "PNG"), field="f", limits=limits)


def test_byte_limit(astronaut: Image.Image) -> None:
    data = encode(astronaut, "PNG")
    with pytest.raises(errors.InputRejected, match="more than the limit of 1000"):
        images.decode(data, field="f", limits=images.ImageLimits(max_bytes=1000))


def test_too_small() -> None:
    with pytest.raises(errors.InputRejected, match="8x8 is too small"):
        images.decode(encode(Image.new("RGB", (8, 8)), "PNG"), field="f")


def test_exif_orientation_is_applied() -> None:
    # Stored 80 wide x 40 high with orientation 6 (rotate 90° clockwise to view): 40 x 80.
    stored = Image.new("RGB", (80, 40), (200, 30, 30))
    stored.paste((30, 30, 200), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = images.decode(encode(stored, "JPEG", exif=exif.tobytes()), field="f")
    assert decoded.source_size == (80, 40)
    assert decoded.image.size == (40, 80)
    # The stored left half (blue) ends up at the top after the clockwise rotation.
    top = decoded.image.getpixel((20, 10))
    bottom = decoded.image.getpixel((20, 70))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[2] > top[0] and bottom[0] > bottom[2]


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    decoded = images.decode(encode(rgba, "PNG"), field="f")
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((5, 5)) == (255, 255, 255)


def test_grayscale_becomes_rgb() -> None:
    decoded = images.decode(encode(Image.new("L", (40, 40), 90), "PNG"), field="f")
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((0, 0)) == (90, 90, 90)


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_round_trips(astronaut: Image.Image, fmt: str, pil: str) -> None:
    data = images.encode(astronaut.resize((64, 64)), fmt)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.format == pil
        assert reopened.size == (64, 64)


def test_encode_refuses_unknown_format(astronaut: Image.Image) -> None:
    with pytest.raises(ValueError, match=r"spec\.output\.format: 'gif'"):
        images.encode(astronaut, "gif")


def test_multi_picture_jpeg_from_a_camera_is_accepted(astronaut: Image.Image) -> None:
    """Phones and cameras write MPO: a JPEG whose extra pictures are previews or depth maps."""
    buffer = io.BytesIO()
    preview = astronaut.resize((128, 128))
    astronaut.save(buffer, "MPO", save_all=True, append_images=[preview])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    decoded = images.decode(buffer.getvalue(), field="personImage")
    assert decoded.format == "JPEG"
    assert decoded.image.size == astronaut.size
    assert decoded.image.mode == "RGB"
