"""Where an evaluation's time goes: wall seconds per stage, summed over a run (and over ranks).

Stages are named by the engine (``load/codec``, ``encode``, ``decode``, ``quality``, ``predict/det``,
``score/det``, ``report``...). A stage's time excludes the stages nested inside it, so the stages add
up to the run's measured time and the table says what to make faster.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, start, time spent in nested stages]

    @contextmanager
    def stage(self, name: str):
        entry = [name, time.perf_counter(), 0.0]
        self._stack.append(entry)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - entry[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + total - entry[2]
            if self._stack:
                self._stack[-1][2] += total

    def add(self, other: dict[str, float]) -> None:
        for name, s in other.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + s


def stage_table(stages: dict[str, float], wall: float, cpu: float, workers: int,
                peak_rss_mb: list[float] | None = None) -> list[str]:
    """Lines of the end-of-run table: each stage's seconds and share, largest first. With several
    workers the stage seconds are summed over them, so they can exceed the wall time."""
    total = sum(stages.values()) or 1.0
    lines = [f"{'stage':<22s} {'seconds':>8s} {'share':>6s}"]
    for name, s in sorted(stages.items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<22s} {s:8.1f} {100 * s / total:5.1f}%")
    lines.append(f"{'wall':<22s} {wall:8.1f}   ({workers} worker{'s' if workers != 1 else ''}, CPU {cpu:.1f} s)")
    if peak_rss_mb:
        lines.append(f"{'peak memory':<22s} {max(peak_rss_mb):8.0f}   (MB, the largest of a worker's peak resident sets)")
    return lines
