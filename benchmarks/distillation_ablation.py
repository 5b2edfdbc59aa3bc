"""Plain vs GT-box-weighted vs objectness-weighted feature distillation (paper 003), as delta mAP at
matched rate, trained by `icm train` with its loss terms.

Each variant fine-tunes the same starting codec (icm-omni-mse, the rate+MSE stage) for the same
number of steps with det feature distillation only: the distill stage of configs/train/icm_omni.toml
(relative distillation, nearest-resized weights, rate + a quarter of λ(α)·255²·MSE) with the det term
swapped and seg/pose dropped. The variants differ only in how locations are weighted:

    plain        "distill:det"            = { relative = true }
    gtbox        "gtbox_distill:det"      = { relative = true, resize = "nearest", normalise = true, floor = 0.1 }
    objectness   "objectness_distill:det" = { relative = true, resize = "nearest" }

Then `icm evaluate` measures det bbox mAP with real bitstreams at the same rate points, and the
deltas are BD-mAP (mAP averaged over the overlapping bpp range) against the plain variant. Each
variant's config is written to OUT/MODE/train.toml and run with `icm train`.

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

TERMS = {
    "plain": '"distill:det" = { weight = 1.0, relative = true }',
    "gtbox": '"gtbox_distill:det" = { weight = 1.0, relative = true, resize = "nearest", normalise = true, floor = 0.1 }',
    "objectness": '"objectness_distill:det" = { weight = 1.0, relative = true, resize = "nearest" }',
}

CONFIG = """# written by benchmarks/distillation_ablation.py: variant {mode}
dataset = "shapes"
tasks = ["det"]
init = "{init}"
seed = 0
epochs = 1
steps_per_epoch = {steps}
batch_size = 8
lr = 2e-4
lr_schedule = "cosine"
clip_grad = 1.0
clamp_for_tasks = true
val_limit = 20
reevaluate = false
out = "{out}"

[codec]
name = "icm-omni"
rates = [0.0, 1.0]
rate_sampling = "uniform"
per_sample_rates = true
rate_lambdas = [0.0009, 0.026]
lambda_on = "distortion"
val_rates = [0.5]

[losses]
rate = 1.0
mse = 16256.25   # 0.25 × 255²
{term}
"""


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
    for mode, term in TERMS.items():
        run = out / mode
        model = run / "model.pth"
        if not model.is_file():
            run.mkdir(parents=True, exist_ok=True)
            config = run / "train.toml"
            config.write_text(CONFIG.format(mode=mode, init=init.as_posix(), steps=args.steps, out=run.as_posix(), term=term))
            subprocess.run([sys.executable, "-m", "icm", "train", str(config), "--no-progress"], check=True, env=env)
        ev = run / "eval"
        subprocess.run([sys.executable, "-m", "icm", "evaluate", "--tasks", "det", "--codec", "icm-omni",
                        "--checkpoint", str(model), "--anchors", "hevc", "--limit", str(args.limit),
                        "--out", str(ev), "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
        res = json.loads((ev / "results.json").read_text())
        fronts[mode] = res["analysis"]["det"]["curves"]["icm-omni"]["front"]
        print(f"{mode:11s} det front (bpp, mAP): " + ", ".join(f"({b:.3f}, {m:.3f})" for b, m in fronts[mode]))
    print("\nagainst plain distillation, same steps, same start, real bitstreams:")
    for mode in list(TERMS)[1:]:
        d = bd_metric(fronts["plain"], fronts[mode])
        r = bd_rate(fronts["plain"], fronts[mode])
        print(f"  {mode:11s} delta mAP at matched rate (BD-mAP): {d * 100:+.2f} points   BD-rate: "
              f"{'n/a' if r is None else f'{r:+.1f} %'}")


if __name__ == "__main__":
    main()
