"""What running a detector at its test pipeline's size costs: the same `icm evaluate` (det on JPEG)
with the shipped PanopticFPN read at the native 128x128 and behind a stock COCO test pipeline
(Resize to 1333x800 with keep_ratio: 800x800 for these square images), from a cold cache each.

    .venv/bin/python benchmarks/pipeline_cost.py [--limit 20] [--workers 1]

Prints each run's stage breakdown (seconds) and the ratio of the two, measured in one run of this
script: machines here differ by 2-3x from day to day, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ICM = [sys.executable, "-m", "icm"]
COCO_PIPELINE = """
_base_ = [{base!r}]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
"""


def run(out: Path, limit: int, workers: int, task: list[str]) -> dict:
    subprocess.run([*ICM, "evaluate", "--tasks", "det", *task, "--codec", "jpeg", "--rates", "1,50", "--anchors", "",
                    "--reference", "jpeg", "--limit", str(limit), "--workers", str(workers), "--out", str(out),
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    results = json.loads((out / "results.json").read_text())
    return {"stages": results["timing"]["stages"], "wall": results["timing"]["wall_seconds"],
            "mAP": results["analysis"]["det"]["uncompressed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    from icm.paths import package_file
    from icm.plugins import get_plugins

    det = get_plugins().tasks.get("det").resolve()  # the adapter class behind the lazy factory
    base = package_file(det._package(), det.default_config)
    weights = package_file(det._package(), det.default_weights)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "panoptic_fpn_coco_pipeline.py"
        cfg.write_text(COCO_PIPELINE.format(base=str(base)))
        native = run(Path(tmp) / "native", args.limit, args.workers, [])
        coco = run(Path(tmp) / "coco", args.limit, args.workers, ["--task", f"det={cfg}:{weights}"])
    print(f"{'stage':<16}{'native 128x128 s':>18}{'1333x800 s':>14}{'ratio':>8}")
    for stage in sorted(set(native["stages"]) | set(coco["stages"])):
        a, b = native["stages"].get(stage, 0.0), coco["stages"].get(stage, 0.0)
        print(f"{stage:<16}{a:>18.2f}{b:>14.2f}{(b / a if a else float('nan')):>8.1f}")
    print(f"{'wall':<16}{native['wall']:>18.1f}{coco['wall']:>14.1f}{coco['wall'] / native['wall']:>8.1f}")
    print(f"uncompressed bbox mAP: native {native['mAP']:.3f}, 1333x800 {coco['mAP']:.3f} (the model was trained at 128x128)")


if __name__ == "__main__":
    main()
