"""The coding stage: every image of a rate point encoded once (or its cached file reused), decoded
once where something needs the pixels, measured (PSNR, MS-SSIM) and, for codecs with an entropy
model, its rate estimated. Work runs in batches of equal-sized images."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from icm.bitstream import Bitstream
from icm.codecs import Codec, open_codec
from icm.errors import IcmError, UserError
from icm.evaluation.cache import Cache, bitstream_tag, read_sidecar, sidecar, write_sidecar
from icm.evaluation.points import ORIGINAL_POINT, Point, rate_key
from icm.evaluation.tally import Tally
from icm.images import psnr


@dataclass(eq=False)
class Coded:
    """One image through the codec at one point."""
    path: Path | None = None  # the cached file
    bitstream: Bitstream | None = None
    encode_ms: float | None = None  # None: the file came from the cache
    decode_ms: float | None = None
    quality: dict | None = None  # {"psnr", "ms_ssim"}, measured or read from the sidecar
    decoded: np.ndarray | None = None  # HxWx3 uint8, where something needed the pixels
    features: torch.Tensor | None = None  # a feature codec's decoded split tensor
    est_bits: float | None = None


@dataclass(eq=False)
class Item:
    """An image of this rank's shard at one point: its pixels, their cache key, the tasks with no
    cached prediction there, and (once coded) what the codec made of it."""
    sample: dict
    image: np.ndarray
    key: str
    tasks: list[str] = field(default_factory=list)
    coded: Coded = field(default_factory=Coded)

    @property
    def id(self):
        return self.sample["id"]


@dataclass
class Record:
    """The per-image row of results: size, rate, quality and coding times."""
    codec: str
    rate: dict
    rate_key: str
    image_id: object
    pixels: int
    bytes: int | None = None
    bpp: float | None = None
    est_bpp: float | None = None
    encode_ms: float | None = None
    decode_ms: float | None = None
    psnr: float | None = None
    ms_ssim: float | None = None


def make_record(point: Point, item: Item) -> Record:
    h, w = item.image.shape[:2]
    rec = Record(point.codec, point.rate, point.key, item.id, h * w)
    c = item.coded
    if c.bitstream is not None:
        rec.bytes = c.path.stat().st_size
        rec.bpp = rec.bytes * 8 / c.bitstream.pixels
        rec.est_bpp = None if c.est_bits is None else c.est_bits / c.bitstream.pixels
        rec.encode_ms, rec.decode_ms = c.encode_ms, c.decode_ms
        rec.psnr, rec.ms_ssim = c.quality["psnr"], c.quality["ms_ssim"]
    return rec


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    return ms_ssim_batch([a], [b])[0]


def ms_ssim_batch(originals: list[np.ndarray], decoded: list[np.ndarray]) -> list[float | None]:
    """pytorch-msssim's MS-SSIM per pair of equal-sized images, in one call. Its 5 scales need a side
    > 160 px with the usual 11-tap window, so smaller images use a 7-tap window (side > 96) and
    images below that get None."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    side = min(originals[0].shape[:2])
    win = 11 if side > 160 else 7 if side > 96 else None
    if win is None:
        return [None] * len(originals)

    def stack(images):  # float32: 2.3x faster than float64 on the CPU (oneDNN), within 1e-7 of it
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()

    scores = _ms_ssim(stack(originals), stack(decoded), data_range=255, win_size=win, size_average=False)
    return [float(v) for v in scores]


