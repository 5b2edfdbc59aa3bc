"""The recipe gives what the link-numbered chain it replaced gave, bit for bit.

    .venv/bin/python scripts/recipe_equivalence.py [--rev f1569a8^] [--steps 60] [--stages context,aux]

For each named stage of configs/train/icm_omni.toml, the file it replaced (read from git at REV) and the
stage are both trained from the same init for STEPS steps in this process, each into its own folder,
and their final weights compared tensor by tensor. The configs are first compared key by key (all but
the out/export/init paths). The context stage's init (low_gain_2's weights) is not shipped: it is made
from the shipped icm-omni by dropping its context model, which is what the context stage trains alone.
Prints one line per stage and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OLD_FILES = {"context": "icm_omni_16_context.toml", "aux": "icm_omni_aux.toml",
             "low_gain_2": "icm_omni_15_gains.toml", "mse": "icm_omni_mse.toml"}


def old_config(rev: str, name: str, tmp: Path):
    from icm.training.config import load_config

    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:configs/train/{name}"], check=True,
                          capture_output=True, text=True).stdout
    path = tmp / name
    path.write_text(text)
    return load_config(path)


def comparable(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    for key in ("out", "export", "init"):
        d.pop(key)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="f1569a8^", help="a commit that still has the link-numbered files")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--stages", default="context,aux")
    args = ap.parse_args()
    from icm.training.config import load_stages
    from icm.training.loop import train

    torch.set_num_threads(1)
    stages = dict(load_stages(REPO / "configs" / "train" / "icm_omni.toml"))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init = tmp / "init.pth"
        shipped = torch.load(REPO / "configs" / "codecs" / "icm-omni" / "model.pth", weights_only=True)
        torch.save({k: v for k, v in shipped.items() if not k.startswith("context.")}, init)
        for name in args.stages.split(","):
            new, old = stages[name], old_config(args.rev, OLD_FILES[name], tmp)
            same_keys = comparable(new) == comparable(old)
            weights = {}
            for label, cfg in (("recipe", new), ("old file", old)):
                cfg = dataclasses.replace(cfg, out=str(tmp / name / label.replace(" ", "_")), export=None,
                                          stop_after=args.steps, reevaluate=False, val_limit=2)
                if name == "context":
                    cfg.init = str(init)
                train(cfg, progress=False)
                weights[label] = torch.load(Path(cfg.out) / "model.pth", weights_only=True)
            a, b = weights["recipe"], weights["old file"]
            equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            failed |= not (equal and same_keys)
            print(f"{name}: config {'equal' if same_keys else 'DIFFERS'} key for key; after {args.steps} steps "
                  f"{len(a)} tensors {'bit-identical' if equal else 'DIFFER'} (recipe stage vs {OLD_FILES[name]} at {args.rev})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
