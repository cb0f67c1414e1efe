"""Loading untrusted images: any common format and mode in, an 8-bit RGB PIL image out.

Every failure is an ImageError with one line a user can act on; nothing is decoded before the
pixel count from the header has been checked against a limit.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from explainers.errors import ImageError
from explainers.errors import reason as _reason

# Formats a user may upload. The allowlist keeps Pillow from handing odd files to plugins that
# run external programs (EPS calls Ghostscript) or parse rarely-fuzzed containers.
FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "TIFF", "GIF", "AVIF")
_FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
_DAMAGED = " The file may be damaged or cut off: save or download it again."
# What a broken file makes Pillow's decoders raise; DecompressionBombError is no OSError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
Source = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def content_hash(data: bytes) -> str:
    """Return the SHA-256 hex digest of an image's bytes, a cache key for its explanations."""
    return hashlib.sha256(data).hexdigest()


def load_image(source: Source, *, max_pixels: int = 40_000_000, min_side: int = 16) -> Image.Image:
    """Read an image from bytes, a path or a binary file into an 8-bit RGB image.

    EXIF orientation is applied, transparency is flattened onto white, and high bit depths are
    scaled (not clipped) to 0-255. Only the first frame of an animation is used.

    Args:
        source: the encoded file, as bytes, a path, or a binary file object (e.g. an upload).
        max_pixels: largest width * height accepted, checked from the header before decoding.
        min_side: smallest width and height accepted.

    Returns:
        A fully loaded PIL image in mode "RGB".

    Raises:
        ImageError: the input is empty, not an image, corrupt or truncated, too large or too
            small.
    """
    stream = io.BytesIO(_read(source))
    # LOAD_TRUNCATED_IMAGES is Pillow's global switch; another library may have set it, and
    # then a cut-off upload would be padded with grey instead of failing. Refuse to run so.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            "Cannot check images: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set;"
            " set it back to False before loading images."
        )
    try:
        image = Image.open(stream, formats=[f for f in FORMATS if f in _registered()])
    except Image.UnidentifiedImageError as err:
        raise ImageError(
            f"Could not read the image: it is not a {_FORMAT_NAMES} file. Save it in one of these formats."
        ) from err
    except Image.DecompressionBombError as err:  # Pillow's own, higher limit
        raise ImageError(f"The image is too large to open safely: {err} Downscale it and try again.") from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"Could not read the image: {_reason(err)}.{_DAMAGED}") from err
    with image:
        # Open only parsed the header: check the size before any pixel is decoded.
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"The image is {width}×{height} pixels ({width * height / 1e6:.3g} megapixels);"
                f" the limit is {max_pixels / 1e6:.3g} megapixels. Downscale it below the limit."
            )
        if min(width, height) < min_side:
            raise ImageError(
                f"The image is {width}×{height} pixels; it needs to be at least {min_side}×{min_side}."
                " Use a larger image."
            )
        try:
            image.load()
            # Phones store pixels as the sensor saw them and the rotation in EXIF.
            # exif_transpose returns a new image, so closing the original on exit is safe.
            return _to_rgb(ImageOps.exif_transpose(image))
        except _DECODE_ERRORS as err:
            raise ImageError(f"Could not read the image: {_reason(err)}.{_DAMAGED}") from err


def _read(source: Source) -> bytes:
    """Return the encoded bytes of a source, raising ImageError if unreadable or empty."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                data = f.read()
        else:
            data = source.read()
    except OSError as err:
        raise ImageError(
            f"Could not read the image file: {_reason(err)}. Check the path and its permissions."
        ) from err
    if not isinstance(data, bytes):
        raise ImageError(f"Expected image bytes, got {type(data).__name__}.")
    if not data:
        raise ImageError(
            "The image file is empty (0 bytes). Choose another file, or save or upload it again."
        )
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling high bit depths and flattening alpha."""
    if image.mode in _SIXTEEN_BIT:
        # convert() clips 16-bit values at 255; the full range maps 65535 -> 255 instead.
        values = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.rint(values).astype(np.uint8))
    elif image.mode in ("I", "F"):
        # 32-bit data has no fixed white point: stretch what is there to 0-255.
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        span = high - low if high > low else 1.0
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
        image = Image.fromarray(np.rint((values - low) / span * 255).astype(np.uint8))
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("LA").convert("RGBA") if image.mode == "La" else image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _registered() -> set[str]:
    """Format names Pillow can open in this installation (plugins load on first use)."""
    Image.init()
    return set(Image.OPEN)
