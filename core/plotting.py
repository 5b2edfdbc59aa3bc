"""matplotlib set up once for icm's figures: a headless backend, and no font-fallback noise."""

from __future__ import annotations

import logging


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed).

    Log-scale tick labels are mathtext. When matplotlib's font cache was built by another matplotlib
    (a system one sharing ``~/.cache/matplotlib``), every mathtext font lookup logs a "findfont ...
    falling back to DejaVu Sans" warning, about 20 lines per run; the fallback renders fine, so
    those warnings are silenced here rather than shown to every user of ``icm train``.
    """
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt

    return plt
