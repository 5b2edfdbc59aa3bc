"""The encode-once engine.

For every (codec, rate point, image) the image is encoded once into a bitstream file, decoded once,
and the decoded pixels go to every requested task. Bitstreams and per-image predictions are cached
under ``OUT/cache`` (``icm.evaluation.cache``), written atomically, so an interrupted run resumes and
adding a task to a finished experiment re-uses the bitstreams without encoding anything.

Under torchrun, images are sharded across ranks and the per-image records and predictions are
gathered with torch.distributed; the ranks share the scoring out and rank 0 assembles the result.
The stages: ``coding`` (encode, decode, quality, rate estimate), ``predicting``, ``scoring``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from icm.codecs import Codec
from icm.distributed import dist_setup, gather
from icm.errors import UserError
from icm.evaluation.cache import Cache, image_key, model_key
from icm.evaluation.coding import Coder, Item, Record, make_record, open_points
from icm.evaluation.config import Experiment
from icm.evaluation.points import Point, point_label
from icm.evaluation.predicting import Predictor, build_adapters
from icm.evaluation.scoring import Scorer
from icm.evaluation.tally import Counters, Tally, describe
from icm.faults import set_aside_previous
from icm.images import load_image
from icm.tasks import TaskAdapter


@dataclass
class Shard:
    """One rank's work, gathered to every rank."""
    records: list[Record]
    predictions: dict  # task -> point label -> image id -> prediction
    counters: Counters
    stages: dict  # seconds per stage
    wall: float
    cpu: float
    peak_rss_mb: float  # the rank's peak resident memory so far (the largest image and model it held)


