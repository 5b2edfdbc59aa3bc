"""The encode-once engine.

For every (codec, rate point, image) the image is encoded once into a bitstream file, decoded once,
and the decoded pixels go to every requested task. Bitstreams and per-image predictions are cached
under ``OUT/cache`` keyed by codec id, weights hash, rate and image content (predictions also by the
task model's weights), written atomically, so an interrupted run resumes and adding a task to a
finished experiment re-uses the bitstreams without encoding anything.

Under torchrun, images are sharded across ranks and the per-image records and predictions are
gathered to rank 0 with torch.distributed, which computes the metrics.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from icm.bitstream import Bitstream, atomic_write_bytes
from icm.codecs import Codec, open_codec
from icm.errors import IcmError, UserError
from icm.evaluation.timing import Stopwatch
from icm.evaluation.config import Experiment
from icm.images import load_image, psnr
from icm.plugins import get_plugins
from icm.tasks import Batch, TaskAdapter

ORIGINAL = "original"  # the uncompressed images: the accuracy ceiling, and the pseudo ground truth


@dataclass
class Point:
    codec: str
    rate: dict
    key: str  # filesystem-safe rate key, e.g. "qp=32,scale=0.5"
    weights: str = ""  # codec version + weights hash: predictions on other weights are other files

    @property
    def label(self) -> str:
        return f"{self.codec}@{self.key}"


@dataclass
class Counters:
    encodes: int = 0
    bitstream_cache_hits: int = 0
    decodes: int = 0
    predictions: int = 0
    prediction_cache_hits: int = 0
    failures: list = field(default_factory=list)


def rate_key(rate: dict) -> str:
    return ",".join(f"{k}={rate[k]}" for k in sorted(rate)) or "none"


def image_key(image: np.ndarray) -> str:
    h = hashlib.sha256(image.tobytes())
    h.update(str(image.shape).encode())
    return h.hexdigest()[:20]


def model_key(adapter: TaskAdapter) -> str:
    from icm.codecs.learned import tensor_hash

    reads = "" if getattr(adapter, "consumes", "pixels") == "pixels" else f"-{adapter.consumes}@{adapter.split}"
    # a feature reader with the pixel model's weights must not share the pixel model's cached predictions
    # and the test pipeline and test-time settings change predictions as much as the weights do
    settings = adapter.settings_key()
    return f"{adapter.name}{reads}-{tensor_hash(adapter.model.state_dict()).hex()}" + (f"-{settings}" if settings else "")


# -- distributed ---------------------------------------------------------------------------------------
def dist_setup() -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per rank, as torchrun expects
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # a rank that leaves with the group alive can abort in gloo's thread teardown ("terminate called
        # without an active exception", SIGABRT), and torchrun then kills the other ranks
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_together() -> None:
    """The end of a run on every rank, after rank 0's last write. A rank that returned early (the
    others had nothing left to do once the scores were gathered) tore its gloo pairs down while rank
    0 was still writing the report, and a rank then died of SIGABRT in gloo's threads ("terminate
    called without an active exception"), as `icm train` once did: a few label-free runs in a hundred."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather(obj, world: int):
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    try:
        dist.all_gather_object(out, obj)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        # gloo raises when a peer's socket closes; a buffer cut short unpickles as EOFError
        from icm.errors import PeerStopped

        raise PeerStopped(f"another worker stopped while results were exchanged ({type(exc).__name__})") from exc
    return out


# -- quality measures ---------------------------------------------------------------------------------
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


