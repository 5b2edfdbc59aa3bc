"""``hevc-features``: the conventional anchor for feature coding, in the manner of MPEG FCM's
common test conditions: the split tensor is packed into one picture and coded with a video codec.

* Features: the split tensor ``f`` of icm-omni-features' backbone head (ResNet-18/32 stem + layer1,
  32 channels at stride 4), so both feature codecs code the same tensor and a feature-reading task
  reads either file. Only the head is used; the weights hash is the head's hash, so a file made with
  another head is refused while retraining icm-omni-features' IF module or compressor is not a
  reason to.
* Packing: the C channels are tiled into one monochrome frame, a near-square grid (32 channels -> 8
  columns x 4 rows of h x w tiles, channel c at row c // cols, column c % cols), unused tiles mid-grey.
* Normalisation: one global min and max over the tensor map it linearly onto 0..1023 (10 bits); the
  two float32 travel in the stream ``range``, followed by a CRC-32 of them, the HEVC payload's length
  and the decoded frame (12 bytes in all): ffmpeg conceals a damaged or truncated HEVC payload
  instead of failing, so this check is what refuses one.
* Coding: HEVC intra with x265 at a fixed QP through ffmpeg, monochrome 10-bit (``gray10le``, the
  RExt 4:0:0 profile): no chroma planes to spend bits or time on. The payload ``main`` is the raw
  elementary stream, as in the ``hevc`` anchor, whose helpers (ffmpeg, x265 settings, timeout,
  ``-max_pixels`` guard) this reuses.

There is no decoder to pixels: ``decode``/``icm decode`` give the one-line error of FeatureCodec;
``decode_features`` gives the (1, C, h, w) tensor.
"""

from __future__ import annotations

import math
import struct
import subprocess
import zlib
from functools import lru_cache

import numpy as np
import torch

from icm.codecs import RateControl
from icm.codecs.anchors import HEVC, _run, decode_timeout, ffmpeg_exe
from icm.codecs.features import FeatureCodec
from icm.codecs.omni_features import SPLIT
from icm.errors import BitstreamError, CodecUnavailable

BITS = 10
TOP = 2**BITS - 1
PIX_FMT = "gray10le"
# The frame holds 2 samples per image pixel (32 channels at 1/16 of the pixels each), so the pixel
# anchor's QPs 22..47 would give 0.4-7 bpp here. These span ~1.5 down to ~0.2 bpp on 128x128 shapes
# images (docs/feature_coding.md); QP 51, HEVC's last, is the floor.
DEFAULT_QPS = (40, 42, 44, 46, 48, 51)
RATES = RateControl("qp", (0, 51), False, DEFAULT_QPS)


