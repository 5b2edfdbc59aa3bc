"""JSON out of icm's results: numpy scalars and arrays and paths converted, written atomically
(through the one atomic writer, ``icm.bitstream.atomic_write_bytes``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from icm.bitstream import atomic_write_bytes


def jsonable(o):
    """``json.dumps``'s ``default``: what numpy and pathlib hand over, as plain JSON values."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=jsonable).encode())
