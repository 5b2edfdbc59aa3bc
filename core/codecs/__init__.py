"""The codec interface. Every codec, anchor or learned, built-in or from a plugin, implements it.

A codec turns an HxWx3 uint8 RGB image into named payload streams and back. The container
(:mod:`icm.bitstream`) wraps those streams with the codec id, version, weights hash and rate, so
``encode`` returns a self-describing file and ``decode`` refuses one made by another codec or other weights.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from icm.bitstream import Bitstream
from icm.errors import BitstreamError, CodecUnavailable, UserError
from icm.limits import check_header_size, check_memory, max_pixels as pixel_limit
from icm.codecs.trainable import TrainableCodec  # noqa: F401  (what `icm train` needs from a codec)

SCALES = (1.0, 0.75, 0.5, 0.25)  # the resolution knob of Le §4.2


@dataclass(frozen=True)
class RateControl:
    """How a codec's rate is set.

    ``param`` names the discrete index (``quality``, ``qp``, ...) and ``values`` its allowed range
    (inclusive). ``higher_is_better`` tells which way quality goes. ``default_points`` is the sweep
    used when no rates are given. ``continuous`` is set for codecs with a continuous rate in [0, 1].
    ``scales`` lists the resolution factors the codec accepts (the image is coded downscaled and
    resized back after decoding).
    """

    param: str
    values: tuple[int, int] | None
    higher_is_better: bool
    default_points: tuple
    continuous: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        # a codec author's mistake, caught when the codec is defined rather than as an empty
        # "needs ..." message when a user leaves the rate out
        if self.values is None and not self.continuous:
            raise ValueError(f"RateControl({self.param!r}): give a discrete range (values) or continuous=True")

    def describe(self) -> str:
        parts = []
        if self.values:
            lo, hi = self.values
            parts.append(f"{self.param} {lo}..{hi} ({'higher' if self.higher_is_better else 'lower'} = better)")
        if self.continuous:
            parts.append("rate 0..1 (continuous)")
        if len(self.scales) > 1:
            parts.append("scale " + "/".join(f"{int(s * 100)}%" for s in self.scales))
        return ", ".join(parts)


def gain_level_rates(levels: int) -> RateControl:
    """Continuous rate 0..1 (icm's own codecs) whose default sweep is the ``levels`` trained gain
    levels k/(levels-1), to 4 places: the rate is JSON text in every file's header."""
    points = tuple(round(k / max(levels - 1, 1), 4) for k in range(levels))
    return RateControl("rate", None, True, points, continuous=True)


class Codec(ABC):
    """Base class. Subclasses set ``name``, ``version``, ``kind``, ``rate_control`` and implement
    ``encode_streams`` / ``decode_streams``. A codec ``icm train`` can train also subclasses
    ``TrainableCodec`` (icm.codecs.trainable)."""

    name: str = ""
    version: str = "1"
    kind: str = "anchor"  # or "learned", or "features" (icm.codecs.features.FeatureCodec)
    description: str = ""
    rate_control: RateControl
    # peak working memory of one encode or decode per megapixel (benchmarks/image_size_limits.py);
    # a codec that sets it is refused before a pass that would not fit (icm.limits.check_memory)
    memory_mb_per_mp: float | None = None

    # -- availability ------------------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """None when the codec can run here, else why not (e.g. a missing binary)."""
        return None

    def require_available(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise CodecUnavailable(f"codec {self.name!r} is unavailable: {reason}")

    # -- rates -------------------------------------------------------------------------------------
    def check_rate(self, quality=None, scale: float = 1.0, rate: float | None = None, **named) -> dict:
        """Validate a rate and return it as stored in the container.

        The discrete index can be given as ``quality=`` or under the codec's own name (``qp=``...),
        so the dicts from ``default_rates`` and from bitstream headers can be passed back in.
        """
        rc = self.rate_control
        if named:
            unknown = set(named) - {rc.param}
            if unknown or quality is not None:
                raise UserError(f"codec {self.name!r} takes {rc.param}/quality, rate and scale, not {sorted(named)}")
            quality = named[rc.param]
        out: dict = {}
        if rate is not None:
            if not rc.continuous:
                raise UserError(f"codec {self.name!r} has no continuous rate; use --quality ({rc.describe()})")
            if not 0.0 <= float(rate) <= 1.0:
                raise UserError(f"rate {rate} out of range for codec {self.name!r} (0..1)")
            out["rate"] = round(float(rate), 6)
        else:
            if quality is None:
                flags = " or ".join(f for f, has in (("--quality", rc.values), ("--rate", rc.continuous)) if has)
                raise UserError(f"codec {self.name!r} needs {flags} ({rc.describe()})")
            try:
                q = int(quality)
            except (TypeError, ValueError, OverflowError):
                raise UserError(f"quality {quality!r} is not an integer") from None
            if q != float(quality) or rc.values is None or not rc.values[0] <= q <= rc.values[1]:
                raise UserError(f"{rc.param} {quality} out of range for codec {self.name!r} ({rc.describe()})")
            out[rc.param] = q
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise UserError(f"scale {scale!r} is not a number") from None
        if scale not in rc.scales:
            raise UserError(f"scale {scale} not supported by codec {self.name!r} (supported: {', '.join(map(str, rc.scales))})")
        if scale != 1.0:
            out["scale"] = scale
        return out

    def default_rates(self) -> list[dict]:
        key = "rate" if self.rate_control.continuous and not self.rate_control.values else self.rate_control.param
        return [{key: p} for p in self.rate_control.default_points]

    # -- identity ------------------------------------------------------------------------------------
    def weights_hash(self, rate: dict) -> bytes:
        """A short hash of the weights used at ``rate`` (empty for codecs without weights)."""
        return b""

    # -- the work ------------------------------------------------------------------------------------
    @abstractmethod
    def encode_streams(self, image: np.ndarray, rate: dict) -> dict[str, bytes]:
        """Code an HxWx3 uint8 image at a validated rate into named payloads."""

    @abstractmethod
    def decode_streams(self, streams: dict[str, bytes], rate: dict, width: int, height: int) -> np.ndarray:
        """Invert ``encode_streams``; must return HxWx3 uint8 of the original size."""

    def to_bitstream(self, image: np.ndarray, **rate) -> Bitstream:
        self.require_available()
        _check_image(image)
        if rate.get("rate") is not None and rate.get("quality") is not None:
            raise UserError("give either --quality or --rate, not both")
        rate = self.check_rate(**rate)
        self._check_memory(image.shape[0] * image.shape[1], "image")
        streams = self.encode_streams(image, rate)
        return Bitstream(self.name, self.version, self.weights_hash(rate), image.shape[1], image.shape[0], rate, streams)

    def from_bitstream(self, bs: Bitstream, source: str = "bitstream", max_pixels: int | None = None) -> np.ndarray:
        """Decode a parsed bitstream. A valid checksum proves nothing (anyone can write one), so every
        header field is checked before the decoder runs: codec, version, size against the pixel limit
        (:mod:`icm.limits`; ``max_pixels`` raises it), rate, weights. Whatever fails is a BitstreamError."""
        rate = self._checked_header(bs, source, max_pixels)
        try:
            image = self.decode_streams(bs.streams, rate, bs.width, bs.height)
        except BitstreamError as exc:
            raise BitstreamError(f"{source}: {_one_line(exc)}") from None
        except Exception as exc:  # a payload that passed the CRC but still does not decode
            raise BitstreamError(f"{source}: payload does not decode ({type(exc).__name__}: {_one_line(exc)})") from exc
        _check_decoded(image, bs, source)
        return image

    def _checked_header(self, bs: Bitstream, source: str, max_pixels: int | None) -> dict:
        """Every header field checked against this codec; returns the rate to decode at."""
        self.require_available()
        if bs.codec != self.name:
            raise BitstreamError(f"{source}: made by codec {bs.codec!r}, not {self.name!r}")
        if bs.codec_version != self.version:
            raise BitstreamError(f"{source}: made by {bs.codec} version {bs.codec_version!r}, this is version {self.version!r}")
        check_header_size(bs.width, bs.height, pixel_limit(max_pixels), source)
        if bs.features is not None and self.kind != "features":
            raise BitstreamError(f"{source}: holds a feature tensor ({bs.features.describe()}), not pixels")
        rate = self._header_rate(bs.rate, source)
        expected = self.weights_hash(rate)
        if bs.weights_hash != expected:
            raise BitstreamError(
                f"{source}: weights mismatch (bitstream {bs.weights_hash.hex() or 'none'}, codec "
                f"{expected.hex() or 'none'}); decode with the checkpoint that encoded it")
        self._check_memory(bs.width * bs.height, source)  # last: a malformed header says so first
        return rate

    def _check_memory(self, pixels: int, source: str) -> None:
        if self.memory_mb_per_mp:
            check_memory(self.name, pixels, self.memory_mb_per_mp, source, getattr(self, "device", None))

    # -- batches -------------------------------------------------------------------------------------
    # A codec with a batched path (one network pass, one encoder process for several images) overrides
    # the two *_batch methods; the results must equal the one-by-one methods' (tests/test_codec_batches.py).
    def encode_streams_batch(self, images: list[np.ndarray], rate: dict) -> list[dict[str, bytes]]:
        """Code equal-sized images at one validated rate; the default codes them one by one."""
        return [self.encode_streams(image, rate) for image in images]

    def decode_streams_batch(self, streams: list[dict[str, bytes]], rate: dict, width: int, height: int) -> list[np.ndarray]:
        """Invert ``encode_streams_batch`` for files of one size and rate; the default decodes one by one."""
        return [self.decode_streams(s, rate, width, height) for s in streams]

    def to_bitstreams(self, images: list[np.ndarray], **rate) -> list[Bitstream]:
        """``to_bitstream`` for several images of one size, in one batched call where the codec has one."""
        if not images:
            return []
        self.require_available()
        for image in images:
            _check_image(image)
        if len({image.shape for image in images}) != 1:
            raise ValueError("to_bitstreams takes images of one size")
        rate = self.check_rate(**rate)
        self._check_memory(images[0].shape[0] * images[0].shape[1] * len(images), f"batch of {len(images)} images")
        streams = self.encode_streams_batch(images, rate)
        h, w = images[0].shape[:2]
        return [Bitstream(self.name, self.version, self.weights_hash(rate), w, h, rate, s) for s in streams]

    def from_bitstreams(self, bitstreams: list[Bitstream], sources: list[str] | None = None,
                        max_pixels: int | None = None) -> list[np.ndarray]:
        """``from_bitstream`` for several files of one size and rate, with every header checked first.
        A failure anywhere raises a BitstreamError for the batch; decode one by one to find the file."""
        if not bitstreams:
            return []
        sources = sources or ["bitstream"] * len(bitstreams)
        rates = [self._checked_header(bs, src, max_pixels) for bs, src in zip(bitstreams, sources)]
        first = bitstreams[0]
        if any((bs.width, bs.height, r) != (first.width, first.height, rates[0]) for bs, r in zip(bitstreams, rates)):
            raise ValueError("from_bitstreams takes files of one size and rate")
        where = f"{sources[0]} (batch of {len(bitstreams)})"
        self._check_memory(first.width * first.height * len(bitstreams), where)
        try:
            images = self.decode_streams_batch([bs.streams for bs in bitstreams], rates[0], first.width, first.height)
        except BitstreamError as exc:
            raise BitstreamError(f"{where}: {_one_line(exc)}") from None
        except Exception as exc:
            raise BitstreamError(f"{where}: payload does not decode ({type(exc).__name__}: {_one_line(exc)})") from exc
        if len(images) != len(bitstreams):
            raise BitstreamError(f"{where}: decoded {len(images)} images")
        for image, bs, src in zip(images, bitstreams, sources):
            _check_decoded(image, bs, src)
        return images

    def _header_rate(self, rate: dict, source: str) -> dict:
        """The header's rate, accepted only in the exact form ``check_rate`` writes: no other types
        (``true`` for 1, ``3.0`` for 3, strings), keys or values reach ``decode_streams``."""
        shown = json.dumps(rate, sort_keys=True)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        try:
            checked = self.check_rate(**rate)
        except (UserError, TypeError, ValueError, OverflowError) as exc:
            raise BitstreamError(f"{source}: invalid rate {shown} for {self.name} ({_one_line(exc)})") from None
        if json.dumps(checked, sort_keys=True) != json.dumps(rate, sort_keys=True):
            raise BitstreamError(f"{source}: invalid rate {shown} for {self.name} (not as the encoder writes it)")
        return checked

    def encode(self, image: np.ndarray, **rate) -> bytes:
        """Encode to a self-describing icm container (``bytes``)."""
        return self.to_bitstream(image, **rate).to_bytes()

    def decode(self, data: bytes, max_pixels: int | None = None) -> np.ndarray:
        return self.from_bitstream(Bitstream.from_bytes(data), max_pixels=max_pixels)

    def info(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "rate_control": self.rate_control.describe(),
            "default_points": list(self.rate_control.default_points),
            "available": self.unavailable_reason() is None,
            "unavailable_reason": self.unavailable_reason(),
            "description": self.description,
        }


def _one_line(exc: BaseException) -> str:
    """First line of an exception's message, at most 300 characters (the CLI prints one line)."""
    text = str(exc).strip()
    return (text.splitlines() or [""])[0][:300]


def _check_decoded(image, bs: Bitstream, source: str) -> None:
    if not isinstance(image, np.ndarray) or image.shape != (bs.height, bs.width, 3) or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise BitstreamError(f"{source}: decoded to {got}, expected ({bs.height}, {bs.width}, 3) uint8")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError("codecs take HxWx3 uint8 RGB arrays (use icm.images.load_image)")


def open_codec(name: str, **options) -> Codec:
    """Build a registered codec. Options a codec's factory does not accept are dropped, so the CLI
    can pass ``checkpoint``/``weights``/``device`` to anchors and learned codecs alike; but an option
    the user set explicitly that the codec cannot use is an error rather than silently ignored."""
    from icm.plugins import get_plugins

    factory = get_plugins().codecs.get(name)
    try:
        params = inspect.signature(factory).parameters  # a Lazy factory imports its module here
    except ImportError as exc:
        raise CodecUnavailable(f"codec {name!r} cannot be loaded: {exc}") from None
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in options.items() if takes_all or k in params}
    ignored = [k for k, v in options.items() if k not in accepted and v is not None]
    if ignored:
        raise UserError(f"codec {name!r} does not take option(s): {', '.join(ignored)}")
    return factory(**{k: v for k, v in accepted.items() if v is not None})


def describe_codec(entry) -> dict:
    """What ``icm codecs`` lists for a registry entry. A codec registered with its ``rate_control``
    (and optionally an ``unavailable_reason`` callable) is described without being built, so no model
    is loaded; any other codec is built once and asked."""
    meta = entry.meta
    if "rate_control" in meta:
        check = meta.get("unavailable_reason")
        reason = check() if check else None
        rc = meta["rate_control"]
        info = {"name": entry.name, "kind": meta.get("kind", "learned"), "version": None,
                "rate_control": rc.describe(), "default_points": list(rc.default_points),
                "available": reason is None, "unavailable_reason": reason,
                "description": meta.get("description", "")}
    else:
        try:
            info = open_codec(entry.name).info()
        except Exception as exc:  # a plugin's broken codec is listed as unavailable, not fatal
            info = {"name": entry.name, "kind": meta.get("kind", "?"), "version": None, "rate_control": "",
                    "default_points": [], "available": False, "unavailable_reason": str(exc),
                    "description": meta.get("description", "")}
    info["plugin"] = entry.plugin
    return info


def decode_file(path, max_pixels: int | None = None, **options) -> tuple[np.ndarray, Bitstream]:
    """Decode any icm file with the codec its header names. The size is checked against the pixel
    limit before the codec (and its weights) is even opened."""
    from icm.plugins import get_plugins

    bs = Bitstream.load(path)
    check_header_size(bs.width, bs.height, pixel_limit(max_pixels), str(path))
    if bs.codec not in get_plugins().codecs:
        raise BitstreamError(f"{path}: made by codec {bs.codec!r}, which is not registered here (see `icm codecs`)")
    codec = open_codec(bs.codec, **options)
    return codec.from_bitstream(bs, source=str(path), max_pixels=max_pixels), bs
