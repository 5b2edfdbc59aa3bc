"""Rate points: a codec at one rate, named ``codec@rate_key`` in results, caches and training logs."""

from __future__ import annotations

from dataclasses import dataclass

ORIGINAL = "original"  # the uncompressed images: the accuracy ceiling, and the pseudo ground truth


def rate_key(rate: dict) -> str:
    """A filesystem-safe name of a rate, e.g. ``qp=32,scale=0.5`` (``none`` for no rate)."""
    return ",".join(f"{k}={rate[k]}" for k in sorted(rate)) or "none"


def point_label(codec: str, key: str) -> str:
    """The name of a rate point in results.json's metrics and in failure messages."""
    return f"{codec}@{key}"


@dataclass
class Point:
    codec: str
    rate: dict
    key: str  # rate_key(rate)
    weights: str = ""  # codec version + weights hash: predictions on other weights are other files

    @property
    def label(self) -> str:
        return point_label(self.codec, self.key)


ORIGINAL_POINT = Point(ORIGINAL, {}, rate_key({}))
