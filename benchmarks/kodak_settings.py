"""What icm's anchor settings cost on Kodak against the settings of CompressAI's published points:
WebP at method 6 (icm) against Pillow's default method 4 (CompressAI); HEVC (x265 medium, icm's QPs
and colour conversion) in 4:2:0 (icm) against 4:4:4 (CompressAI's BPG, HM and VTM runs), with x265's
default psycho-visual tuning (icm) against ``--tune psnr``, and at preset medium (icm) against
veryslow. Each pair is coded here in one run, bpp from the raw payload (no container) and PSNR on
RGB, per image then the mean; BD-rate of icm's setting against the other with icm's bd_rate.

    ICM_DATA=../shared/data nice -n 10 .venv/bin/python benchmarks/kodak_settings.py
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from icm.analysis import bd_metric, bd_rate
from icm.codecs.anchors import _RGB2YUV, _YUV2RGB, _run, ffmpeg_exe, rgb_to_yuv420, yuv420_to_rgb
from icm.datasets import load_dataset
from icm.images import load_image, psnr


def webp(image, quality, method):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", quality=quality, method=method)
    return len(buf.getvalue()), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def x265(image, qp, chroma="420", tune=None, preset="medium"):
    """x265 as icm's hevc anchor runs it (medium preset, fixed QP, icm's BT.601 full-range matrix), fed
    4:2:0 (icm's own conversion, as the anchor) or 4:4:4 (no subsampling); or another --tune or --preset."""
    h, w = image.shape[:2]
    if chroma == "420":
        raw, pix = rgb_to_yuv420(image), "yuv420p"
    else:
        yuv = np.clip(np.rint(image.astype(np.float64) @ _RGB2YUV.T + [0, 128, 128]), 0, 255).astype(np.uint8)
        raw, pix = b"".join(yuv[..., c].tobytes() for c in range(3)), "yuv444p"
    common = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error"]
    stream = _run([*common, "-f", "rawvideo", "-pix_fmt", pix, "-s", f"{w}x{h}", "-i", "pipe:0", "-frames:v", "1",
                   "-c:v", "libx265", "-preset", preset, *(["-tune", tune] if tune else []),
                   "-x265-params", f"qp={qp}:keyint=1:info=0:log-level=error", "-f", "hevc", "pipe:1"], raw)
    out = _run([*common, "-f", "hevc", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", pix, "pipe:1"], stream)
    if chroma == "420":
        return len(stream), yuv420_to_rgb(out, w, h)
    planes = np.frombuffer(out, np.uint8).astype(np.float64).reshape(3, h, w).transpose(1, 2, 0)
    return len(stream), np.clip(np.rint((planes - [0, 128, 128]) @ _YUV2RGB.T), 0, 255).astype(np.uint8)


def curve(images, code, rates):
    points = []
    for rate in rates:
        coded = [code(img, rate) for img in images]
        points.append((float(np.mean([n * 8 / (img.shape[0] * img.shape[1]) for (n, _), img in zip(coded, images)])),
                       float(np.mean([psnr(img, dec) for (_, dec), img in zip(coded, images)]))))
    return sorted(points)


def report(name, ours, theirs):
    print(f"{name}")
    print(f"  icm's setting:   {', '.join(f'{b:.3f}:{p:.2f}' for b, p in ours)}")
    print(f"  field's setting: {', '.join(f'{b:.3f}:{p:.2f}' for b, p in theirs)}")
    print(f"  BD-rate icm's vs field's {bd_rate(theirs, ours):+.1f} %, BD-PSNR {bd_metric(theirs, ours):+.2f} dB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=24)
    args = ap.parse_args()
    images = [load_image(r["file_name"]) for r in load_dataset("kodak").images[: args.limit]]
    qualities, qps = (5, 15, 30, 50, 70, 90), (22, 27, 32, 37, 42, 47)  # icm's default sweeps
    report("WebP: method 6 (icm) vs method 4 (Pillow's default, CompressAI)",
           curve(images, lambda i, q: webp(i, q, 6), qualities), curve(images, lambda i, q: webp(i, q, 4), qualities))
    icm_hevc = curve(images, x265, qps)
    report("HEVC x265 medium: 4:2:0 (icm) vs 4:4:4 (CompressAI's BPG/HM/VTM runs)",
           icm_hevc, curve(images, lambda i, q: x265(i, q, "444"), qps))
    report("HEVC x265 medium 4:2:0: x265's default psycho-visual tuning (icm) vs --tune psnr",
           icm_hevc, curve(images, lambda i, q: x265(i, q, tune="psnr"), qps))
    report("HEVC x265 4:2:0: preset medium (icm) vs veryslow (closer to HM's exhaustive search)",
           icm_hevc, curve(images, lambda i, q: x265(i, q, preset="veryslow"), qps))


if __name__ == "__main__":
    main()