def open_points(exp, tally: Tally, codecs: dict[str, Codec]) -> list[tuple[Codec | None, Point]]:
    """The uncompressed point, then every codec's rate points (each codec opened into ``codecs``); an
    unavailable anchor is skipped with a warning, any other unavailable codec or bad rate refused."""
    points: list[tuple[Codec | None, Point]] = [(None, ORIGINAL_POINT)]
    for spec in exp.codecs:
        with tally.clock.stage("load/codecs"):
            codec = codecs[spec.name] = open_codec(spec.name, **spec.options)
        reason = codec.unavailable_reason()
        if reason:
            if spec.anchor and spec.name != exp.reference:
                print(f"icm: warning: anchor {spec.name} skipped: {reason}", file=sys.stderr)
                continue
            raise UserError(f"codec {spec.name!r} is unavailable: {reason}")
        for rate in spec.rates or codec.default_rates():
            for scale in spec.scales:
                full = {**rate, **({"scale": scale} if scale != 1.0 else {})}
                checked = codec.check_rate(**full)  # fail before any work on a bad rate
                with tally.clock.stage("load/codecs"):  # a learned codec loads its weights here
                    weights = f"v{codec.version}-{codec.weights_hash(checked).hex()}"
                points.append((codec, Point(spec.name, checked, rate_key(checked), weights)))
    return points