@lru_cache(maxsize=None)
def x265_pixel_formats() -> tuple[str, ...]:
    """The pixel formats the ffmpeg's libx265 wrapper accepts (``ffmpeg -h encoder=libx265``)."""
    exe = ffmpeg_exe()
    if not exe:
        return ()
    out = subprocess.run([exe, "-hide_banner", "-h", "encoder=libx265"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Supported pixel formats:" in line:
            return tuple(line.split(":", 1)[1].split())
    return ()


def tile_grid(channels: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid of ``channels`` tiles, wider than high: the divisor pair
    closest to a square when there is one no more than twice as wide as high (32 -> 4 x 8), else
    ceil(sqrt) columns with the last row partly empty."""
    rows = max(d for d in range(1, math.isqrt(channels) + 1) if channels % d == 0)
    cols = channels // rows
    if cols > 2 * rows:
        cols = math.ceil(math.sqrt(channels))
        rows = -(-channels // cols)
    return rows, cols


def tile(q: np.ndarray, rows: int, cols: int, fill: int) -> np.ndarray:
    """(C, h, w) -> one (rows*h, cols*w) frame, channel c at tile (c // cols, c % cols)."""
    c, h, w = q.shape
    frame = np.full((rows * cols, h, w), fill, dtype=q.dtype)
    frame[:c] = q
    return frame.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def untile(frame: np.ndarray, channels: int, rows: int, cols: int) -> np.ndarray:
    """Invert ``tile``: (rows*h, cols*w) -> (C, h, w)."""
    h, w = frame.shape[0] // rows, frame.shape[1] // cols
    return frame.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(rows * cols, h, w)[:channels]


def read_y4m_frame(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, samples) of the one frame of a YUV4MPEG2 stream as ffmpeg writes it."""
    head, sep, rest = data.partition(b"\n")
    fields = head.split()
    if not sep or not fields or fields[0] != b"YUV4MPEG2":
        raise BitstreamError("decoder wrote no YUV4MPEG2 frame")
    try:
        size = {f[:1]: int(f[1:]) for f in fields[1:] if f[:1] in (b"W", b"H")}
        width, height = size[b"W"], size[b"H"]
    except (KeyError, ValueError):
        raise BitstreamError("decoder wrote a YUV4MPEG2 header without a frame size") from None
    frame, sep, samples = rest.partition(b"\n")
    if not sep or not frame.startswith(b"FRAME"):
        raise BitstreamError("decoder wrote no YUV4MPEG2 frame")
    return width, height, samples


def _check(value_range: bytes, payload: bytes, frame: np.ndarray) -> int:
    """CRC-32 of what a decode must reproduce: the value range, the payload's length, the decoded frame."""
    return zlib.crc32(frame.tobytes(), zlib.crc32(value_range + struct.pack("<I", len(payload))))


class HEVCFeatures(FeatureCodec):
    """HEVC intra (x265, monochrome 10-bit, fixed QP) of icm-omni-features' split tensor, tiled into one
    frame. ``checkpoint``/``weights``/``device`` go to the icm-omni-features codec whose encoder side
    computes the features (default: its shipped weights)."""

    name = "hevc-features"
    version = "1"
    split = SPLIT
    has_image_decoder = False
    rate_control = RATES
    description = ("HEVC intra anchor of the feature split (MPEG FCM style): icm-omni-features' split tensor "
                   "tiled into one monochrome 10-bit frame, x265 at fixed QP (ffmpeg)")

    def __init__(self, checkpoint: str | None = None, weights: str | None = None, device: str | None = None):
        from icm.codecs import open_codec

        self._hevc = HEVC()  # its x265 settings and availability checks
        self._hash: bytes | None = None
        self._omni_error = None
        self.omni = None
        try:  # a bad option is the user's error now; a missing library is reported by unavailable_reason
            self.omni = open_codec("icm-omni-features", checkpoint=checkpoint, weights=weights, device=device)
        except CodecUnavailable as exc:
            self._omni_error = str(exc)

    # -- availability and identity ---------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        reason = self._hevc.unavailable_reason()  # no ffmpeg, or no libx265 / hevc decoder in it
        if reason:
            return reason
        if PIX_FMT not in x265_pixel_formats():
            return f"libx265 in ffmpeg at {ffmpeg_exe()} cannot code {PIX_FMT} (monochrome 10-bit)"
        if self.omni is None:
            return self._omni_error
        reason = self.omni.unavailable_reason()
        if reason:
            return f"icm-omni-features, whose encoder side computes the features, is unavailable: {reason}"
        return None

    def weights_hash(self, rate: dict) -> bytes:
        """The hash of icm-omni-features' backbone head alone: the only weights this codec uses."""
        if self._hash is None:
            self.require_available()
            self._hash = self.omni.encoder_hash()
        return self._hash

    # -- features --------------------------------------------------------------------------------------
    def feature_shape(self, height, width):
        return self.omni.feature_shape(height, width)

    def image_features(self, images):
        self.require_available()
        return self.omni.image_features(images)

    def encode_feature_streams(self, features, rate):
        x = features.detach().to("cpu", torch.float32).numpy()
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"encode_feature_streams takes one (1, C, h, w) tensor, got {tuple(x.shape)}")
        x = x[0]
        lo, hi = np.float32(x.min()), np.float32(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("the split tensor is not finite")
        span = float(hi) - float(lo)
        q = np.zeros(x.shape, np.float64) if span == 0 else (x.astype(np.float64) - float(lo)) / span * TOP
        q = np.clip(np.rint(q), 0, TOP).astype("<u2")
        rows, cols = tile_grid(x.shape[0])
        frame = tile(q, rows, cols, fill=(TOP + 1) // 2)
        height, width = frame.shape
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", PIX_FMT,
               "-s", f"{width}x{height}", "-i", "pipe:0", "-frames:v", "1", "-c:v", self._hevc.encoder,
               *self._hevc.encoder_args(rate["qp"]), "-f", self._hevc.fmt, "pipe:1"]
        payload = _run(cmd, frame.tobytes())
        value_range = struct.pack("<2f", lo, hi)
        # ffmpeg's HEVC decoder conceals damage silently: a payload cut to 100 bytes still "decodes" to a
        # full frame. So the encoder decodes its own payload once (HEVC decoding is bit-exact) and stores
        # a CRC-32 of the range, the payload's length and the decoded frame; the decoder refuses any other.
        check = _check(value_range, payload, self._decode_frame(payload, width, height))
        return {"main": payload, "range": value_range + struct.pack("<I", check)}

    def _decode_frame(self, payload: bytes, width: int, height: int) -> np.ndarray:
        """The one (height, width) 10-bit frame of an HEVC payload, refused if it has another size."""
        # -max_pixels: ffmpeg refuses a frame larger than expected before allocating it (margin as in the
        # hevc anchor); y4m output carries the decoded size, checked before anything is untiled
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-max_pixels", str((width + 192) * (height + 192)),
               "-f", self._hevc.fmt, "-i", "pipe:0", "-frames:v", "1", "-strict", "-1", "-f", "yuv4mpegpipe",
               "-pix_fmt", PIX_FMT, "pipe:1"]
        got_w, got_h, samples = read_y4m_frame(_run(cmd, payload, decode_timeout(width * height)))
        if (got_w, got_h) != (width, height):
            raise BitstreamError(f"payload is a {got_w}x{got_h} frame, the header's tensor tiles to {width}x{height}")
        if len(samples) != width * height * 2:
            raise BitstreamError(f"decoder wrote {len(samples)} bytes for a {width}x{height} 10-bit frame")
        return np.frombuffer(samples, "<u2").reshape(height, width)

    def decode_feature_streams(self, streams, rate, shape):
        if set(streams) != {"main", "range"}:
            raise BitstreamError(f"{self.name} needs streams main and range, got {sorted(streams)}")
        side = streams["range"]
        if len(side) != 12:
            raise BitstreamError(f"stream 'range' holds {len(side)} bytes, not min, max and check (12)")
        lo, hi = struct.unpack("<2f", side[:8])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise BitstreamError(f"stream 'range' is corrupt (min {lo}, max {hi})")
        channels, h, w = shape  # the header's, already checked against the image size
        rows, cols = tile_grid(channels)
        frame = self._decode_frame(streams["main"], cols * w, rows * h)
        if _check(side[:8], streams["main"], frame) != struct.unpack("<I", side[8:])[0]:
            raise BitstreamError("payload is damaged or truncated (the decoded frame fails its check)")
        q = untile(frame, channels, rows, cols).astype(np.float32)
        x = np.float32(lo) + np.minimum(q, TOP) * np.float32((float(hi) - float(lo)) / TOP)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)

    def info(self) -> dict:
        return {**super().info(), "pixel_format": PIX_FMT}