class Engine:
    def __init__(self, exp: Experiment, progress: bool = True):
        self.exp, self.progress = exp, progress
        self.out = Path(exp.out)
        self.cache = Cache(self.out / "cache")
        self.tally = Tally()
        self.clock = self.tally.clock
        self.codecs: dict[str, Codec] = {}  # opened once; the report decodes its samples with them too
        self.coder = Coder(self.cache, self.tally, exp.batch_size)
        self.predictor = Predictor(self.cache, self.tally, exp.batch_size)
        self.scorer = Scorer(self.cache, self.tally, exp.label_free)

    def codec_points(self) -> list[tuple[Codec | None, Point]]:
        return open_points(self.exp, self.tally, self.codecs)

    def adapters(self) -> dict[str, TaskAdapter]:
        """The experiment's task adapters with its class map; under --label-free, a task that cannot
        make pseudo ground truth is recorded as a failure and left out."""
        with self.clock.stage("load/tasks"):
            built = build_adapters(self.exp.tasks, self.exp.device)
        out = {}
        for name, adapter in built.items():
            adapter.class_map = dict(self.exp.class_map)
            if self.exp.label_free and adapter.label_free_unsupported:
                if self.tally.rank == 0:
                    self.tally.fail({"task": name, "stage": "label-free", "error": "cannot make pseudo ground truth "
                                     f"({adapter.label_free_unsupported}); task skipped"})
                continue
            out[name] = adapter
        return out

    def run(self, dataset) -> dict:
        """shard -> load -> code -> predict -> gather -> score -> assemble (rank 0; the others return {})."""
        rank, world = dist_setup()
        self.tally.rank = rank
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
            self._clear_outputs()
        originals = self.load_images(shard)
        if rank == 0 and originals:  # before any coding: is there room for what this run will write?
            from icm.evaluation.space import cache_estimate, warn_if_short

            warn_if_short(self.out, *cache_estimate(self, points, adapters, mkeys, originals, len(images) / len(shard)))
        records, predictions = self.code_and_predict(points, shard, originals, adapters, mkeys, world)
        gathered = gather(Shard(records, predictions, self.tally.counters, dict(self.clock.seconds),
                                time.perf_counter() - start_wall, time.process_time() - start_cpu, peak_rss_mb()), world)
        scored = self.scorer.score(dataset, images, adapters, [p for _, p in points],
                                   merge_predictions(gathered, adapters), rank, world)
        if rank != 0:
            return {}
        return self.assemble(gathered, scored, images, points, adapters, mkeys)

    def _clear_outputs(self) -> None:
        set_aside_previous(self.out)
        from icm.faults import remove_stale_temporaries

        remove_stale_temporaries(self.out)  # a killed run's half-written files

    def load_images(self, shard: list[dict]) -> dict:
        """{image id: (pixels, image key)} of the shard's images that load; the others are failures."""
        originals = {}
        with self.clock.stage("load/images"):
            for s in shard:
                try:
                    img = load_image(s["file_name"])
                    originals[s["id"]] = (img, image_key(img))
                except UserError as exc:
                    self.tally.fail({"image_id": s["id"], "stage": "load", "error": str(exc)})
        return originals

    def code_and_predict(self, points, shard, originals, adapters, mkeys, world) -> tuple[list, dict]:
        """Per point: cached predictions looked up, the images coded, the missing predictions made.
        Returns the per-image records and {task: {point label: {image id: prediction}}}."""
        from tqdm import tqdm

        records, predictions = [], {t: {} for t in adapters}
        # the bar counts all the work of this rank: one codec step and one prediction per task, per image
        # and point (cached ones tick at once), so its rate and ETA cover predictions too
        self.tally.bar = tqdm(total=len(points) * len(shard) * (1 + len(adapters)), unit="step",
                              desc="evaluate" + (f" (rank 0 of {world})" if world > 1 else ""),
                              disable=not self.progress or self.tally.rank != 0)
        for codec, point in points:
            readers, point_mkeys = self.predictor.point_tasks(codec, point, adapters, mkeys)
            items = []
            for s in shard:
                if s["id"] not in originals:
                    self.tally.tick(1 + len(adapters))
                    continue
                item = Item(s, *originals[s["id"]])
                for task, p in self.predictor.look_up(item, list(adapters), readers, point_mkeys, point).items():
                    predictions[task].setdefault(point.label, {})[item.id] = p
                items.append(item)
            coded = self.coder.code(codec, point, items)
            worked = {id(it) for it in coded}
            for item in items:  # a failed one's failure is recorded: what it would have done is done
                if id(item) not in worked:
                    self.tally.tick(1 + len(item.tasks))
            for item in coded:
                records.append(make_record(point, item))
                self.tally.tick()
            made = self.predictor.predict(readers, point_mkeys, point, [it for it in coded if it.tasks])
            for task, got in made.items():
                predictions[task].setdefault(point.label, {}).update(got)
        self.tally.bar.close()
        return records, predictions

    def assemble(self, gathered: list[Shard], scored, images, points, adapters, mkeys) -> dict:
        """Rank 0's result: every rank's records in dataset order, counters and stage times summed over
        the ranks, and every task's metrics."""
        for g in gathered[1:]:
            for f in g.counters.failures:
                print(f"icm: failure: {describe(f)}", file=sys.stderr)
        counters = merge_counters([g.counters for g in gathered])
        counters.update(scores=len(scored.outcomes) - scored.cache_hits, score_cache_hits=scored.cache_hits)
        self.clock.seconds = {}
        for g in gathered:  # stage seconds summed over ranks
            self.clock.add(g.stages)
        self.clock.add(scored.seconds)
        before = len(self.tally.counters.failures)
        metrics = self.scorer.metrics(self.out, adapters, [p for _, p in points], scored.outcomes, mkeys)
        counters["failures"] += self.tally.counters.failures[before:]
        return {"records": ordered_records(gathered, images, points), "metrics": metrics, "counters": counters,
                "world_size": len(gathered),
                "points": [{"codec": p.codec, "rate": p.rate, "rate_key": p.key} for _, p in points],
                "tasks": {t: {"primary": a.primary_metric, "model": mkeys[t]} for t, a in adapters.items()},
                "timing": {"stages": self.clock.seconds, "workers": len(gathered),
                           "rank_cpu_seconds": [round(g.cpu, 3) for g in gathered],
                           "rank_wall_seconds": [round(g.wall, 3) for g in gathered],
                           "rank_peak_rss_mb": [round(g.peak_rss_mb, 1) for g in gathered]}}


def peak_rss_mb() -> float:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def merge_predictions(gathered: list[Shard], adapters: dict) -> dict:
    """Every rank's predictions: every rank has everything, so the scoring can be shared out."""
    merged = {t: {} for t in adapters}
    for g in gathered:
        for t, by_point in g.predictions.items():
            for label, preds in by_point.items():
                merged[t].setdefault(label, {}).update(preds)
    return merged


def merge_counters(counters: list[Counters]) -> dict:
    merged = {k: sum(getattr(c, k) for c in counters) for k in asdict(counters[0]) if k != "failures"}
    merged["failures"] = [f for c in counters for f in c.failures]
    return merged


def ordered_records(gathered: list[Shard], images: list[dict], points: list) -> list[dict]:
    """Records in dataset order whatever the sharding, so means sum in one order and any worker
    count gives the same figures to the last digit."""
    point_pos = {p.label: i for i, (_, p) in enumerate(points)}
    image_pos = {s["id"]: i for i, s in enumerate(images)}
    records = sorted((r for g in gathered for r in g.records),
                     key=lambda r: (point_pos[point_label(r.codec, r.rate_key)], image_pos[r.image_id]))
    return [asdict(r) for r in records]
