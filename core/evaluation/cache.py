"""``OUT/cache``: what an evaluation keeps so that a rerun, or a run with one more task, repeats no work.

- ``bitstreams/CODEC/RATE/IMAGE.icm``, with sidecars ``IMAGE.quality.json`` (PSNR, MS-SSIM) and
  ``IMAGE.est.json`` (the entropy model's estimate), each naming the file's weights and codec version;
- ``predictions/MODEL/CODEC/WEIGHTS/RATE/IMAGE.pkl``: one task model's prediction on one decoded image;
- ``scores/TASK/KEY.json``: a task's metrics at one point, keyed by everything they are a function of.

Every file is written atomically; a damaged or foreign entry is made again, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np

from icm.bitstream import Bitstream, atomic_write_bytes
from icm.codecs import Codec
from icm.errors import IcmError
from icm.evaluation.points import Point
from icm.jsonio import write_json
from icm.plugins import get_plugins
from icm.tasks import TaskAdapter


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


def bitstream_tag(bs: Bitstream) -> str:
    """What a sidecar belongs to: the weights and codec version of the file next to it."""
    return bs.weights_hash.hex() + "/" + bs.codec_version


def sidecar(path: Path, kind: str) -> Path:
    """``IMAGE.icm`` -> ``IMAGE.<kind>.json``."""
    return path.with_name(path.stem + f".{kind}.json")


def read_sidecar(path: Path, tag: str) -> dict | None:
    """A cache sidecar (``.est.json``, ``.quality.json``) if it belongs to this bitstream, else None."""
    try:
        saved = json.loads(path.read_text())
        return saved if isinstance(saved, dict) and saved.get("of") == tag else None
    except (OSError, ValueError):
        return None


def write_sidecar(path: Path, tag: str, values: dict) -> None:
    atomic_write_bytes(path, json.dumps({"of": tag, **values}).encode())


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def bitstream_file(self, point: Point, ikey: str) -> Path:
        return self.root / "bitstreams" / point.codec / point.key / f"{ikey}.icm"

    def bitstream(self, codec: Codec, point: Point, path: Path) -> Bitstream | None:
        """The cached file when it is one of this codec's (other weights or version: re-encoded)."""
        if path.is_file():
            try:
                bs = Bitstream.load(path)
                if bs.weights_hash == codec.weights_hash(point.rate) and bs.codec_version == codec.version:
                    return bs
            except IcmError:
                pass  # a damaged cache entry is re-made, not trusted
        return None

    def prediction_file(self, mkey: str, point: Point, ikey: str) -> Path:
        return self.root / "predictions" / mkey / point.codec / (point.weights or "-") / point.key / f"{ikey}.pkl"

    def prediction(self, mkey: str, point: Point, ikey: str) -> tuple[bool, object]:
        """(found, prediction) of one model on one decoded image."""
        f = self.prediction_file(mkey, point, ikey)
        if f.is_file():
            try:  # our own cache files, written by this engine (never user-supplied)
                return True, pickle.loads(f.read_bytes())
            except Exception:
                pass
        return False, None

    def save_prediction(self, mkey: str, point: Point, ikey: str, prediction) -> None:
        atomic_write_bytes(self.prediction_file(mkey, point, ikey), pickle.dumps(prediction))

    def scores(self, task: str, key: str) -> dict | None:
        try:  # our own cache file; a damaged one is scored again
            return json.loads(self.score_file(task, key).read_text())
        except (OSError, ValueError):
            return None

    def save_scores(self, task: str, key: str, metrics: dict) -> None:
        write_json(self.score_file(task, key), metrics)

    def score_file(self, task: str, key: str) -> Path:
        return self.root / "scores" / task / f"{key}.json"
