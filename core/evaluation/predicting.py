"""The prediction stage: task adapters built once, run on each point's decoded images (or a feature
codec's decoded tensors) in batches, with every prediction cached per model, point and image."""

from __future__ import annotations

from pathlib import Path

import torch

from icm.codecs import Codec
from icm.errors import UserError
from icm.evaluation.cache import Cache, model_key
from icm.evaluation.coding import Item
from icm.evaluation.points import Point
from icm.evaluation.tally import Tally, error_text
from icm.plugins import get_plugins
from icm.tasks import Batch, TaskAdapter


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


def build_adapters(specs, device: str | None = None) -> dict[str, TaskAdapter]:
    """Each TaskSpec's adapter from its plugin, with the spec's config and checkpoint, on ``device``
    (the adapter's own default when None). A model's random init is the same in every build, and a
    build leaves the global random state as it found it."""
    tasks = get_plugins().tasks
    out = {}
    for spec in specs:
        check_weights(spec)
        kwargs = {k: v for k, v in (("config", spec.config), ("checkpoint", spec.checkpoint), ("device", device)) if v}
        with torch.random.fork_rng():
            torch.manual_seed(0)
            out[spec.name] = tasks.get(spec.name)(**kwargs)
    return out


def make_batch(items: list[Item], device, reads: str = "pixels") -> Batch:
    """Items of one size -> a Batch of [0, 1] pixels on ``device``, or (``reads == "features"``) of
    the decoded split tensors with the image size."""
    samples = [it.sample for it in items]
    if reads == "features":
        h, w = items[0].image.shape[:2]
        return Batch(torch.cat([it.coded.features for it in items]).to(device), samples, size=(h, w))
    x = torch.stack([torch.from_numpy(it.coded.decoded.copy()).permute(2, 0, 1) for it in items]).float().div(255)
    return Batch(x.to(device), samples)


class Predictor:
    """Runs the tasks at one point after another; counts, times and records failures in ``tally``."""

    def __init__(self, cache: Cache, tally: Tally, batch_size: int):
        self.cache, self.tally, self.batch_size = cache, tally, batch_size
        self._readers: dict[str, dict] = {}  # split point -> {task: (feature reader, its model key)}
        self._no_pixels: set[tuple[str, str]] = set()  # (task, codec) failures already recorded

    def point_tasks(self, codec: Codec | None, point: Point, adapters: dict, mkeys: dict) -> tuple[dict, dict]:
        """The adapters (and model keys) that predict at a point: for a feature codec, each task's
        feature reader of the codec's split (built once per split) and, for tasks without one, the
        pixel adapter on the codec's decoded pictures; a pixel task on a feature codec without an
        image decoder is left out, with one failure recorded."""
        if codec is None or codec.kind != "features":
            return adapters, mkeys
        readers = self._feature_readers(codec.split, adapters)
        chosen, keys = {}, {}
        for task, adapter in adapters.items():
            if task in readers:
                chosen[task], keys[task] = readers[task]
            elif codec.has_image_decoder:
                chosen[task], keys[task] = adapter, mkeys[task]
            elif (task, codec.name) not in self._no_pixels:
                self._no_pixels.add((task, codec.name))
                if self.tally.rank == 0:
                    self.tally.fail({"task": task, "point": point.codec, "stage": "predict",
                                     "error": f"task {task} has no back end for features split at {codec.split} and "
                                              f"{codec.name} has no image decoder; task skipped for this codec"})
        return chosen, keys

    def _feature_readers(self, split: str, adapters: dict) -> dict:
        if split not in self._readers:
            readers = {}
            for task, adapter in adapters.items():
                with self.tally.clock.stage("load/tasks"):
                    reader = adapter.feature_reader(split)
                if reader is not None:
                    reader.class_map = adapter.class_map
                    reader.bind(adapter.dataset)
                    readers[task] = (reader, model_key(reader))
            self._readers[split] = readers
        return self._readers[split]

    def look_up(self, item: Item, tasks: list[str], readers: dict, mkeys: dict, point: Point) -> dict:
        """The cached predictions of ``item`` at ``point``, by task; the tasks without one go to
        ``item.tasks``. A task with no adapter at this point counts as done."""
        found = {}
        for task in tasks:
            if task not in readers:  # a pixel task on a codec without pixels: recorded once, skipped
                self.tally.tick()
                continue
            hit, p = self.cache.prediction(mkeys[task], point, item.key)
            if hit:
                found[task] = p
                self.tally.counters.prediction_cache_hits += 1
                self.tally.tick()
            else:
                item.tasks.append(task)
        return found

    def predict(self, adapters: dict[str, TaskAdapter], mkeys: dict[str, str], point: Point,
                items: list[Item]) -> dict[str, dict]:
        """Every task on the coded items that need its prediction: {task: {image id: prediction}}. One
        Batch per group of equal-sized images serves every task that needs all of them, so tasks
        declaring the same ``forward_key`` compute one forward; a task that fails is recorded and the
        others go on."""
        preds: dict[str, dict] = {t: {} for t in adapters}
        failed: set[str] = set()
        order = sorted(adapters, key=lambda t: str(adapters[t].forward_key))  # sharers back to back
        for i in range(0, len(items), self.batch_size):
            groups: dict[tuple, list] = {}
            for it in items[i:i + self.batch_size]:  # a batch needs one image size
                groups.setdefault(it.image.shape, []).append(it)
            for group in groups.values():
                shared: dict[tuple, Batch] = {}
                for task in order:
                    mine = [it for it in group if task in it.tasks]
                    if mine and task not in failed:
                        self._predict_task(task, adapters[task], mkeys[task], point, group, mine, shared, preds, failed)
        for task in failed:  # what a failed task did not predict is done too, as far as the bar goes
            self.tally.tick(sum(task in it.tasks for it in items) - len(preds[task]))
        return preds

    def _predict_task(self, task: str, adapter: TaskAdapter, mkey: str, point: Point, group: list[Item],
                      mine: list[Item], shared: dict, preds: dict, failed: set) -> None:
        reads = getattr(adapter, "consumes", "pixels")
        key = (adapter.device, reads)
        if len(mine) < len(group):
            batch = make_batch(mine, adapter.device, reads)
        elif key not in shared:
            batch = shared[key] = make_batch(group, adapter.device, reads)
        else:
            batch = shared[key]
        try:
            with self.tally.clock.stage(f"predict/{task}"), torch.no_grad():
                out = adapter.predict(batch)
        except Exception as exc:  # one task's bug or refusal must not cost the other tasks' work
            self.tally.fail({"task": task, "point": point.label, "stage": "predict", "error": error_text(exc)})
            failed.add(task)
            return
        for it, p in zip(mine, out):
            self.cache.save_prediction(mkey, point, it.key, p)
            preds[task][it.id] = p
            self.tally.counters.predictions += 1
        self.tally.tick(len(mine))