# -- the engine ----------------------------------------------------------------------------------------
class Engine:
    def __init__(self, exp: Experiment, progress: bool = True):
        self.exp, self.progress = exp, progress
        self.out = Path(exp.out)
        self.cache = self.out / "cache"
        self.counters = Counters()
        self.rank = 0
        self.clock = Stopwatch()
        self._warm: set[str] = set()  # points whose codec has run once (first calls pay one-time set-up)
        self._bar = None
        self.codecs: dict[str, Codec] = {}  # opened once; the report decodes its samples with them too
        self._readers: dict[str, dict] = {}  # split point -> {task: (feature reader, its model key)}
        self._no_pixels: set[tuple[str, str]] = set()  # (task, codec) failures already recorded

    def codec_points(self) -> list[tuple[Codec | None, Point]]:
        points: list[tuple[Codec | None, Point]] = [(None, Point(ORIGINAL, {}, "none"))]
        for spec in self.exp.codecs:
            with self.clock.stage("load/codecs"):
                codec = self.codecs[spec.name] = open_codec(spec.name, **spec.options)
            reason = codec.unavailable_reason()
            if reason:
                if spec.anchor and spec.name != self.exp.reference:
                    print(f"icm: warning: anchor {spec.name} skipped: {reason}", file=sys.stderr)
                    continue
                raise UserError(f"codec {spec.name!r} is unavailable: {reason}")
            for rate in spec.rates or codec.default_rates():
                for scale in spec.scales:
                    full = {**rate, **({"scale": scale} if scale != 1.0 else {})}
                    checked = codec.check_rate(**full)  # fail before any work on a bad rate
                    with self.clock.stage("load/codecs"):  # a learned codec loads its weights here
                        weights = f"v{codec.version}-{codec.weights_hash(checked).hex()}"
                    points.append((codec, Point(spec.name, checked, rate_key(checked), weights)))
        return points

    def adapters(self) -> dict[str, TaskAdapter]:
        tasks = get_plugins().tasks
        out = {}
        for spec in self.exp.tasks:
            factory = tasks.get(spec.name)
            check_weights(spec)
            kwargs = {k: v for k, v in (("config", spec.config), ("checkpoint", spec.checkpoint),
                                         ("device", self.exp.device)) if v}
            with torch.random.fork_rng(), self.clock.stage("load/tasks"):  # random init: same every run
                torch.manual_seed(0)
                adapter = factory(**kwargs)
            adapter.class_map = dict(self.exp.class_map)
            if self.exp.label_free and adapter.label_free_unsupported:
                if self.rank == 0:
                    self.fail({"task": spec.name, "stage": "label-free",
                               "error": f"cannot make pseudo ground truth ({adapter.label_free_unsupported}); task skipped"})
                continue
            out[spec.name] = adapter
        return out

    def fail(self, failure: dict) -> None:
        """Record a failure and say so on stderr at once (the count comes at the end of the run). Only
        rank 0 prints: the other ranks' output may not be shown (``--workers``), so rank 0 prints
        their failures when it gathers them."""
        self.counters.failures.append(failure)
        if self.rank == 0:
            from tqdm import tqdm

            tqdm.write(f"icm: failure: {describe(failure)}", file=sys.stderr)

    # -- per point --------------------------------------------------------------------------------
    def _cached_bitstream(self, codec: Codec, point: Point, path: Path) -> Bitstream | None:
        """The cached file when it is one of this codec's (other weights or version: re-encoded)."""
        if path.is_file():
            try:
                bs = Bitstream.load(path)
                if bs.weights_hash == codec.weights_hash(point.rate) and bs.codec_version == codec.version:
                    return bs
            except IcmError:
                pass  # a damaged cache entry is re-made, not trusted
        return None

    def _warm_up(self, codec: Codec, point: Point, image: np.ndarray) -> None:
        """Run a learned codec once per point before timing it: its first call pays one-time set-up
        (oneDNN kernels, entropy-coder tables), which is reported as the ``warmup`` stage instead of
        being charged to the first image."""
        if codec.kind not in ("learned", "features") or point.label in self._warm:
            return
        self._warm.add(point.label)
        with self.clock.stage("warmup"):
            bs = codec.to_bitstream(image, **point.rate)
            codec.features_from_bitstream(bs) if codec.kind == "features" else codec.from_bitstream(bs)

    def _batched(self, stage: str, point: Point, ids: list, batch_call, one_call, inputs: list) -> list:
        """``batch_call(inputs)`` timed as ``stage``; when it fails, ``one_call`` per input finds the
        failing one, which is recorded while the others go on. Returns (result, ms) or None per input;
        the ms of a batch is its time shared equally."""
        with self.clock.stage(stage):
            t = time.perf_counter()
            try:
                out = batch_call(inputs)
                ms = (time.perf_counter() - t) * 1000 / len(inputs)
                return [(o, ms) for o in out]
            except IcmError:
                pass
            results = []
            for x, image_id in zip(inputs, ids):
                t = time.perf_counter()
                try:
                    results.append((one_call(x), (time.perf_counter() - t) * 1000))
                except IcmError as exc:
                    self.fail({"image_id": image_id, "point": point.label, "error": str(exc)})
                    results.append(None)
            return results

    def _code_point(self, codec: Codec, point: Point, entries: list[tuple[dict, np.ndarray, str, bool]]) -> dict:
        """Encode (or reuse the cached files) and decode once, in batches of equal-sized images, for
        (sample, image, key, pixels needed) entries. Decoding is skipped where nothing needs the pixels:
        the quality measures are kept next to each file, so a rerun whose predictions are all cached
        decodes nothing. Returns {image id: (decoded pixels or None, record, decoded features or None)}
        for the images that worked; a feature codec's file is decoded to its tensor once, and its
        pixels (codecs with an image decoder) are made from that tensor."""
        folder = self.cache / "bitstreams" / point.codec / point.key
        state = {}
        for s, img, ikey, _ in entries:
            path = folder / f"{ikey}.icm"
            bs = self._cached_bitstream(codec, point, path)
            state[s["id"]] = {"path": path, "bs": bs, "encode_ms": None}
            self.counters.bitstream_cache_hits += bs is not None
        for group in self._groups([e for e in entries if state[e[0]["id"]]["bs"] is None]):
            self._warm_up(codec, point, group[0][1])
            done = self._batched("encode", point, [e[0]["id"] for e in group],
                                 lambda images: codec.to_bitstreams(images, **point.rate),
                                 lambda image: codec.to_bitstream(image, **point.rate), [e[1] for e in group])
            for (s, *_), got in zip(group, done):
                if got is not None:
                    st = state[s["id"]]
                    st["bs"], st["encode_ms"] = got
                    st["bs"].save(st["path"])
                    self.counters.encodes += 1
        entries = [e for e in entries if state[e[0]["id"]]["bs"] is not None]
        for s, *_ in entries:
            st = state[s["id"]]
            st["tag"] = st["bs"].weights_hash.hex() + "/" + st["bs"].codec_version
            st["quality_file"] = st["path"].with_name(st["path"].stem + ".quality.json")
            st["quality"] = _read_sidecar(st["quality_file"], st["tag"]) if st["encode_ms"] is None else None
            st["decoded"], st["decode_ms"], st["features"] = None, None, None
        to_decode = [e for e in entries if e[3] or state[e[0]["id"]]["quality"] is None]
        for group in self._groups(to_decode):
            self._warm_up(codec, point, group[0][1])
            sts = [state[e[0]["id"]] for e in group]
            paths = {id(st["bs"]): str(st["path"]) for st in sts}
            if codec.kind == "features":  # the tensor once per file; the picture (if any) from that tensor
                done = self._batched("decode", point, [e[0]["id"] for e in group],
                                     lambda files: [codec.decode_all(f, paths[id(f)]) for f in files],
                                     lambda bs: codec.decode_all(bs, paths[id(bs)]), [st["bs"] for st in sts])
            else:
                done = self._batched("decode", point, [e[0]["id"] for e in group],
                                     lambda files: codec.from_bitstreams(files, [paths[id(f)] for f in files]),
                                     lambda bs: codec.from_bitstream(bs, source=paths[id(bs)]), [st["bs"] for st in sts])
            for st, got in zip(sts, done):
                if got is not None:
                    st["decoded"], st["decode_ms"] = got
                    if codec.kind == "features":
                        st["features"], st["decoded"] = st["decoded"]
                        if st["decoded"] is None and st["quality"] is None:  # no picture: nothing to measure
                            st["quality"] = {"psnr": None, "ms_ssim": None}
                    self.counters.decodes += 1
            fresh = [(e[1], st) for e, st in zip(group, sts) if st["quality"] is None and st["decoded"] is not None]
            if fresh:
                with self.clock.stage("quality"):
                    scores = ms_ssim_batch([img for img, _ in fresh], [st["decoded"] for _, st in fresh])
                    for (img, st), score in zip(fresh, scores):
                        st["quality"] = {"psnr": psnr(img, st["decoded"]), "ms_ssim": score}
                        atomic_write_bytes(st["quality_file"], json.dumps({"of": st["tag"], **st["quality"]}).encode())
        entries = [e for e in entries if state[e[0]["id"]]["quality"] is not None]
        estimates = self._estimate_bits(codec, point, entries, state) if hasattr(codec, "estimate_bits") else {}
        out = {}
        for s, img, ikey, _ in entries:
            st = state[s["id"]]
            rec = {"encode_ms": st["encode_ms"], "decode_ms": st["decode_ms"], "psnr": st["quality"]["psnr"],
                   "ms_ssim": st["quality"]["ms_ssim"], "bytes": st["path"].stat().st_size}
            rec["bpp"] = rec["bytes"] * 8 / st["bs"].pixels
            est = estimates.get(s["id"])
            rec["est_bpp"] = None if est is None else est / st["bs"].pixels
            out[s["id"]] = (st["decoded"], rec, st["features"])
        return out

    def _groups(self, entries: list) -> list[list]:
        """Entries (sample, image, ...) in batches of ``batch_size`` equal-sized images, in order."""
        by_shape: dict[tuple, list] = {}
        for e in entries:
            by_shape.setdefault(e[1].shape, []).append(e)
        n = self.exp.batch_size
        return [g[i:i + n] for g in by_shape.values() for i in range(0, len(g), n)]

    def _estimate_bits(self, codec: Codec, point: Point, entries: list, state: dict) -> dict:
        """The entropy model's estimate per image id, kept next to each cached file (it costs a codec
        forward, run in batches)."""
        out, todo = {}, []
        for e in entries:
            st = state[e[0]["id"]]
            st["est_file"] = st["path"].with_name(st["path"].stem + ".est.json")
            saved = _read_sidecar(st["est_file"], st["tag"])
            if saved is not None:
                out[e[0]["id"]] = float(saved["bits"])
            else:
                todo.append(e)
        batch = getattr(codec, "estimate_bits_batch", None) or (lambda images, rate: [codec.estimate_bits(i, rate) for i in images])
        for group in self._groups(todo):
            with self.clock.stage("estimate"):
                bits = batch([e[1] for e in group], point.rate)
            for e, b in zip(group, bits):
                st = state[e[0]["id"]]
                atomic_write_bytes(st["est_file"], json.dumps({"of": st["tag"], "bits": float(b)}).encode())
                out[e[0]["id"]] = float(b)
        return out

    def _prediction_file(self, mkey: str, point: Point, ikey: str) -> Path:
        return self.cache / "predictions" / mkey / point.codec / (point.weights or "-") / point.key / f"{ikey}.pkl"

    def _cached_prediction(self, mkey: str, point: Point, ikey: str):
        f = self._prediction_file(mkey, point, ikey)
        if f.is_file():
            try:  # our own cache files, written by this engine (never user-supplied)
                return True, pickle.loads(f.read_bytes())
            except Exception:
                pass
        return False, None

    def _predict_point(self, adapters: dict[str, TaskAdapter], mkeys: dict[str, str], point: Point,
                       items: list[tuple], todo: dict[str, set]) -> dict[str, dict]:
        """Run every task on the decoded images it has no cached prediction for; items are (sample,
        decoded pixels, key, decoded features or None, original shape), and a feature reader gets the
        features. One Batch object per group of equal-sized images serves every task that needs all of
        them, so tasks declaring the same ``forward_key`` compute one forward; a task that fails is
        recorded and the others go on."""
        preds: dict[str, dict] = {t: {} for t in adapters}
        failed: set[str] = set()
        order = sorted(adapters, key=lambda t: str(adapters[t].forward_key))  # sharers back to back
        for i in range(0, len(items), self.exp.batch_size):
            groups: dict[tuple, list] = {}
            for item in items[i:i + self.exp.batch_size]:  # a batch needs one image size
                groups.setdefault(item[4], []).append(item)
            for group in groups.values():
                shared: dict[tuple, Batch] = {}
                for task in order:
                    adapter = adapters[task]
                    mine = [it for it in group if it[2] in todo[task]]
                    if not mine or task in failed:
                        continue
                    reads = getattr(adapter, "consumes", "pixels")
                    key = (adapter.device, reads)
                    if len(mine) < len(group):
                        batch = _batch(mine, adapter.device, reads)
                    elif key in shared:
                        batch = shared[key]
                    else:
                        batch = shared[key] = _batch(group, adapter.device, reads)
                    try:
                        with self.clock.stage(f"predict/{task}"), torch.no_grad():
                            out = adapter.predict(batch)
                    except Exception as exc:  # one task's bug or refusal must not cost the other tasks' work
                        self.fail({"task": task, "point": point.label, "stage": "predict", "error": error_text(exc)})
                        failed.add(task)
                        continue
                    for (sample, _, ikey, *_), p in zip(mine, out):
                        atomic_write_bytes(self._prediction_file(mkeys[task], point, ikey), pickle.dumps(p))
                        preds[task][sample["id"]] = p
                        self.counters.predictions += 1
                    self._tick(len(mine))
        for task in failed:  # what a failed task did not predict is done too, as far as the bar goes
            self._tick(len(todo[task]) - len(preds[task]))
        return preds

    def _point_tasks(self, codec, point: Point, adapters: dict, mkeys: dict) -> tuple[dict, dict]:
        """The adapters (and model keys) that predict at a point: for a feature codec, each task's
        feature reader of the codec's split (built once per split) and, for tasks without one, the
        pixel adapter on the codec's decoded pictures; a pixel task on a feature codec without an
        image decoder is left out, with one failure recorded."""
        if codec is None or codec.kind != "features":
            return adapters, mkeys
        if codec.split not in self._readers:
            readers = {}
            for task, adapter in adapters.items():
                with self.clock.stage("load/tasks"):
                    reader = adapter.feature_reader(codec.split)
                if reader is not None:
                    reader.class_map = adapter.class_map
                    reader.bind(adapter.dataset)
                    readers[task] = (reader, model_key(reader))
            self._readers[codec.split] = readers
        readers = self._readers[codec.split]
        chosen, keys = {}, {}
        for task, adapter in adapters.items():
            if task in readers:
                chosen[task], keys[task] = readers[task]
            elif codec.has_image_decoder:
                chosen[task], keys[task] = adapter, mkeys[task]
            elif (task, codec.name) not in self._no_pixels:
                self._no_pixels.add((task, codec.name))
                if self.rank == 0:
                    self.fail({"task": task, "point": point.codec, "stage": "predict",
                               "error": f"task {task} has no back end for features split at {codec.split} and "
                                        f"{codec.name} has no image decoder; task skipped for this codec"})
        return chosen, keys

    def _tick(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def run(self, dataset) -> dict:
        rank, world = dist_setup()
        self.rank = rank
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        images = dataset.images[: self.exp.limit] if self.exp.limit else dataset.images
        if not images:
            raise UserError(f"dataset {dataset.name!r} has no images")
        shard = images[rank::world]
        adapters = self.adapters()
        for a in adapters.values():
            a.bind(dataset)
            a.check(label_free=self.exp.label_free)  # classes, annotations: refuse now, not after the coding
        mkeys = {t: model_key(a) for t, a in adapters.items()}
        points = self.codec_points()
        if rank == 0:  # everything is checked: from here on a failed run must not leave old results looking current
            set_aside_previous(self.out)
            from icm.faults import remove_stale_temporaries

            remove_stale_temporaries(self.out)  # a killed run's half-written files
        originals = {}
        with self.clock.stage("load/images"):
            for s in shard:
                try:
                    img = load_image(s["file_name"])
                    originals[s["id"]] = (img, image_key(img))
                except UserError as exc:
                    self.fail({"image_id": s["id"], "stage": "load", "error": str(exc)})
        if rank == 0 and originals:  # before any coding: is there room for what this run will write?
            from icm.evaluation.space import cache_estimate, warn_if_short

            warn_if_short(self.out, *cache_estimate(self, points, adapters, mkeys, originals, len(images) / len(shard)))

        records, predictions = [], {t: {} for t in adapters}
        from tqdm import tqdm

        # the bar counts all the work of this rank: one codec step and one prediction per task, per image
        # and point (cached ones tick at once), so its rate and ETA cover predictions too
        total = len(points) * len(shard) * (1 + len(adapters))
        self._bar = tqdm(total=total, desc="evaluate" + (f" (rank 0 of {world})" if world > 1 else ""),
                         unit="step", disable=not self.progress or rank != 0)
        for codec, point in points:
            readers, point_mkeys = self._point_tasks(codec, point, adapters, mkeys)
            entries, missing = [], {}
            for s in shard:
                if s["id"] not in originals:
                    self._tick(1 + len(adapters))
                    continue
                img, ikey = originals[s["id"]]
                missing[s["id"]] = []
                for task in adapters:
                    if task not in readers:  # a pixel task on a codec without pixels: recorded once, skipped
                        self._tick()
                        continue
                    hit, p = self._cached_prediction(point_mkeys[task], point, ikey)
                    if hit:
                        predictions[task].setdefault(point.label, {})[s["id"]] = p
                        self.counters.prediction_cache_hits += 1
                        self._tick()
                    else:
                        missing[s["id"]].append(task)
                entries.append((s, img, ikey, bool(missing[s["id"]])))
            if codec is None:
                coded = {s["id"]: (img, {"bytes": None, "bpp": None, "est_bpp": None, "encode_ms": None,
                                         "decode_ms": None, "psnr": None, "ms_ssim": None}, None) for s, img, _, _ in entries}
            else:
                coded = self._code_point(codec, point, entries)
            items, todo = [], {t: set() for t in adapters}
            for s, img, ikey, _ in entries:
                if s["id"] not in coded:  # its failure is recorded: what it would have done is done
                    self._tick(1 + len(missing[s["id"]]))
                    continue
                decoded, rec, features = coded[s["id"]]
                rec.update({"codec": point.codec, "rate": point.rate, "rate_key": point.key, "image_id": s["id"],
                            "pixels": img.shape[0] * img.shape[1]})
                records.append(rec)
                self._tick()
                if missing[s["id"]]:
                    items.append((s, decoded, ikey, features, img.shape))
                    for task in missing[s["id"]]:
                        todo[task].add(ikey)
            for task, got in self._predict_point(readers, point_mkeys, point, items, todo).items():
                predictions[task].setdefault(point.label, {}).update(got)
        self._bar.close()

        timing = {"stages": dict(self.clock.seconds), "wall": time.perf_counter() - start_wall,
                  "cpu": time.process_time() - start_cpu}
        gathered = gather({"records": records, "predictions": predictions, "counters": self.counters.__dict__,
                           "timing": timing}, world)
        all_preds = {t: {} for t in adapters}  # every rank has everything: the scoring is shared out
        for g in gathered:
            for t, by_point in g["predictions"].items():
                for label, preds in by_point.items():
                    all_preds[t].setdefault(label, {}).update(preds)
        scored, score_seconds, score_hits = self.score(dataset, images, adapters, points, all_preds, rank, world)
        if rank != 0:
            return {}
        for g in gathered[1:]:
            for f in g["counters"]["failures"]:
                print(f"icm: failure: {describe(f)}", file=sys.stderr)
        # records in dataset order whatever the sharding, so means sum in one order and any worker
        # count gives the same figures to the last digit
        point_pos = {p.label: i for i, (_, p) in enumerate(points)}
        image_pos = {s["id"]: i for i, s in enumerate(images)}
        all_records = sorted((r for g in gathered for r in g["records"]),
                             key=lambda r: (point_pos[f"{r['codec']}@{r['rate_key']}"], image_pos[r["image_id"]]))
        counters = {k: (sum(g["counters"][k] for g in gathered) if k != "failures"
                        else [f for g in gathered for f in g["counters"][k]]) for k in self.counters.__dict__}
        counters.update(scores=len(scored) - score_hits, score_cache_hits=score_hits)
        self.clock.seconds = {}
        for g in gathered:  # stage seconds summed over ranks
            self.clock.add(g["timing"]["stages"])
        self.clock.add(score_seconds)
        before = len(self.counters.failures)
        metrics = self.collect_metrics(adapters, points, scored, mkeys)
        counters["failures"] += self.counters.failures[before:]
        return {"records": all_records, "metrics": metrics, "counters": counters, "world_size": world,
                "points": [{"codec": p.codec, "rate": p.rate, "rate_key": p.key} for _, p in points],
                "tasks": {t: {"primary": a.primary_metric, "model": mkeys[t]} for t, a in adapters.items()},
                "timing": {"stages": self.clock.seconds, "workers": world,
                           "rank_cpu_seconds": [round(g["timing"]["cpu"], 3) for g in gathered],
                           "rank_wall_seconds": [round(g["timing"]["wall"], 3) for g in gathered]}}

    def score(self, dataset, images, adapters, points, all_preds, rank: int, world: int):
        """Run the evaluators. Each (task, point) is one job and the ranks share the jobs out (every rank
        has all predictions after the gather); rank 0 gets every outcome back, with the seconds spent."""
        by_id = {s["id"]: s for s in images}
        jobs = [(task, point) for task in adapters for _, point in points if all_preds[task].get(point.label)]
        outcomes, truth, hits = {}, "", 0
        before = dict(self.clock.seconds)
        for task, point in jobs[rank::world]:
            adapter, preds = adapters[task], all_preds[task][point.label]
            pseudo = all_preds[task].get(f"{ORIGINAL}@none") if self.exp.label_free else None
            ids = sorted(preds)
            with self.clock.stage(f"hash/{task}"):
                truth = truth or dataset_digest(dataset)
                cached = self.cache / "scores" / task / f"{score_key(task, adapter, truth, preds, ids, by_id, pseudo)}.json"
                try:  # our own cache file; a damaged one is scored again
                    outcomes[(task, point.label)] = ("ok", json.loads(cached.read_text()))
                    hits += 1
                    continue
                except (OSError, ValueError):
                    pass
            try:
                with self.clock.stage(f"score/{task}"):
                    ev = adapter.evaluator(pseudo_ground_truth=pseudo)
                    ev.process([preds[i] for i in ids], [by_id[i] for i in ids])
                    metrics = {**dict(ev.compute()), "images": len(ids)}
                outcomes[(task, point.label)] = ("ok", metrics)
            except Exception as exc:  # reported by name; the other tasks and points are kept
                outcomes[(task, point.label)] = ("error", error_text(exc))
                continue
            write_json(cached, metrics)  # outside the try: a full disk is the run's fault, not the task's
        spent = {k: v - before.get(k, 0.0) for k, v in self.clock.seconds.items() if k.startswith(("score/", "hash/"))}
        gathered = gather({"outcomes": outcomes, "seconds": spent, "hits": hits}, world)
        merged, seconds = {}, Stopwatch()
        for g in gathered:
            merged.update(g["outcomes"])
            seconds.add(g["seconds"])
        return merged, seconds.seconds, sum(g["hits"] for g in gathered)

    def collect_metrics(self, adapters, points, scored: dict, mkeys: dict) -> dict:
        """Every task's metrics at every point, from the evaluators' outcomes. A task whose scoring
        fails at a point is recorded as a failure and the rest goes on; each task's metrics are
        written to ``OUT/metrics/<task>.json`` as soon as they are collected."""
        metrics: dict[str, dict[str, dict]] = {}
        for task, adapter in adapters.items():
            errors: dict[str, dict] = {}  # one failure record per distinct error, listing its points
            for _, point in points:
                if (task, point.label) not in scored:
                    continue
                kind, value = scored[(task, point.label)]
                if kind == "error":
                    errors.setdefault(value, {"task": task, "stage": "score", "points": [], "error": value})
                    errors[value]["points"].append(point.label)
                    continue
                m = dict(value)
                if not _is_number(m.get(adapter.primary_metric)):  # the primary metric exists at every point
                    m.setdefault("note", f"{adapter.primary_metric} not computable at this point")
                    m[adapter.primary_metric] = None
                metrics.setdefault(task, {})[point.label] = m
            for failure in errors.values():
                self.fail(failure)
            write_json(self.out / "metrics" / f"{task}.json",
                       {"task": task, "primary": adapter.primary_metric, "model": mkeys[task],
                        "metrics": metrics.get(task, {}), "failures": list(errors.values())})
        return metrics


def dataset_digest(dataset) -> str:
    """The ground truth's identity: the dataset's meta and every annotation file's path, size and
    modification time (files under an annotation folder too), as make would judge them."""
    h = hashlib.sha256(pickle.dumps((dataset.name, dataset.split, json.dumps(dataset.meta, sort_keys=True, default=str))))
    for key in sorted(dataset.annotations):
        root = dataset.annotations[key]
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            try:
                st = f.stat()
                h.update(f"{key}:{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{key}:{f}:missing\n".encode())
    return h.hexdigest()


def score_key(task: str, adapter: TaskAdapter, truth: str, preds: dict, ids: list, by_id: dict,
              pseudo: dict | None) -> str:
    """What a task's metrics at one point are a function of: the predictions, the ground truth
    (``dataset_digest``, or the pseudo ground truth) of those images, the class map, and the scoring
    code, named by the versions of icm and of the plugin that registered the task. A rerun with all of
    these unchanged reads the metrics instead of scoring again (the cache's ``scores/`` folder)."""
    import icm

    plugins = get_plugins()
    plugin = plugins.tasks.entry(task).plugin
    info = plugins.info.get(plugin)
    h = hashlib.sha256(pickle.dumps((task, truth, icm.__version__, plugin, info.version if info else "",
                                     type(adapter).__module__, type(adapter).__qualname__,
                                     sorted(adapter.class_map.items()), adapter.primary_metric), protocol=4))
    for i in ids:
        h.update(pickle.dumps((by_id[i], preds[i], None if pseudo is None else pseudo.get(i)), protocol=4))
    return h.hexdigest()[:32]


def _batch(items: list[tuple], device, reads: str = "pixels") -> Batch:
    """(sample, decoded HxWx3 uint8, key, decoded features, shape) items of one size -> a Batch of [0, 1]
    pixels on ``device``, or (``reads == "features"``) of the decoded split tensors with the image size."""
    if reads == "features":
        h, w = items[0][4][:2]
        return Batch(torch.cat([it[3] for it in items]).to(device), [it[0] for it in items], size=(h, w))
    x = torch.stack([torch.from_numpy(it[1].copy()).permute(2, 0, 1) for it in items]).float().div(255)
    return Batch(x.to(device), [it[0] for it in items])


def _read_sidecar(path: Path, tag: str) -> dict | None:
    """A cache sidecar (``.est.json``, ``.quality.json``) if it belongs to this bitstream, else None."""
    try:
        saved = json.loads(path.read_text())
        return saved if isinstance(saved, dict) and saved.get("of") == tag else None
    except (OSError, ValueError):
        return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)


