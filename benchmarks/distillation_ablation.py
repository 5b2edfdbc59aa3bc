"""Plain vs GT-box-weighted vs objectness-weighted feature distillation (paper 003), as delta mAP at
matched rate.

Each variant fine-tunes the same starting codec (icm-omni-mse, the rate+MSE stage) for the same
number of steps with det feature distillation only, differing only in how locations are weighted;
then `icm evaluate` measures det bbox mAP with real bitstreams at the same rate points, and the
deltas are BD-mAP (mAP averaged over the overlapping bpp range) against the plain variant.

    .venv/bin/python benchmarks/distillation_ablation.py --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from icm.analysis import bd_metric, bd_rate
from icm.paths import configs_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "gtbox", "objectness")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="results/distillation_ablation")
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()
    out = Path(args.out)
    init = configs_dir() / "codecs" / "icm-omni-mse" / "model.pth"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    fronts = {}
    for mode in MODES:
        model = out / mode / "model.pth"
        if not model.is_file():
            subprocess.run([sys.executable, str(ROOT / "scripts" / "train_omni_codec.py"), "--init", str(init),
                            "--stage-a-steps", "0", "--stage-b-steps", str(args.steps), "--tasks", "det",
                            "--det-weighting", mode, "--out", str(out / mode)], check=True, env=env)
        ev = out / mode / "eval"
        subprocess.run([sys.executable, "-m", "icm", "evaluate", "--tasks", "det", "--codec", "icm-omni",
                        "--checkpoint", str(model), "--anchors", "hevc", "--limit", str(args.limit),
                        "--out", str(ev), "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
        res = json.loads((ev / "results.json").read_text())
        fronts[mode] = res["analysis"]["det"]["curves"]["icm-omni"]["front"]
        print(f"{mode:11s} det front (bpp, mAP): " + ", ".join(f"({b:.3f}, {m:.3f})" for b, m in fronts[mode]))
    print("\nagainst plain distillation, same steps, same start, real bitstreams:")
    for mode in MODES[1:]:
        d = bd_metric(fronts["plain"], fronts[mode])
        r = bd_rate(fronts["plain"], fronts[mode])
        print(f"  {mode:11s} delta mAP at matched rate (BD-mAP): {d * 100:+.2f} points   BD-rate: "
              f"{'n/a' if r is None else f'{r:+.1f} %'}")


if __name__ == "__main__":
    main()
