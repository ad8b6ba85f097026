"""Artwork: any image Pillow opens, as exact 150, 480 and 1000 px square JPEGs.

The picture is turned upright by its EXIF orientation, flattened on white if
it has transparency, converted to RGB (from palette, grey, CMYK...), cropped
to the centred square of its shorter side, then resized with Lanczos (a
smaller source is scaled up: the sizes are exact, as clients lay them out
by them). A file over :data:`MAX_PIXELS` is refused before it is decoded
(the header gives the size): a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Final

from PIL import Image, ImageOps, UnidentifiedImageError

from media.errors import MediaError

ARTWORK_SIZES: Final = (150, 480, 1000)
MAX_PIXELS: Final = 50_000_000  # 50 Mpx: bigger than any camera's picture a user would pick
JPEG_QUALITY: Final = 88
_WIDE_GREY: Final = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _name(source: Path | bytes) -> str:
    return source.name if isinstance(source, Path) else "the image"


def _open(source: Path | bytes) -> Image.Image:
    name = _name(source)
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise MediaError(f"{name} cannot be read: {exc.strerror or exc}") from None
    else:
        data = source
    if not data:
        raise MediaError(f"{name} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow's own bound (twice its MAX_IMAGE_PIXELS) trips before ours is checked.
        raise MediaError(f"{name} is over {MAX_PIXELS // 1_000_000} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise MediaError(f"{name} is not an image Pillow can open") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise MediaError(f"{name} is {width}x{height}: over {MAX_PIXELS // 1_000_000} megapixels")
    if width < 1 or height < 1:
        raise MediaError(f"{name} has no pixels")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{name} is corrupt ({exc})") from None
    return image


def _rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode in _WIDE_GREY:
        # convert("RGB") clips 16-bit grey at 255 (a white square): scale it down first.
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB")


def artwork_variants(source: Path | bytes) -> dict[int, bytes]:
    """``{150: jpeg, 480: jpeg, 1000: jpeg}``, each exactly that many pixels square."""
    image = _rgb(_open(source))
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    out: dict[int, bytes] = {}
    for size in ARTWORK_SIZES:
        buffer = io.BytesIO()
        square.resize((size, size), Image.Resampling.LANCZOS).save(
            buffer, "JPEG", quality=JPEG_QUALITY, optimize=True
        )
        out[size] = buffer.getvalue()
    return out