def error_text(exc: BaseException) -> str:
    """An icm error's own message; anything else also names its type (it is a bug somewhere)."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return first if isinstance(exc, IcmError) else f"{type(exc).__name__}: {first}"


def describe(f: dict) -> str:
    """One line for a failure record."""
    where = [f"task {f['task']}" if "task" in f else None, f"image {f['image_id']}" if "image_id" in f else None,
             f"at {f['point']}" if "point" in f else None,
             f"at {', '.join(f['points'][:3])}{' ...' if len(f['points']) > 3 else ''}" if f.get("points") else None,
             f"({f['stage']})" if "stage" in f else None]
    return f"{' '.join(w for w in where if w)}: {f['error']}"


def check_weights(spec) -> None:
    """A task config without a checkpoint would run on random weights: only when asked for explicitly."""
    if spec.weights not in (None, "random"):
        raise UserError(f"task {spec.name}: weights {spec.weights!r}: the only choice is 'random'")
    if spec.config and not Path(spec.config).is_file() and "://" not in spec.config:
        raise UserError(f"config {spec.config}: no such file")
    if spec.config and not spec.checkpoint and spec.weights != "random":
        raise UserError(f"task {spec.name}: config {spec.config} has no checkpoint (NAME=CONFIG:CHECKPOINT); "
                        f"to run it on random weights say so with --weights random")
    if spec.checkpoint and spec.weights == "random":
        raise UserError(f"task {spec.name}: both a checkpoint and --weights random given")


PREVIOUS = "previous"  # where the outputs of an earlier run go while a new one runs
OUTPUTS = ("results.json", "results.csv", "report.html", "metrics", "plots")


def set_aside_previous(out: Path) -> None:
    """Move an earlier run's outputs to ``OUT/previous/``: until this run writes its own, nothing in
    ``OUT`` looks like a current result. A successful run removes the folder."""
    import shutil

    present = [n for n in OUTPUTS if (out / n).exists()]
    if not present:
        return
    aside = out / PREVIOUS
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True, exist_ok=True)
    for name in present:
        try:
            os.replace(out / name, aside / name)
        except OSError:  # another run on the same OUT moved it first (or is moving it now)
            pass


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_jsonable).encode())


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