class Coder:
    """Codes the items of one point after another; counts, times and records failures in ``tally``."""

    def __init__(self, cache: Cache, tally: Tally, batch_size: int):
        self.cache, self.tally, self.batch_size = cache, tally, batch_size
        self._warm: set[str] = set()  # points whose codec has run once (first calls pay one-time set-up)

    def code(self, codec: Codec | None, point: Point, items: list[Item]) -> list[Item]:
        """The items that worked, with ``coded`` filled in. Decoding is skipped where no task needs the
        pixels: the quality measures are kept next to each file, so a rerun whose predictions are all
        cached decodes nothing."""
        if codec is None:  # the uncompressed images
            for it in items:
                it.coded = Coded(decoded=it.image)
            return items
        for it in items:
            path = self.cache.bitstream_file(point, it.key)
            it.coded = Coded(path, self.cache.bitstream(codec, point, path))
            self.tally.counters.bitstream_cache_hits += it.coded.bitstream is not None
        self._encode(codec, point, [it for it in items if it.coded.bitstream is None])
        items = [it for it in items if it.coded.bitstream is not None]
        for it in items:
            if it.coded.encode_ms is None:
                it.coded.quality = read_sidecar(sidecar(it.coded.path, "quality"), bitstream_tag(it.coded.bitstream))
        self._decode(codec, point, [it for it in items if it.tasks or it.coded.quality is None])
        items = [it for it in items if it.coded.quality is not None]
        if hasattr(codec, "estimate_bits"):
            self._estimate_bits(codec, point, items)
        return items

    def _encode(self, codec: Codec, point: Point, items: list[Item]) -> None:
        for group in self.groups(items):
            self._warm_up(codec, point, group[0].image)
            done = self._batched("encode", point, group,
                                 lambda its: codec.to_bitstreams([it.image for it in its], **point.rate),
                                 lambda it: codec.to_bitstream(it.image, **point.rate))
            for it, got in zip(group, done):
                if got is not None:
                    it.coded.bitstream, it.coded.encode_ms = got
                    it.coded.bitstream.save(it.coded.path)
                    self.tally.counters.encodes += 1

    def _decode(self, codec: Codec, point: Point, items: list[Item]) -> None:
        """A feature codec's file is decoded to its tensor once, and its pixels (codecs with an image
        decoder) are made from that tensor."""
        if codec.kind == "features":
            one = lambda it: codec.decode_all(it.coded.bitstream, str(it.coded.path))  # noqa: E731
            many = lambda its: [one(it) for it in its]  # noqa: E731
        else:
            one = lambda it: codec.from_bitstream(it.coded.bitstream, source=str(it.coded.path))  # noqa: E731
            many = lambda its: codec.from_bitstreams([it.coded.bitstream for it in its],  # noqa: E731
                                                     [str(it.coded.path) for it in its])
        for group in self.groups(items):
            self._warm_up(codec, point, group[0].image)
            for it, got in zip(group, self._batched("decode", point, group, many, one)):
                if got is None:
                    continue
                c = it.coded
                c.decoded, c.decode_ms = got
                if codec.kind == "features":
                    c.features, c.decoded = c.decoded
                    if c.decoded is None and c.quality is None:  # no picture: nothing to measure
                        c.quality = {"psnr": None, "ms_ssim": None}
                self.tally.counters.decodes += 1
            self._measure([it for it in group if it.coded.quality is None and it.coded.decoded is not None])

    def _measure(self, items: list[Item]) -> None:
        """PSNR and MS-SSIM of freshly decoded images, kept next to their files."""
        if not items:
            return
        with self.tally.clock.stage("quality"):
            scores = ms_ssim_batch([it.image for it in items], [it.coded.decoded for it in items])
            for it, score in zip(items, scores):
                c = it.coded
                c.quality = {"psnr": psnr(it.image, c.decoded), "ms_ssim": score}
                write_sidecar(sidecar(c.path, "quality"), bitstream_tag(c.bitstream), c.quality)

    def _estimate_bits(self, codec: Codec, point: Point, items: list[Item]) -> None:
        """The entropy model's estimate per image, kept next to each cached file (it costs a codec
        forward, run in batches)."""
        todo = []
        for it in items:
            saved = read_sidecar(sidecar(it.coded.path, "est"), bitstream_tag(it.coded.bitstream))
            if saved is not None:
                it.coded.est_bits = float(saved["bits"])
            else:
                todo.append(it)
        batch = getattr(codec, "estimate_bits_batch", None) or (lambda images, rate: [codec.estimate_bits(i, rate) for i in images])
        for group in self.groups(todo):
            with self.tally.clock.stage("estimate"):
                bits = batch([it.image for it in group], point.rate)
            for it, b in zip(group, bits):
                write_sidecar(sidecar(it.coded.path, "est"), bitstream_tag(it.coded.bitstream), {"bits": float(b)})
                it.coded.est_bits = float(b)

    def groups(self, items: list[Item]) -> list[list[Item]]:
        """Items in batches of ``batch_size`` equal-sized images, in order."""
        by_shape: dict[tuple, list] = {}
        for it in items:
            by_shape.setdefault(it.image.shape, []).append(it)
        n = self.batch_size
        return [g[i:i + n] for g in by_shape.values() for i in range(0, len(g), n)]

    def _warm_up(self, codec: Codec, point: Point, image: np.ndarray) -> None:
        """Run a learned codec once per point before timing it: its first call pays one-time set-up
        (oneDNN kernels, entropy-coder tables), which is reported as the ``warmup`` stage instead of
        being charged to the first image."""
        if codec.kind not in ("learned", "features") or point.label in self._warm:
            return
        self._warm.add(point.label)
        with self.tally.clock.stage("warmup"):
            try:
                bs = codec.to_bitstream(image, **point.rate)
                codec.features_from_bitstream(bs) if codec.kind == "features" else codec.from_bitstream(bs)
            except IcmError:  # this image's own encode records why (e.g. too large to fit in memory)
                self._warm.discard(point.label)

    def _batched(self, stage: str, point: Point, items: list[Item], batch_call, one_call) -> list:
        """``batch_call(items)`` timed as ``stage``; when it fails, ``one_call`` per item finds the
        failing one, which is recorded while the others go on. Returns (result, ms) or None per item;
        the ms of a batch is its time shared equally."""
        with self.tally.clock.stage(stage):
            t = time.perf_counter()
            try:
                out = batch_call(items)
                ms = (time.perf_counter() - t) * 1000 / len(items)
                return [(o, ms) for o in out]
            except IcmError:
                pass
            results = []
            for it in items:
                t = time.perf_counter()
                try:
                    results.append((one_call(it), (time.perf_counter() - t) * 1000))
                except IcmError as exc:
                    self.tally.fail({"image_id": it.id, "point": point.label, "error": str(exc)})
                    results.append(None)
            return results
