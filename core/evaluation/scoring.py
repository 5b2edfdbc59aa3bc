"""The scoring stage: every task's evaluator on its predictions at every point, shared out over the
ranks, cached by ``score_key``, and collected into per-task metrics (``OUT/metrics/<task>.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icm.distributed import gather
from icm.evaluation.cache import Cache, dataset_digest, score_key
from icm.evaluation.points import ORIGINAL_POINT, Point
from icm.evaluation.tally import Tally, error_text
from icm.evaluation.timing import Stopwatch
from icm.jsonio import write_json
from icm.tasks import TaskAdapter


@dataclass
class Outcome:
    """A task's evaluator at one point: its metrics, or the error it raised."""
    metrics: dict | None = None
    error: str | None = None


@dataclass
class Scored:
    outcomes: dict  # (task, point label) -> Outcome
    seconds: dict  # the score/ and hash/ stages, summed over the ranks
    cache_hits: int


class Scorer:
    def __init__(self, cache: Cache, tally: Tally, label_free: bool):
        self.cache, self.tally, self.label_free = cache, tally, label_free

    def score(self, dataset, images: list[dict], adapters: dict[str, TaskAdapter], points: list[Point],
              predictions: dict, rank: int, world: int) -> Scored:
        """Run the evaluators. Each (task, point) is one job and the ranks share the jobs out (every rank
        has all predictions); every rank gets every outcome back, with the seconds spent."""
        by_id = {s["id"]: s for s in images}
        jobs = [(task, point) for task in adapters for point in points if predictions[task].get(point.label)]
        clock = self.tally.clock
        outcomes, truth, hits = {}, "", 0
        before = dict(clock.seconds)
        for task, point in jobs[rank::world]:
            preds = predictions[task][point.label]
            pseudo = predictions[task].get(ORIGINAL_POINT.label) if self.label_free else None
            ids = sorted(preds)
            with clock.stage(f"hash/{task}"):
                truth = truth or dataset_digest(dataset)
                key = score_key(task, adapters[task], truth, preds, ids, by_id, pseudo)
                cached = self.cache.scores(task, key)
            if cached is not None:
                outcomes[(task, point.label)] = Outcome(cached)
                hits += 1
                continue
            outcomes[(task, point.label)] = outcome = self._evaluate(task, adapters[task], preds, ids, by_id, pseudo)
            if outcome.metrics is not None:  # a full disk is the run's fault, not the task's
                self.cache.save_scores(task, key, outcome.metrics)
        spent = {k: v - before.get(k, 0.0) for k, v in clock.seconds.items() if k.startswith(("score/", "hash/"))}
        merged, seconds = {}, Stopwatch()
        gathered = gather(Scored(outcomes, spent, hits), world)
        for g in gathered:
            merged.update(g.outcomes)
            seconds.add(g.seconds)
        return Scored(merged, seconds.seconds, sum(g.cache_hits for g in gathered))

    def _evaluate(self, task: str, adapter: TaskAdapter, preds: dict, ids: list, by_id: dict,
                  pseudo: dict | None) -> Outcome:
        try:
            with self.tally.clock.stage(f"score/{task}"):
                ev = adapter.evaluator(pseudo_ground_truth=pseudo)
                ev.process([preds[i] for i in ids], [by_id[i] for i in ids])
                return Outcome({**dict(ev.compute()), "images": len(ids)})
        except Exception as exc:  # reported by name; the other tasks and points are kept
            return Outcome(error=error_text(exc))

    def metrics(self, out: Path, adapters: dict[str, TaskAdapter], points: list[Point], outcomes: dict,
                mkeys: dict) -> dict:
        """Every task's metrics at every point, from the evaluators' outcomes. A task whose scoring
        fails at a point is recorded as a failure and the rest goes on; each task's metrics are
        written to ``OUT/metrics/<task>.json`` as soon as they are collected."""
        metrics: dict[str, dict[str, dict]] = {}
        for task, adapter in adapters.items():
            errors: dict[str, dict] = {}  # one failure record per distinct error, listing its points
            for point in points:
                outcome = outcomes.get((task, point.label))
                if outcome is None:
                    continue
                if outcome.error is not None:
                    errors.setdefault(outcome.error, {"task": task, "stage": "score", "points": [], "error": outcome.error})
                    errors[outcome.error]["points"].append(point.label)
                    continue
                metrics.setdefault(task, {})[point.label] = with_primary(outcome.metrics, adapter.primary_metric)
            for failure in errors.values():
                self.tally.fail(failure)
            write_json(out / "metrics" / f"{task}.json",
                       {"task": task, "primary": adapter.primary_metric, "model": mkeys[task],
                        "metrics": metrics.get(task, {}), "failures": list(errors.values())})
        return metrics


def with_primary(metrics: dict, primary: str) -> dict:
    """The metrics with the primary one present at every point (None, and a note, where not computable)."""
    m = dict(metrics)
    if not _is_number(m.get(primary)):
        m.setdefault("note", f"{primary} not computable at this point")
        m[primary] = None
    return m


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)
