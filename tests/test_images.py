"""explainers.services.images: every ugly input becomes an 8-bit RGB image or one ImageError line."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from explainers.errors import ImageError
from explainers.services.images import content_hash, load_image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a PIL image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def rgb(data: bytes | io.BytesIO | Path, **kwargs: int) -> np.ndarray:
    """Load with load_image, check the common contract and return the pixels (H, W, 3)."""
    image = load_image(data, **kwargs)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (image.height, image.width, 3)
    return pixels


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and 8-bit grey IHDR chunk claiming a size, with one empty IDAT chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


def gradient(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """An RGB test picture with distinct colours everywhere."""
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01garbage\xff" * 10, b"hello, this is text\n" * 20, b"%!PS-Adobe-3.0 EPSF-3.0\n"],
    ids=["random-bytes", "text", "eps-not-allowed"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageError, match=r"^Could not read the image: it is not a PNG, JPEG"):
        load_image(data)


def test_text_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture\n")
    with pytest.raises(ImageError, match="not a PNG"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt: str) -> None:
    data = encode(gradient((200, 150)), fmt)
    with pytest.raises(ImageError, match=r"^Could not read the image: .*truncated") as info:
        load_image(data[: len(data) * 2 // 3])
    assert isinstance(info.value.__cause__, OSError)  # chained, not swallowed


def test_empty_input(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    for source in (b"", io.BytesIO(b""), tmp_path / "empty.jpg"):
        with pytest.raises(ImageError, match=r"^The image file is empty \(0 bytes\)\. Choose another file"):
            load_image(source)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^Could not read the image file: .*missing.png"):
        load_image(tmp_path / "missing.png")


def test_too_small() -> None:
    data = encode(Image.new("RGB", (1, 1)), "PNG")
    with pytest.raises(
        ImageError, match="^The image is 1×1 pixels; it needs to be at least 16×16. Use a larger image.$"
    ):
        load_image(data)
    assert load_image(encode(Image.new("RGB", (16, 16)), "PNG")).size == (16, 16)


def test_large_header_rejected_before_decoding() -> None:
    # 7000x7000 is above the default limit but below Pillow's own; the pixel data is missing,
    # so any decoding attempt would fail with "truncated" instead of the size message.
    with pytest.raises(ImageError, match=r"^The image is 7000×7000 pixels \(49 megapixels\)"):
        load_image(png_header(7000, 7000))


def test_max_pixels_is_honoured() -> None:
    data = encode(gradient((100, 100)), "PNG")
    with pytest.raises(ImageError, match="the limit is 0.005 megapixels"):
        load_image(data, max_pixels=5_000)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_pillow_decompression_bomb_error() -> None:
    with pytest.raises(ImageError, match="too large to open safely") as info:
        load_image(png_header(100_000, 100_000))
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def test_load_truncated_images_flag_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(encode(gradient(), "PNG"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_damaged_files_never_raise_anything_else(fmt: str) -> None:
    data = encode(gradient((80, 60)), fmt)
    rng = np.random.default_rng(0)
    for trial in range(40):
        damaged = bytearray(data[: rng.integers(1, len(data) + 1)])
        if trial % 2:  # flip a few bytes anywhere, header included
            for at in rng.integers(0, len(damaged), 3):
                damaged[at] ^= 0xFF
        try:
            rgb(bytes(damaged))
        except ImageError as err:
            assert "\n" not in str(err)


# --- formats and modes ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats(fmt: str) -> None:
    pixels = rgb(encode(Image.new("RGB", (40, 30), (200, 40, 90)), fmt))
    assert pixels.shape == (30, 40, 3)
    assert np.abs(pixels[15, 20].astype(int) - (200, 40, 90)).max() <= 8  # lossy/palette


def test_sources_bytes_path_and_file(tmp_path: Path) -> None:
    data = encode(gradient(), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    expected = rgb(data)
    for source in (bytearray(data), tmp_path / "a.png", str(tmp_path / "a.png"), io.BytesIO(data)):
        np.testing.assert_array_equal(rgb(source), expected)


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(rgb(data)[0, 0]) == (255, 0, 0)


def test_exif_orientation_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # a red square at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; display turns it 90 degrees clockwise
    pixels = rgb(encode(image, "JPEG", exif=exif, quality=95))
    assert pixels.shape == (40, 20, 3)
    assert pixels[5, 15, 0] > 200 and pixels[5, 15, 2] < 60  # now at the top-right
    assert pixels[5, 2, 2] > 200


def test_cmyk_jpeg() -> None:
    image = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan ink
    pixels = rgb(encode(image, "JPEG", quality=95))
    assert np.abs(pixels[16, 16].astype(int) - (0, 255, 255)).max() <= 4


def test_lab_tiff() -> None:
    white = Image.new("LAB", (32, 32), (255, 128, 128))  # L = 100, a = b = 0
    assert rgb(encode(white, "TIFF"))[0, 0].min() >= 250


def test_bilevel_png() -> None:
    image = Image.new("1", (20, 20), 0)
    image.paste(1, (0, 0, 10, 20))
    pixels = rgb(encode(image, "PNG"))
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[0, 19]) == (0, 0, 0)


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.zeros((20, 30), np.uint16)
    values[:, 10:20], values[:, 20:] = 32768, 65535
    cv2.imwrite(str(tmp_path / "grey16.png"), values)
    with Image.open(tmp_path / "grey16.png") as raw:
        assert raw.mode == "I;16"
    pixels = rgb(tmp_path / "grey16.png")
    assert tuple(pixels[0, [0, 15, 25], 0]) == (0, 128, 255)
    assert (pixels[..., 0] == pixels[..., 2]).all()


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_sixteen_bit_rgb(tmp_path: Path, fmt: str) -> None:
    bgr = np.zeros((20, 30, 3), np.uint16)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 65535, 32768, 255  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / f"rgb16.{fmt}"), bgr)
    # Pillow opens 16-bit RGB as "RGB" keeping the high byte: a scaling (/256), not a clip.
    with Image.open(tmp_path / f"rgb16.{fmt}") as raw:
        assert raw.mode == "RGB"
    assert tuple(rgb(tmp_path / f"rgb16.{fmt}")[0, 0]) == (0, 128, 255)


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_32_bit_modes_are_stretched(dtype: type) -> None:
    values = np.tile(np.array([-1000, 0, 3000], dtype), (20, 10))  # (20, 30)
    image = Image.fromarray(values)
    assert image.mode in ("I", "F")
    pixels = rgb(encode(image, "TIFF"))
    assert tuple(pixels[0, [0, 1, 2], 0]) == (0, 64, 255)


def test_rgba_transparent_becomes_white() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 10, 20))
    image.paste((0, 0, 255, 128), (10, 0, 15, 20))
    pixels = rgb(encode(image, "PNG"))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, 12]) == (127, 127, 255)  # half blue over white
    assert tuple(pixels[0, 19]) == (255, 255, 255)


def test_la_transparent_becomes_white() -> None:
    image = Image.new("LA", (20, 20), (0, 0))
    image.paste((50, 255), (0, 0, 10, 20))
    pixels = rgb(encode(image, "PNG"))
    assert tuple(pixels[0, 0]) == (50, 50, 50) and tuple(pixels[0, 19]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    image.paste(1, (0, 0, 10, 20))
    pixels = rgb(encode(image, fmt, transparency=0))
    assert tuple(pixels[0, 0]) == (0, 128, 0) and tuple(pixels[0, 19]) == (255, 255, 255)


def test_content_hash() -> None:
    assert content_hash(b"") == hashlib.sha256(b"").hexdigest()
    assert content_hash(b"a") != content_hash(b"b") and len(content_hash(b"a")) == 64


@pytest.mark.parametrize(
    "source, fix",
    [
        (b"hello, this is text\n" * 20, "Save it in one of these formats."),
        (encode(gradient((200, 150)), "JPEG")[:-400], "save or download it again."),
        (png_header(7000, 7000), "Downscale it below the limit."),
        (png_header(100_000, 100_000), "Downscale it and try again."),
        (Path("/nonexistent/missing.png"), "Check the path and its permissions."),
    ],
    ids=["not-an-image", "truncated", "over-the-limit", "bomb", "missing"],
)
def test_every_error_says_what_to_do(source, fix: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(source)
    message = str(info.value)
    assert message.endswith(fix) and ".." not in message and "\n" not in message
