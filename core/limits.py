"""The pixel limit every decoder and the image loader check before they allocate.

The default is Pillow's ``MAX_IMAGE_PIXELS`` (89,478,485, about 9459x9459): an image Pillow opens
without a decompression-bomb warning can be encoded and decoded, and the largest output a header can
ask for is 256 MB of RGB8. It is raised only on request: ``max_pixels=`` in the API,
``--max-pixels`` on ``icm encode``/``icm decode``, or the ``ICM_MAX_PIXELS`` environment variable.
"""

from __future__ import annotations

import os

from icm.errors import BitstreamError, UserError

DEFAULT_MAX_PIXELS = 89_478_485  # = PIL.Image.MAX_IMAGE_PIXELS (1 GiB / 4 bytes / 3 channels)
ENV = "ICM_MAX_PIXELS"


def max_pixels(explicit: int | None = None) -> int:
    """The limit in force: ``explicit`` if given, else ``$ICM_MAX_PIXELS``, else the default."""
    if explicit is not None:
        value, where = explicit, "max_pixels"
    elif os.environ.get(ENV, "").strip():
        value, where = os.environ[ENV].strip(), ENV
    else:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}={value!r} is not a whole number of pixels") from None
    if limit < 1:
        raise UserError(f"{where}={value!r} must be at least 1")
    return limit


def hint() -> str:
    return f"raise the limit with --max-pixels or {ENV} if you trust the input"


def check_header_size(width: int, height: int, limit: int, source: str) -> None:
    """Refuse a bitstream whose header asks for more pixels than ``limit`` (before any decoding)."""
    if width * height > limit:
        raise BitstreamError(f"{source}: header says {width}x{height} = {width * height:,} pixels, more than "
                             f"the limit of {limit:,}; {hint()}")
