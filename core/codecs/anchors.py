"""Traditional anchors: JPEG, WebP, AVIF, JPEG XL, JPEG 2000 and HEIF through Pillow and its plugins;
HEVC intra (x265) and VVC (vvenc) as raw bitstreams through ffmpeg or vvencapp/vvdecapp.

Every anchor has the resolution knob of Le §4.2: the image is coded at 100/75/50/25 % and resized back
to the original size after decoding, so a QP x resolution grid is just a list of rates.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, features

from icm.codecs import SCALES, Codec, RateControl
from icm.errors import BitstreamError
from icm.images import resize


class Anchor(Codec):
    kind = "anchor"

    def _scaled(self, image: np.ndarray, rate: dict) -> np.ndarray:
        s = rate.get("scale", 1.0)
        if s == 1.0:
            return image
        h, w = image.shape[:2]
        return resize(image, max(1, round(w * s)), max(1, round(h * s)))

    def encode_streams(self, image, rate):
        return {"main": self.encode_pixels(self._scaled(image, rate), rate[self.rate_control.param])}

    def decode_streams(self, streams, rate, width, height):
        if list(streams) != ["main"]:
            raise BitstreamError(f"{self.name} needs one stream 'main', got {sorted(streams)}")
        s = rate.get("scale", 1.0)
        small = (max(1, round(width * s)), max(1, round(height * s)))
        # decode_pixels checks the payload's own size claim against ``small`` before it decodes; this
        # check is the backstop before the resize allocates the header's size
        image = self.decode_pixels(streams["main"], *small)
        if image.shape[:2] != (small[1], small[0]):
            raise BitstreamError(f"decoded size {image.shape[1]}x{image.shape[0]} does not match the header")
        return resize(image, width, height)

    def encode_pixels(self, image: np.ndarray, q: int) -> bytes:
        raise NotImplementedError

    def decode_pixels(self, data: bytes, width: int, height: int) -> np.ndarray:
        raise NotImplementedError


# -- Pillow formats ------------------------------------------------------------------------------------
class PillowAnchor(Anchor):
    pillow_format = ""
    feature: str | None = None

    def save_options(self, q: int) -> dict:
        return {"quality": q}

    def unavailable_reason(self):
        if self.feature and not features.check(self.feature):
            return f"this Pillow build has no {self.feature} support"
        return None

    def encode_pixels(self, image, q):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=self.pillow_format, **self.save_options(q))
        return buf.getvalue()

    def decode_pixels(self, data, width, height):
        # Only this anchor's format (Pillow would otherwise try every format it knows), and the size the
        # payload declares must be the header's before any pixel is decoded. The header size is within
        # the pixel limit, so Pillow's own bomb check can only fire on a mismatch: it is an error too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[self.pillow_format]) as im:
                if im.size != (width, height):
                    raise BitstreamError(f"payload is a {im.size[0]}x{im.size[1]} image, the header says {width}x{height}")
                return np.asarray(im.convert("RGB"))


class JPEG(PillowAnchor):
    name, pillow_format, description = "jpeg", "JPEG", "JPEG (libjpeg-turbo via Pillow), 4:2:0"
    rate_control = RateControl("quality", (1, 100), True, (5, 10, 20, 35, 55, 75, 90), scales=SCALES)


class WebP(PillowAnchor):
    name, pillow_format, feature, description = "webp", "WEBP", "webp", "WebP lossy (libwebp via Pillow)"
    rate_control = RateControl("quality", (0, 100), True, (5, 15, 30, 50, 70, 90), scales=SCALES)

    def save_options(self, q):
        return {"quality": q, "method": 6}


class AVIF(PillowAnchor):
    name, pillow_format, feature, description = "avif", "AVIF", "avif", "AVIF (libavif/AV1 via Pillow)"
    rate_control = RateControl("quality", (0, 100), True, (10, 25, 40, 55, 70, 85), scales=SCALES)

    def save_options(self, q):
        return {"quality": q, "speed": 6}


class JPEG2000(PillowAnchor):
    name, pillow_format, feature = "jpeg2000", "JPEG2000", "jpg_2000"
    description = "JPEG 2000 (OpenJPEG via Pillow); the index is the compression ratio"
    rate_control = RateControl("ratio", (1, 1000), False, (200, 120, 80, 50, 30, 15), scales=SCALES)

    def save_options(self, q):
        return {"quality_mode": "rates", "quality_layers": [q], "irreversible": True}


class JPEGXL(PillowAnchor):
    name, pillow_format, description = "jpegxl", "JXL", "JPEG XL (libjxl via pillow-jxl-plugin)"
    rate_control = RateControl("quality", (0, 100), True, (10, 25, 40, 55, 70, 85), scales=SCALES)

    def unavailable_reason(self):
        try:
            import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        except ImportError as exc:
            return f"pillow-jxl-plugin is not installed ({exc})"
        return None

    def save_options(self, q):
        return {"quality": q, "effort": 7}


class HEIF(PillowAnchor):
    name, pillow_format, description = "heif", "HEIF", "HEIF container with x265 HEVC (libheif via pillow-heif)"
    rate_control = RateControl("quality", (0, 100), True, (10, 25, 40, 55, 70, 85), scales=SCALES)

    def unavailable_reason(self):
        try:
            import pillow_heif
        except ImportError as exc:
            return f"pillow-heif is not installed ({exc})"
        pillow_heif.register_heif_opener()
        return None


# -- raw video bitstreams through ffmpeg / vvenc ----------------------------------------------------
@lru_cache(maxsize=1)
def ffmpeg_exe() -> str | None:
    """ICM_FFMPEG, else the static ffmpeg that imageio-ffmpeg ships (it has libx265 and libvvenc), else PATH."""
    if os.environ.get("ICM_FFMPEG"):  # a path that is not an executable file means: no ffmpeg
        return shutil.which(os.environ["ICM_FFMPEG"])  # which() already requires an executable file
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


@lru_cache(maxsize=None)
def ffmpeg_has(kind: str, name: str) -> bool:
    exe = ffmpeg_exe()
    if not exe:
        return False
    out = subprocess.run([exe, "-hide_banner", f"-{kind}"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines() if line.strip())


def _run(cmd: list[str], stdin: bytes | None = None, timeout: float | None = None) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise BitstreamError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BitstreamError(f"{Path(cmd[0]).name} failed: {err[-1] if err else proc.returncode}")
    return proc.stdout


def decode_timeout(pixels: int) -> float:
    """Seconds a subprocess decoder may take for one frame: generous for real frames (an 89 MP
    frame decodes in a few seconds; a 0.4 MP VVC frame took over 10 s on a 2-core machine at load 20),
    but a crafted stream cannot hang a decode."""
    return 30.0 + 2 * pixels / 1e6


def _pad_even(image: np.ndarray) -> np.ndarray:
    # 4:2:0 needs even sizes; edge padding is cropped away after decoding.
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class FFmpegAnchor(Anchor):
    """Intra coding of one frame; the payload is the raw elementary stream (no container overhead).

    RGB <-> YUV 4:2:0 is done here, not by ffmpeg, so that every backend (ffmpeg, vvencapp) and
    every anchor uses the same colour conversion and only the codec differs.
    """

    encoder = ""
    decoder = ""
    fmt = ""
    bits = 8

    @property
    def pix_fmt(self) -> str:
        return "yuv420p" if self.bits == 8 else f"yuv420p{self.bits}le"

    def unavailable_reason(self):
        if not ffmpeg_exe():
            if os.environ.get("ICM_FFMPEG"):
                return f"ICM_FFMPEG={os.environ['ICM_FFMPEG']} is not an executable"
            return "no ffmpeg found (pip install imageio-ffmpeg, or set ICM_FFMPEG)"
        for kind, n in (("encoders", self.encoder), ("decoders", self.decoder)):
            if not ffmpeg_has(kind, n):
                return f"ffmpeg at {ffmpeg_exe()} has no {n} {kind[:-1]}"
        return None

    def encoder_args(self, qp: int) -> list[str]:
        raise NotImplementedError

    def encode_pixels(self, image, qp):
        padded = _pad_even(image)
        h, w = padded.shape[:2]
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", self.pix_fmt,
               "-s", f"{w}x{h}", "-i", "pipe:0", "-frames:v", "1", "-c:v", self.encoder,
               *self.encoder_args(qp), "-f", self.fmt, "pipe:1"]
        return _run(cmd, rgb_to_yuv420(padded, self.bits))

    def decode_pixels(self, data, width, height):
        pw, ph = width + width % 2, height + height % 2
        # -max_pixels: ffmpeg refuses a frame larger than the header's before allocating it (the margin
        # covers the 64-sample alignment of its buffers), so stdout holds at most one frame; the time
        # limit covers the rest
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-max_pixels", str((pw + 192) * (ph + 192)),
               "-f", self.fmt, "-i", "pipe:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", self.pix_fmt, "pipe:1"]
        return yuv420_to_rgb(_run(cmd, data, decode_timeout(pw * ph)), pw, ph)[:height, :width].copy()


class HEVC(FFmpegAnchor):
    """HEVC intra. A batch of equal-sized images is one ffmpeg run each way: the spawn (~18 ms) was
    40 % of a 128 px encode and 85 % of a decode. With ``keyint=1`` x265 writes every frame as an IDR
    picture with its own VPS/SPS/PPS, so the stream splits at each VPS into per-image files. They have
    the sizes of one-by-one encodes and decode to the same pixels (tests/test_codec_batches.py); in
    some pictures x265 sets one slice-header bit otherwise, which changes neither."""

    name, encoder, decoder, fmt = "hevc", "libx265", "hevc", "hevc"
    description = "HEVC intra, x265 at fixed QP, 4:2:0 (ffmpeg)"
    rate_control = RateControl("qp", (0, 51), False, (22, 27, 32, 37, 42, 47), scales=SCALES)

    def encoder_args(self, qp):
        # info=0: x265 otherwise writes ~2 KB of version/settings SEI into every stream
        return ["-preset", "medium", "-x265-params", f"qp={qp}:keyint=1:info=0:log-level=error"]

    def encode_streams_batch(self, images, rate):
        if len(images) == 1:
            return [self.encode_streams(images[0], rate)]
        frames = [_pad_even(self._scaled(image, rate)) for image in images]
        h, w = frames[0].shape[:2]
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", self.pix_fmt,
               "-s", f"{w}x{h}", "-i", "pipe:0", "-frames:v", str(len(frames)), "-c:v", self.encoder,
               *self.encoder_args(rate["qp"]), "-f", self.fmt, "pipe:1"]
        pictures = split_hevc_pictures(_run(cmd, b"".join(rgb_to_yuv420(f, self.bits) for f in frames)))
        if len(pictures) != len(frames):
            raise BitstreamError(f"x265 wrote {len(pictures)} pictures for {len(frames)} images")
        return [{"main": p} for p in pictures]

    def decode_streams_batch(self, streams, rate, width, height):
        if len(streams) == 1:
            return [self.decode_streams(streams[0], rate, width, height)]
        for one in streams:
            if list(one) != ["main"]:
                raise BitstreamError(f"{self.name} needs one stream 'main', got {sorted(one)}")
            # one picture per file, or the frames of the joined stream would not line up with the files
            if len(split_hevc_pictures(one["main"])) != 1:
                raise BitstreamError("payload is not one HEVC picture")
        s = rate.get("scale", 1.0)
        sw, sh = max(1, round(width * s)), max(1, round(height * s))
        pw, ph = sw + sw % 2, sh + sh % 2
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-max_pixels", str((pw + 192) * (ph + 192)),
               "-f", self.fmt, "-i", "pipe:0", "-frames:v", str(len(streams)), "-f", "rawvideo",
               "-pix_fmt", self.pix_fmt, "pipe:1"]
        raw = _run(cmd, b"".join(one["main"] for one in streams), decode_timeout(pw * ph * len(streams)))
        size = pw * ph * 3 // 2  # 8-bit 4:2:0
        if len(raw) != size * len(streams):
            raise BitstreamError(f"ffmpeg decoded {len(raw) / size:.1f} frames of {pw}x{ph} for {len(streams)} files")
        out = []
        for i in range(len(streams)):
            out.append(resize(yuv420_to_rgb(raw[i * size:(i + 1) * size], pw, ph)[:sh, :sw].copy(), width, height))
        return out


def split_hevc_pictures(stream: bytes) -> list[bytes]:
    """An Annex-B HEVC stream cut before each VPS that precedes a picture (our encodes: one VPS per IDR
    picture), after checking that every piece holds exactly one picture: a VCL NAL unit whose
    first_slice_segment_in_pic_flag is set. A piece that is not so makes the result shorter or longer
    than the picture count, which the callers refuse. (No parser library does this small job.)"""
    starts = []
    i = stream.find(b"\x00\x00\x01")
    while i >= 0 and i + 4 < len(stream):
        nal_type = (stream[i + 3] >> 1) & 63
        begin = i - 1 if i > 0 and stream[i - 1] == 0 else i  # 4-byte start code
        starts.append((begin, nal_type, stream[i + 5] >> 7 if i + 5 < len(stream) else 0))
        i = stream.find(b"\x00\x00\x01", i + 3)
    pieces, cut, first_slices = [], None, 0
    for begin, nal_type, first_slice in starts:
        if nal_type == 32:  # VPS: a new file begins
            if cut is not None:
                pieces.append((cut, begin, first_slices))
            cut, first_slices = begin, 0
        elif nal_type < 32 and first_slice:
            first_slices += 1
    if cut is not None:
        pieces.append((cut, len(stream), first_slices))
    if not pieces or pieces[0][0] != 0 or any(n != 1 for _, _, n in pieces):
        return []
    return [stream[a:b] for a, b, _ in pieces]


class VVC(FFmpegAnchor):
    """VVC intra. Uses vvencapp/vvdecapp when both are on PATH (the reference tools), else ffmpeg's
    libvvenc encoder and native vvc decoder, else reports itself unavailable.

    vvenc runs as an all-intra encoder tuned for PSNR: one intra period and GOP of one picture (the
    random-access GOP's 48 reference picture lists made the SPS 150 B, 0.07 bpp of a 128 px image),
    no access unit delimiter (nothing to delimit in a one-picture file), no perceptual QP adaptation
    (HM and VTM optimise PSNR, and so does x265's anchor within 1.5 %, docs/kodak.md). The settings
    and their BD-rates are in docs/kodak.md."""

    name, encoder, decoder, fmt = "vvc", "libvvenc", "vvc", "vvc"
    version = "2"  # 1: preset faster, random-access GOP, AUD, perceptual QPA
    bits = 10  # vvenc codes 10-bit internally; feeding 10-bit avoids a second rounding
    preset = "fast"  # faster: -8 % against x265 medium on Kodak, fast: -17 %, medium: 2.8x fast's time (docs/kodak.md)
    description = f"VVC all-intra at fixed QP, vvenc preset {preset}, 4:2:0 10-bit (vvencapp/vvdecapp, or ffmpeg libvvenc)"
    rate_control = RateControl("qp", (0, 63), False, (22, 27, 32, 37, 42, 47, 52), scales=SCALES)

    def _vvenc_tools(self):
        enc, dec = shutil.which("vvencapp"), shutil.which("vvdecapp")
        return (enc, dec) if enc and dec else None

    def unavailable_reason(self):
        if self._vvenc_tools():
            return None
        reason = super().unavailable_reason()
        return f"vvencapp/vvdecapp not on PATH and {reason}" if reason else None

    def encoder_args(self, qp):
        return ["-qp", str(qp), "-preset", self.preset, "-qpa", "0",
                "-vvenc-params", "IntraPeriod=1:GOPSize=1:AccessUnitDelimiter=0"]

    def encode_pixels(self, image, qp):
        tools = self._vvenc_tools()
        if not tools:
            return super().encode_pixels(image, qp)
        padded = _pad_even(image)
        h, w = padded.shape[:2]
        with tempfile.TemporaryDirectory() as tmp:
            yuv, out = Path(tmp, "in.yuv"), Path(tmp, "out.266")
            yuv.write_bytes(rgb_to_yuv420(padded, self.bits))
            # vvencapp's names for the settings of encoder_args (GOPSize through --additional)
            _run([tools[0], "-i", str(yuv), "-s", f"{w}x{h}", "-c", "yuv420_10", "--qp", str(qp), "-f", "1",
                  "--preset", self.preset, "--qpa", "0", "--intraperiod", "1", "--accessunitdelimiter", "0",
                  "--additional", "GOPSize=1", "-o", str(out)])
            return out.read_bytes()

    def decode_pixels(self, data, width, height):
        tools = self._vvenc_tools()
        if not tools:
            return super().decode_pixels(data, width, height)
        pw, ph = width + width % 2, height + height % 2
        with tempfile.TemporaryDirectory() as tmp:
            bit, yuv = Path(tmp, "in.266"), Path(tmp, "out.yuv")
            bit.write_bytes(data)
            _run([tools[1], "-b", str(bit), "-o", str(yuv)], timeout=decode_timeout(pw * ph))
            expected = pw * ph * 3  # 4:2:0 in 16-bit samples; a larger file is another size, not read
            if yuv.stat().st_size > expected:
                raise BitstreamError(f"vvdecapp wrote {yuv.stat().st_size} bytes for a {pw}x{ph} frame")
            return yuv420_to_rgb(yuv.read_bytes(), pw, ph)[:height, :width].copy()


# BT.601 full-range RGB <-> YUV 4:2:0 (chroma: 2x2 mean down, nearest up). Written by hand so the
# conversion is identical for every backend; numpy has no colour-space helpers and Pillow's YCbCr is 4:4:4 only.
_RGB2YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YUV2RGB = np.linalg.inv(_RGB2YUV)


def rgb_to_yuv420(rgb: np.ndarray, bits: int = 8) -> bytes:
    scale = 2 ** (bits - 8)
    yuv = (rgb.astype(np.float64) @ _RGB2YUV.T + [0, 128, 128]) * scale
    h, w = rgb.shape[:2]
    uv = yuv[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    top = 2**bits - 1
    return b"".join(np.clip(np.rint(p), 0, top).astype(dtype).tobytes() for p in (yuv[..., 0], uv[..., 0], uv[..., 1]))


def yuv420_to_rgb(raw: bytes, w: int, h: int) -> np.ndarray:
    """Decode raw planar 4:2:0; 8-bit or 16-bit-container (10-bit) samples, told apart by size."""
    n = w * h + 2 * (w // 2) * (h // 2)
    if len(raw) == 2 * n:
        planes = np.frombuffer(raw, "<u2").astype(np.float64) / 4
    elif len(raw) == n:
        planes = np.frombuffer(raw, np.uint8).astype(np.float64)
    else:
        raise BitstreamError(f"decoder returned {len(raw)} bytes for a {w}x{h} 4:2:0 frame")
    c = (w // 2) * (h // 2)
    y = planes[: w * h].reshape(h, w)
    u = planes[w * h: w * h + c].reshape(h // 2, w // 2).repeat(2, 0).repeat(2, 1)
    v = planes[w * h + c:].reshape(h // 2, w // 2).repeat(2, 0).repeat(2, 1)
    rgb = np.stack([y, u - 128, v - 128], axis=-1) @ _YUV2RGB.T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


ANCHORS = (JPEG, WebP, AVIF, JPEGXL, JPEG2000, HEIF, HEVC, VVC)
