"""From per-image records and per-point task metrics to the tables users read: one row per
codec x rate (x task), curves, Pareto fronts and BD-rate / BD-metric against the reference anchor."""

from __future__ import annotations

import math

import numpy as np

from icm.analysis import bd_metric, bd_rate, pareto_front
from icm.evaluation.points import ORIGINAL, ORIGINAL_POINT, point_label


def bd_metric_name(task: str, primary: str) -> str:
    """The BD-metric's name: the ``bd_name`` the task was registered with, else ``BD-<primary metric>``."""
    from icm.plugins import get_plugins

    tasks = get_plugins().tasks
    return (tasks.entry(task).meta.get("bd_name") if task in tasks else None) or f"BD-{primary}"


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def point_rows(result: dict) -> list[dict]:
    """One row per (codec, rate): mean bpp from the real bytes, PSNR, MS-SSIM, timings, estimate gap."""
    groups: dict[tuple, list] = {}
    for r in result["records"]:
        groups.setdefault((r["codec"], r["rate_key"]), []).append(r)
    rows = []
    for (codec, key), recs in groups.items():
        bpp, est = _mean(r["bpp"] for r in recs), _mean(r["est_bpp"] for r in recs)
        rows.append({"codec": codec, "rate_key": key, "rate": recs[0]["rate"], "images": len(recs), "bpp": bpp,
                     "est_bpp": est, "est_gap_bpp": None if est is None or bpp is None else bpp - est,
                     "psnr": _mean(r["psnr"] for r in recs), "ms_ssim": _mean(r["ms_ssim"] for r in recs),
                     "encode_ms": _mean(r["encode_ms"] for r in recs), "decode_ms": _mean(r["decode_ms"] for r in recs)})
    return rows


def task_rows(result: dict, rows: list[dict]) -> list[dict]:
    """One row per codec x rate x task (the CSV)."""
    out = []
    for task, by_point in result["metrics"].items():
        for row in rows:
            m = by_point.get(point_label(row["codec"], row["rate_key"]))
            if m is not None:
                out.append({**row, "task": task, "primary": result["tasks"][task]["primary"],
                            "metric": m.get(result["tasks"][task]["primary"]), **{f"m.{k}": v for k, v in m.items()}})
    return out


def analyse(result: dict, rows: list[dict], reference: str) -> dict:
    """Per task: every codec's points, its Pareto front, and BD-rate / BD-metric against ``reference``."""
    analysis = {}
    codecs = sorted({r["codec"] for r in rows if r["codec"] != ORIGINAL})
    for task, by_point in result["metrics"].items():
        primary = result["tasks"][task]["primary"]
        curves = {}
        for codec in codecs:
            # a point whose primary metric could not be computed (null, with a note) is not on the curve
            pts = [(r["bpp"], by_point[point_label(codec, r["rate_key"])].get(primary), r["rate_key"]) for r in rows
                   if r["codec"] == codec and point_label(codec, r["rate_key"]) in by_point and r["bpp"] is not None]
            pts = [p for p in pts if p[1] is not None and math.isfinite(p[1])]
            curves[codec] = {"points": pts, "front": pareto_front([(b, m) for b, m, _ in pts])}
        ceiling = by_point.get(ORIGINAL_POINT.label, {}).get(primary)
        ref = curves.get(reference, {}).get("front")
        bd = {}
        for codec, c in curves.items():
            if codec == reference or not ref:
                continue
            bd[codec] = {"bd_rate": bd_rate(ref, c["front"]), "bd_metric": bd_metric(ref, c["front"]),
                         "bd_metric_name": bd_metric_name(task, primary)}
        analysis[task] = {"primary": primary, "uncompressed": ceiling, "curves": curves, "reference": reference, "bd": bd}
    # PSNR as a task-like curve, for the PSNR-rate figure and BD-PSNR
    curves = {}
    for codec in codecs:
        pts = [(r["bpp"], r["psnr"], r["rate_key"]) for r in rows if r["codec"] == codec and r["psnr"] is not None]
        curves[codec] = {"points": pts, "front": pareto_front([(b, m) for b, m, _ in pts])}
    ref = curves.get(reference, {}).get("front")
    analysis["_psnr"] = {"primary": "PSNR", "uncompressed": None, "curves": curves, "reference": reference,
                         "bd": {c: {"bd_rate": bd_rate(ref, v["front"]), "bd_metric": bd_metric(ref, v["front"]),
                                    "bd_metric_name": "BD-PSNR"} for c, v in curves.items() if ref and c != reference}}
    return analysis
