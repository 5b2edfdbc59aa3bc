"""The icm container: one self-describing file per encoded image. Format spec: docs/bitstream.md.

    magic "ICM" | u8 format version
    str8 codec id | str8 codec version | bytes8 weights hash
    varint width | varint height | u8 colour format
      (colour format 1 = FEATURES: str8 split point | u8 rank | rank x varint tensor shape)
    str16 rate parameters (compact JSON)
    u8 stream count, then per stream: str8 name | varint length
    stream payloads, in the order listed
    u32 CRC-32 (big endian) of every byte before it

str8/bytes8 = u8 length + bytes; str16 = u16 (big endian) length + UTF-8. Written by hand because the
header must stay a few dozen bytes: it counts in bpp, and at 0.05 bpp on a 256x256 image a JSON or
protobuf envelope would be a visible share of the rate.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from icm.errors import BitstreamError

MAGIC = b"ICM"
FORMAT_VERSION = 1
COLOUR_FORMATS = {0: "RGB8", 1: "FEATURES"}  # FEATURES: the payload is a coded feature tensor, not pixels
COLOUR_CODES = {v: k for k, v in COLOUR_FORMATS.items()}
MAX_FEATURE_RANK = 8


@dataclass(frozen=True)
class FeatureInfo:
    """What a feature bitstream holds: the tensor taken at ``split`` (a network and layer, e.g.
    ``resnet18w32.layer1``) of one image, of ``shape`` (C, h, w) as the encoder computed it."""

    split: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.split} {'x'.join(map(str, self.shape))}"


@dataclass
class Bitstream:
    codec: str
    codec_version: str
    weights_hash: bytes
    width: int
    height: int
    rate: dict
    streams: dict[str, bytes] = field(default_factory=dict)
    colour: str = "RGB8"
    features: FeatureInfo | None = None  # set exactly when colour is "FEATURES"

    def __post_init__(self):
        if self.features is not None:
            self.colour = "FEATURES"
        elif self.colour == "FEATURES":
            raise ValueError("a FEATURES bitstream needs its FeatureInfo (split point and tensor shape)")

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def pixels(self) -> int:
        return self.width * self.height

    def bpp(self, streams: list[str] | None = None) -> float:
        """Bits per original pixel of the whole file (header and checksum included).

        With ``streams``, the file as it would be written holding only those payloads, e.g. a
        task-only decode that skips an auxiliary stream.
        """
        return len(self.to_bytes(streams)) * 8 / self.pixels

    # -- serialisation ---------------------------------------------------------------------------
    def to_bytes(self, streams: list[str] | None = None) -> bytes:
        chosen = self.streams if streams is None else {k: self.streams[k] for k in streams}
        out = bytearray(MAGIC)
        out.append(FORMAT_VERSION)
        _put_str8(out, self.codec)
        _put_str8(out, self.codec_version)
        _put_bytes8(out, self.weights_hash)
        _put_varint(out, self.width)
        _put_varint(out, self.height)
        out.append(COLOUR_CODES[self.colour])
        if self.features is not None:
            _put_str8(out, self.features.split)
            if not 1 <= len(self.features.shape) <= MAX_FEATURE_RANK:
                raise ValueError(f"feature tensors have rank 1..{MAX_FEATURE_RANK}")
            out.append(len(self.features.shape))
            for n in self.features.shape:
                _put_varint(out, n)
        rate = json.dumps(self.rate, separators=(",", ":"), sort_keys=True).encode()
        out += struct.pack(">H", len(rate)) + rate
        if len(chosen) > 255:
            raise ValueError("at most 255 streams")
        out.append(len(chosen))
        for name, payload in chosen.items():
            _put_str8(out, name)
            _put_varint(out, len(payload))
        for payload in chosen.values():
            out += payload
        out += struct.pack(">I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "bitstream") -> "Bitstream":
        if len(data) < 8 or data[:3] != MAGIC:
            raise BitstreamError(f"{source}: not an icm bitstream (bad magic)")
        body, crc = data[:-4], struct.unpack(">I", data[-4:])[0]
        reader = _Reader(body, source)
        reader.take(3)
        version = reader.u8()
        if version != FORMAT_VERSION:
            raise BitstreamError(f"{source}: format version {version} is not supported (this icm reads {FORMAT_VERSION})")
        codec = reader.str8()
        codec_version = reader.str8()
        weights_hash = reader.bytes8()
        width, height = reader.varint(), reader.varint()
        colour_code = reader.u8()
        features = None
        if colour_code == COLOUR_CODES["FEATURES"]:
            split, rank = reader.str8(), reader.u8()
            if not 1 <= rank <= MAX_FEATURE_RANK:
                raise BitstreamError(f"{source}: corrupt feature header (tensor rank {rank})")
            shape = tuple(reader.varint() for _ in range(rank))
            if not split or min(shape) < 1:
                raise BitstreamError(f"{source}: corrupt feature header (split {split!r}, shape {shape})")
            features = FeatureInfo(split, shape)
        rate_raw = reader.take(struct.unpack(">H", reader.take(2))[0])
        lengths = [(reader.str8(), reader.varint()) for _ in range(reader.u8())]
        streams = {name: reader.take(n) for name, n in lengths}
        if len(streams) != len(lengths):
            raise BitstreamError(f"{source}: corrupt stream table (a stream name is listed twice)")
        if reader.pos != len(body):
            # the listed payloads must end exactly at the checksum; anything else is truncation or damage
            raise BitstreamError(f"{source}: truncated or corrupt ({len(body) - reader.pos:+d} bytes unaccounted for)")
        if zlib.crc32(body) != crc:
            raise BitstreamError(f"{source}: checksum mismatch, the file is corrupt")
        if width < 1 or height < 1:
            raise BitstreamError(f"{source}: corrupt header (image size {width}x{height})")
        if colour_code not in COLOUR_FORMATS:
            raise BitstreamError(f"{source}: unknown colour format {colour_code}")
        try:  # NaN/Infinity are not JSON; deep nesting would otherwise escape as RecursionError
            rate = json.loads(rate_raw, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            raise BitstreamError(f"{source}: corrupt rate parameters") from None
        if not isinstance(rate, dict):
            raise BitstreamError(f"{source}: corrupt rate parameters (not a JSON object)")
        return cls(codec, codec_version, weights_hash, width, height, rate, streams, COLOUR_FORMATS[colour_code], features)

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> int:
        data = self.to_bytes()
        atomic_write_bytes(path, data)
        return len(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Bitstream":
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BitstreamError(f"{path}: cannot read ({exc.strerror})") from None
        return cls.from_bytes(data, source=str(path))


WRITTEN = [0]  # bytes this process wrote through atomic_write_bytes: a full disk's message says how much


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file. The
    temporary name carries the writer's pid, so a later run can tell a killed writer's leftover
    (``icm.faults.remove_stale_temporaries``) from a live writer's file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() or fsync() names no file: the error says which
        raise
    WRITTEN[0] += len(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


# -- primitive encoders (by hand: see module docstring) ------------------------------------------------
def _put_varint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return


def _put_bytes8(out: bytearray, b: bytes) -> None:
    if len(b) > 255:
        raise ValueError("field longer than 255 bytes")
    out.append(len(b))
    out += b


def _put_str8(out: bytearray, s: str) -> None:
    _put_bytes8(out, s.encode())


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError(f"{self.source}: truncated (needs {self.pos + n} bytes, has {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(chunk)

    def u8(self) -> int:
        return self.take(1)[0]

    def bytes8(self) -> bytes:
        return self.take(self.u8())

    def str8(self) -> str:
        try:
            return self.bytes8().decode()
        except UnicodeDecodeError:
            raise BitstreamError(f"{self.source}: corrupt header text") from None

    def varint(self) -> int:
        n = shift = 0
        while True:
            byte = self.u8()
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise BitstreamError(f"{self.source}: corrupt length field")
