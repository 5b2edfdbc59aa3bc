"""The pixel limit every decoder and the image loader check before they allocate, and the memory
check of the learned codecs.

The default is Pillow's ``MAX_IMAGE_PIXELS`` (89,478,485, about 9459x9459): an image Pillow opens
without a decompression-bomb warning can be encoded and decoded, and the largest output a header can
ask for is 256 MB of RGB8. It is raised only on request: ``max_pixels=`` in the API,
``--max-pixels`` on ``icm encode``/``icm decode``, or the ``ICM_MAX_PIXELS`` environment variable.

A learned codec's activations grow linearly with pixels (hundreds of MB per megapixel, measured by
``benchmarks/image_size_limits.py``), so an image under the pixel limit can still need more memory
than the machine has, and the kernel would kill the worker mid-run. A codec that declares
``memory_mb_per_mp`` is therefore refused, in one line and before it allocates, when its estimate
exceeds the memory available now (``MemAvailable`` on Linux, free GPU memory on CUDA).
``ICM_MEMORY_CHECK=off`` turns the check off (e.g. with swap, or a tighter estimate of your own).
"""

from __future__ import annotations

import os

from icm.errors import BitstreamError, UserError

DEFAULT_MAX_PIXELS = 89_478_485  # = PIL.Image.MAX_IMAGE_PIXELS (1 GiB / 4 bytes / 3 channels)
ENV = "ICM_MAX_PIXELS"
MEMORY_ENV = "ICM_MEMORY_CHECK"


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


def available_memory_mb(device=None) -> float | None:
    """Memory a new allocation can have now, in MB: free GPU memory on a CUDA device, else Linux's
    ``MemAvailable``; None where neither can be read (the check is then skipped)."""
    if str(device or "").startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0] / 2**20
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def check_memory(codec: str, pixels: int, mb_per_mp: float, source: str, device=None) -> None:
    """Refuse a pass of ``codec`` over ``pixels`` that needs more memory than is available."""
    if os.environ.get(MEMORY_ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return
    need = mb_per_mp * pixels / 1e6
    available = available_memory_mb(device)
    if available is not None and need > available:
        raise UserError(f"{source}: {codec} needs about {need / 1024:.1f} GB for {pixels:,} pixels "
                        f"({mb_per_mp:.0f} MB per megapixel), more than the {available / 1024:.1f} GB available; "
                        f"downscale or tile the image (or set {MEMORY_ENV}=off to try anyway)")
