"""One PNG per run: loss weights, training losses, estimated bpp and validation metrics over epochs."""

from __future__ import annotations

import io
import math
from pathlib import Path

from icm.bitstream import atomic_write_bytes


def _series(history, get, positive=False):
    xs, ys = [], []
    for e in history:
        v = get(e)
        if v is not None and math.isfinite(v) and (v > 0 or not positive):
            xs.append(e["epoch"])
            ys.append(v)
    return xs, ys


def plot_history(history: list[dict], path: Path) -> None:
    from icm.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    (aw, al), (ab, am) = axes
    terms = list(dict.fromkeys(t for e in history for t in e.get("weights", {})))
    for t in terms:
        aw.plot(*_series(history, lambda e, t=t: e.get("weights", {}).get(t), True), marker=".", label=t)
        al.plot(*_series(history, lambda e, t=t: e.get("losses", {}).get(t), True), marker=".", label=t)
    for ax, title in ((aw, "loss weights (configured × schedule)"), (al, "training losses (weighted, epoch mean)")):
        ax.set_yscale("log")
        ax.set_title(title)
    keys = list(dict.fromkeys(r["rate_key"] for e in history for r in e.get("val") or []))
    tasks = list(dict.fromkeys(t for e in history for r in e.get("val") or [] for t in r.get("primary", {})))

    def row(e, key):
        return next((r for r in e.get("val") or [] if r["rate_key"] == key), None)

    for key in keys:
        ab.plot(*_series(history, lambda e, k=key: (row(e, k) or {}).get("est_bpp")), marker=".", label=key)
        if not tasks:
            am.plot(*_series(history, lambda e, k=key: (row(e, k) or {}).get("psnr")), marker=".", label=f"PSNR {key}")
        for t in tasks:
            am.plot(*_series(history, lambda e, k=key, t=t: (row(e, k) or {}).get("primary", {}).get(t)),
                    marker=".", label=f"{t} {key}")
    ab.set_title("estimated bpp (validation, forward path)")
    am.set_title("validation metric" + (" (PSNR)" if not tasks else " (primary)"))
    for ax in (aw, al, ab, am):
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
