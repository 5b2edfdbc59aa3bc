"""The main job until `icm evaluate` lands: encode scikit-image's sample photographs with every
available codec through the real CLI, decode them, and print bpp (from the file bytes) and PSNR.

Usage: .venv/bin/python scripts/demo.py [--out out/demo]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from skimage import data

from icm.bitstream import Bitstream, atomic_write_bytes
from icm.codecs import open_codec
from icm.images import load_image, psnr, save_image
from icm.plugins import get_plugins

SAMPLES = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/demo")
    args = ap.parse_args()
    out = Path(args.out)
    images = out / "images"
    for name, load in SAMPLES.items():
        if not (images / f"{name}.png").exists():
            save_image(np.ascontiguousarray(load()[:256, :256]), images / f"{name}.png")
    paths = sorted(images.glob("*.png"))

    rows = []
    for name in get_plugins().codecs.names():
        codec = open_codec(name)
        if codec.kind == "learned":  # no shipped weights yet; see docs/codecs.md
            print(f"skip {name}: learned codec without local weights (pass --checkpoint to icm encode)")
            continue
        if codec.unavailable_reason():
            print(f"skip {name}: {codec.unavailable_reason()}")
            continue
        rc = codec.rate_control
        q = rc.default_points[len(rc.default_points) // 2]
        bits = out / "bitstreams" / name
        cmd = [sys.executable, "-m", "icm", "encode", *map(str, paths), "--codec", name, "--quality", str(q), "-o", str(bits)]
        subprocess.run(cmd, check=True, capture_output=True)
        for p in paths:
            icm_file = bits / f"{p.stem}.icm"
            decoded = out / "decoded" / name / f"{p.stem}.png"
            subprocess.run([sys.executable, "-m", "icm", "decode", str(icm_file), "-o", str(decoded)], check=True, capture_output=True)
            bs = Bitstream.load(icm_file)
            rows.append({"codec": name, rc.param: q, "image": p.stem,
                         "bpp": icm_file.stat().st_size * 8 / bs.pixels,
                         "psnr": round(psnr(load_image(p), load_image(decoded)), 3)})
        mean = [r for r in rows if r["codec"] == name]
        print(f"{name:10s} {rc.param}={q:<4} bpp={np.mean([r['bpp'] for r in mean]):.3f}  "
              f"PSNR={np.mean([r['psnr'] for r in mean]):.2f} dB  ({len(mean)} images)")
    atomic_write_bytes(out / "demo.json", json.dumps(rows, indent=1).encode())
    print(f"wrote {out / 'demo.json'}, bitstreams in {out / 'bitstreams'}, decoded images in {out / 'decoded'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
