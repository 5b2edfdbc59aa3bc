"""Le §4.1 / §5.4: every (epoch, rate) is a candidate; the Pareto front of the candidates (estimated
bpp against the mean primary metric on the validation set) is re-evaluated with real bitstreams
through :func:`icm.evaluation.run.evaluate`, and estimated and real bpp are reported side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

from icm.analysis import pareto_front
from icm.evaluation.config import CodecSpec, Experiment
from icm.evaluation.points import point_label, rate_key
from icm.training.validate import score


def candidates(history: list[dict]) -> list[dict]:
    out = []
    for entry in history:
        for row in entry.get("val") or []:
            if row.get("est_bpp") is not None and row.get("score") is not None:
                out.append({"epoch": entry["epoch"], "rate": row["rate"], "rate_key": row["rate_key"],
                            "est_bpp": row["est_bpp"], "score": row["score"], "psnr": row.get("psnr"),
                            "metrics": row.get("metrics", {}), "checkpoint": entry.get("checkpoint")})
    return out


def select_front(cands: list[dict]) -> list[dict]:
    """The candidates on the lower-bpp / higher-score front (the earliest epoch on ties)."""
    front = pareto_front([(c["est_bpp"], c["score"]) for c in cands if math.isfinite(c["score"])])
    chosen = []
    for point in front:
        chosen.append(next(c for c in cands if (c["est_bpp"], c["score"]) == point))
    return chosen


def reevaluate(cfg, front: list[dict], export, out: Path, progress: bool = True) -> list[dict] | None:
    """Real-bitstream evaluation of the front, one evaluate() per epoch (one weights file each).
    ``export(epoch) -> open_codec options`` makes the candidate openable by name. Call on every rank."""
    from icm.evaluation.run import evaluate

    rows = []
    for epoch in sorted({c["epoch"] for c in front}):
        chosen = [c for c in front if c["epoch"] == epoch]
        folder = out / "pareto" / f"epoch_{epoch:03d}"
        exp = Experiment(tasks=list(cfg.tasks), codecs=[CodecSpec(cfg.codec.name, rates=[c["rate"] for c in chosen],
                                                                  options=export(epoch))],
                         dataset=cfg.dataset, split=cfg.val_split, limit=cfg.val_limit, out=str(folder),
                         batch_size=cfg.eval_batch_size, reference=cfg.codec.name, samples_in_report=1,
                         device=cfg.device)
        if evaluate(exp, progress=progress) is None:  # not rank 0
            continue
        results = json.loads((folder / "results.json").read_text())
        points = {p["rate_key"]: p for p in results["points"] if p["codec"] == cfg.codec.name}
        for c in chosen:
            key = rate_key(c["rate"])
            p = points.get(key, {})
            label = point_label(cfg.codec.name, key)
            real = {t: m[label] for t, m in results["metrics"].items() if label in m}
            primaries = {t: v["primary"] for t, v in results["tasks"].items()}
            rows.append({"epoch": epoch, "rate": c["rate"], "est_bpp": c["est_bpp"], "bpp": p.get("bpp"),
                         "codec_est_bpp": p.get("est_bpp"),
                         "gap_bpp": None if p.get("bpp") is None else p["bpp"] - c["est_bpp"],
                         "score_est": c["score"], "score_real": score(real, primaries, p.get("psnr")),
                         "psnr_est": c["psnr"], "psnr_real": p.get("psnr"),
                         "metrics_est": c["metrics"], "metrics_real": real, "results": str(folder / "results.json")})
    return rows
