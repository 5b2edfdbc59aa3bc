"""What every stage of an evaluation reports to: counters, failures, the stage clock and the progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from icm.errors import IcmError
from icm.evaluation.timing import Stopwatch


@dataclass
class Counters:
    encodes: int = 0
    bitstream_cache_hits: int = 0
    decodes: int = 0
    predictions: int = 0
    prediction_cache_hits: int = 0
    failures: list = field(default_factory=list)


@dataclass
class Tally:
    counters: Counters = field(default_factory=Counters)
    clock: Stopwatch = field(default_factory=Stopwatch)
    rank: int = 0
    bar: object = None  # the tqdm bar of a running evaluation

    def fail(self, failure: dict) -> None:
        """Record a failure and say so on stderr at once (the count comes at the end of the run). Only
        rank 0 prints: the other ranks' output may not be shown (``--workers``), so rank 0 prints
        their failures when it gathers them."""
        self.counters.failures.append(failure)
        if self.rank == 0:
            from tqdm import tqdm

            tqdm.write(f"icm: failure: {describe(failure)}", file=sys.stderr)

    def tick(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


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
