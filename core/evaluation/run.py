"""Run an experiment end to end and write results.json, results.csv, plots and report.html."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from icm.bitstream import Bitstream, atomic_write_bytes
from icm.codecs import open_codec
from icm.datasets import load_dataset
from icm.errors import IcmError
from icm.evaluation.config import Experiment
from icm.distributed import leave_together
from icm.evaluation.engine import Engine
from icm.evaluation.points import ORIGINAL
from icm.evaluation.report import png_bytes, write_report
from icm.evaluation.summary import analyse, point_rows, task_rows
from icm.faults import PREVIOUS
from icm.images import load_image
from icm.jsonio import write_json

PACKAGES = ("icm", "torch", "torchvision", "compressai", "numpy", "pillow", "pillow-heif", "imageio-ffmpeg")


def plugin_packages() -> list[str]:
    """Every installed icm plugin's distribution and what it requires (its model library, ...)."""
    names = []
    for dist in metadata.distributions():
        if any(ep.group == "icm" for ep in dist.entry_points):
            names.append(dist.metadata["Name"])
            names += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in dist.requires or [] if "extra ==" not in r]
    return names


def provenance(exp: Experiment) -> dict:
    import torch

    versions = {}
    for p in dict.fromkeys([*PACKAGES, *plugin_packages()]):
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv, "git": git,
            "packages": versions, "experiment": dataclasses.asdict(exp),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                        "cuda": torch.cuda.is_available(), "torch_threads": torch.get_num_threads()}}


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (v if not isinstance(v, dict) else ";".join(f"{a}={b}" for a, b in v.items())) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def sample_images(exp: Experiment, result: dict, dataset, codecs: dict | None = None) -> list[tuple[str, str, bytes]]:
    """A few decoded images per codec and rate for the report, decoded again from the cached bitstreams."""
    from icm.evaluation.cache import image_key

    out = []
    chosen = dataset.images[: exp.samples_in_report]
    options = {c.name: c.options for c in exp.codecs}
    codecs = dict(codecs or {})  # one codec object per name: learned codecs load their weights once, not per sample
    cache = Path(exp.out) / "cache" / "samples"
    for s in chosen:
        img = load_image(s["file_name"])
        out.append((f"{s['id']}-original", f"#{s['id']} original", png_bytes(img)))
        key = image_key(img)
        for p in result["points"]:
            if p["codec"] == ORIGINAL:
                continue
            f = Path(exp.out) / "cache" / "bitstreams" / p["codec"] / p["rate_key"] / f"{key}.icm"
            if not f.is_file():
                continue
            try:
                data = f.read_bytes()
                bs = Bitstream.from_bytes(data)
                # the PNG of a decode is kept, keyed by the file's bytes and the codec's decode options
                # (icm-omni-aux's beta is one): a rerun loads no sample decode
                sample = cache / f"{hashlib.sha256(data + repr(sorted(options.get(p['codec'], {}).items())).encode()).hexdigest()[:32]}.png"
                if sample.is_file():
                    png = sample.read_bytes()
                else:
                    if p["codec"] not in codecs:
                        codecs[p["codec"]] = open_codec(p["codec"], **options.get(p["codec"], {}))
                    png = png_bytes(codecs[p["codec"]].from_bitstream(bs, source=str(f)))
                    atomic_write_bytes(sample, png)
            except (IcmError, OSError):
                continue
            out.append((f"{s['id']}-{p['codec']}-{p['rate_key']}",
                        f"#{s['id']} {p['codec']} {p['rate_key']} {bs.bpp():.3f} bpp"
                        + (" (picture decoded from the features)" if bs.features is not None else ""), png))
    return out


def evaluate(exp: Experiment, progress: bool = True) -> dict | None:
    dataset = load_dataset(exp.dataset, exp.split)
    start, start_cpu = time.time(), time.process_time()
    engine = Engine(exp, progress)
    result = engine.run(dataset)
    if not result:  # not rank 0: wait for its report, then every rank leaves together
        leave_together()
        return None
    result["provenance"] = provenance(exp)
    rows = point_rows(result)
    analysis = analyse(result, rows, exp.reference)
    out = Path(exp.out)
    with engine.clock.stage("report"):
        write_csv(out / "results.csv", task_rows(result, rows) or rows)  # --tasks none: one row per codec and rate
        write_report(out, analysis, rows, result, sample_images(exp, result, dataset, engine.codecs),
                     cache=out / "cache" / "plots")
    result["wall_seconds"] = time.time() - start
    timing = {**result["timing"], "stages": {k: round(v, 3) for k, v in engine.clock.seconds.items()},
              "wall_seconds": round(result["wall_seconds"], 3),
              # this process (rank 0, report included) plus the other ranks' engine CPU
              "cpu_seconds": round(time.process_time() - start_cpu + sum(result["timing"]["rank_cpu_seconds"][1:]), 3)}
    write_json(out / "results.json", {"schema": "icm.results/1", "experiment": dataclasses.asdict(exp),
                                      "counters": result["counters"], "wall_seconds": result["wall_seconds"],
                                      "world_size": result["world_size"], "timing": timing, "tasks": result["tasks"],
                                      "points": rows, "metrics": result["metrics"], "analysis": analysis,
                                      "provenance": result["provenance"]})
    shutil.rmtree(out / PREVIOUS, ignore_errors=True)  # this run's outputs are all written
    leave_together()
    return {"out": str(out), "analysis": analysis, "counters": result["counters"], "wall_seconds": result["wall_seconds"],
            "metrics": result["metrics"], "strict": exp.strict, "timing": timing}
