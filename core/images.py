"""Reading and writing images as HxWx3 uint8 RGB arrays, with clear errors for what icm does not code."""

from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from icm.bitstream import atomic_write_bytes
from icm.errors import UserError
from icm.limits import hint, max_pixels as pixel_limit

# Pillow modes that widen to 8-bit RGB without losing anything.
_LOSSLESS_TO_RGB = {"L", "P", "1", "RGB"}
_SIXTEEN_BIT_RAWMODES = ("RGB;16", "RGBA;16", "I;16")


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _bomb_guard(limit: int):
    """Pillow's decompression-bomb check, tied to icm's pixel limit and made an error at the limit
    (Pillow only warns up to twice its limit). Image.MAX_IMAGE_PIXELS is process-global, hence the lock."""
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Load an image as HxWx3 uint8 RGB.

    Grayscale and palette images are widened to RGB (lossless). An alpha channel that is fully opaque
    is dropped; real transparency and 16-bit samples are refused, since coding them as 8-bit RGB
    would silently change the image. An image whose header claims more than the pixel limit
    (:mod:`icm.limits`; ``max_pixels`` raises it) is refused before any pixel is decoded.
    """
    limit = pixel_limit(max_pixels)
    try:
        with _bomb_guard(limit), Image.open(path) as im:
            rawmode = im.tile[0][3] if im.tile else ""
            rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
            if im.mode.startswith("I;16") or im.mode in ("I", "F") or str(rawmode).startswith(_SIXTEEN_BIT_RAWMODES):
                raise UserError(f"{path}: {im.mode} image with more than 8 bits per sample; convert it to 8-bit RGB first")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                if np.asarray(rgba)[..., 3].min() < 255:
                    raise UserError(f"{path}: image has transparency, which icm does not code; flatten it onto a background first")
                im = rgba
            elif im.mode not in _LOSSLESS_TO_RGB and im.mode != "CMYK":
                raise UserError(f"{path}: unsupported image mode {im.mode}")
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UserError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UserError(f"{path}: image is larger than the limit of {limit:,} pixels; {hint()}") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{path}: empty image")
    return np.ascontiguousarray(arr)


def save_image(image: np.ndarray, path: str | Path) -> None:
    """Save atomically; the format follows the extension (PNG recommended: lossless)."""
    path = Path(path)
    buf = io.BytesIO()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown image extension {path.suffix!r}")
    Image.fromarray(image).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
