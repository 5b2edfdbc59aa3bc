"""Codec speed benchmark: encode/decode wall time, bpp and PSNR of every registered codec on the same images.

    python benchmarks/codec_speed.py                          # every available codec, 256x256, 3 repeats
    python benchmarks/codec_speed.py --weights random         # learned codecs with untrained (seeded) weights
    python benchmarks/codec_speed.py --codecs jpeg,hevc,mbt2018 --checkpoint ~/zoo --json speed.json

Images are scikit-image's natural test images (astronaut, coffee, chelsea, rocket), centre-cropped to
the target aspect ratio and resized (bicubic) to ``--size``. Each codec is opened with
``icm.codecs.open_codec`` and run through its public ``encode``/``decode``, so the timings include
the container and, for anchors on ffmpeg, the process start-up; bpp counts the real container bytes.

Per codec and rate point: one untimed warm-up encode+decode (the first call loads models), then for
each image ``--repeat`` timed encodes and decodes (``time.perf_counter``), the median per image, and
the mean of those medians over the images. bpp and PSNR are means over the images.

The ``x jpeg`` column is the ratio of a row's encode time to JPEG's, measured in this same run, at the
JPEG point whose bpp is nearest (in log scale) to the row's; speed claims should be such ratios, not
absolute milliseconds from different machines or loads.

Learned codecs need weights: ``--checkpoint FILE_OR_FOLDER`` is passed through, ``--weights random``
uses seeded untrained weights (rows are marked "random weights": their bpp/PSNR mean nothing, only
their timings do). A learned codec whose weights cannot be found (e.g. offline with an empty torch hub
cache) is skipped with a one-line note, as is a codec that is unavailable on this machine.

Exit status: 0, or 1 when a codec failed with an unexpected error (it is skipped and reported), or 2
for bad arguments.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

# compressai scripts a few modules with torch.jit at import time; the deprecation warning is noise here.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

IMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket")
POINT_FRACTIONS = {"low": 1 / 6, "mid": 1 / 2, "high": 5 / 6}  # positions in the quality-ordered default sweep


# -- arguments -----------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '320x240' -> (320, 240) as (width, height)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or WxH") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"size {text!r} must be N or WxH with sides >= 16")
    return parts[0], parts[1]


def parse_points(text: str) -> list[str]:
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not items:
        raise argparse.ArgumentTypeError("no rate points given")
    for item in items:
        if item not in POINT_FRACTIONS and item != "all":
            try:
                float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"rate point {item!r} is not low, mid, high, all or a number") from None
    return items


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Encode/decode wall time, bpp and PSNR of icm codecs on scikit-image's natural images.")
    p.add_argument("--codecs", default="", help="comma-separated codec names (default: every registered codec)")
    p.add_argument("--size", type=parse_size, default="256", metavar="N|WxH",
                   help="image size after centre crop + resize (default: 256)")
    p.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                   help="timed runs per image; the median is kept (default: 3)")
    p.add_argument("--anchor-points", type=parse_points, default="low,mid,high", metavar="LIST",
                   help="anchor rate points: low/mid/high (positions in the codec's default sweep), all, "
                        "or values (default: low,mid,high)")
    p.add_argument("--learned-points", type=parse_points, default="low,high", metavar="LIST",
                   help="learned-codec qualities: low/mid/high, all, or quality values (default: low,high)")
    p.add_argument("--checkpoint", default=None, metavar="FILE_OR_DIR",
                   help="passed to learned codecs (a folder of zoo-named files, or one file for one quality)")
    p.add_argument("--weights", choices=("pretrained", "random"), default=None,
                   help="passed to learned codecs; 'random' = untrained seeded weights (rows are marked)")
    p.add_argument("--device", default=None, help="passed to learned codecs (default: the codec's own choice)")
    p.add_argument("--threads", type=positive_int, default=None,
                   metavar="N", help="torch intra-op threads (default: leave torch's default)")
    p.add_argument("--download-timeout", type=float, default=20.0, metavar="S",
                   help="socket timeout in seconds for weight downloads, so an offline run cannot hang (default: 20)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON (atomically)")
    return p


# -- images --------------------------------------------------------------------------------------------
def load_images(size: tuple[int, int]) -> dict[str, np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        sys.exit("codec_speed: needs scikit-image (pip install scikit-image, or pip install -e .[test])")
    from icm.images import resize

    width, height = size
    out = {}
    for name in IMAGE_NAMES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = np.ascontiguousarray(img[..., :3].astype(np.uint8))
        # centre crop to the target aspect ratio, then resize
        h, w = img.shape[:2]
        if w * height > h * width:  # too wide
            cw = max(1, round(h * width / height))
            x0 = (w - cw) // 2
            img = img[:, x0:x0 + cw]
        else:
            ch = max(1, round(w * height / width))
            y0 = (h - ch) // 2
            img = img[y0:y0 + ch]
        out[name] = np.array(resize(np.ascontiguousarray(img), width, height), dtype=np.uint8, copy=True)  # writable
    return out


# -- rate points ---------------------------------------------------------------------------------------
def select_rates(codec, points: list[str]) -> list[tuple[str, dict]]:
    """(label, keyword arguments for ``codec.encode``) per requested point, from the codec's default sweep.

    ``encode`` takes the rate index as ``quality=`` whatever the codec calls it (qp, ratio, ...;
    ``check_rate`` stores it under that name), or ``rate=`` for a continuous rate; labels use the
    codec's own name for it.
    """
    defaults = codec.default_rates()  # icm's own codecs learn their sweep from their weights here
    rc = codec.rate_control  # ... and only then hold it in rate_control
    continuous = rc.continuous and not rc.values
    key = "rate" if continuous else rc.param
    arg = "rate" if continuous else "quality"
    sweep = list(dict.fromkeys(d[key] for d in defaults if key in d))
    if key != "rate":  # order from worst to best quality
        sweep.sort(reverse=not rc.higher_is_better)
    else:
        sweep.sort()
    chosen: list[tuple[str, dict]] = []
    for item in points:
        if item == "all":
            chosen += [(f"{key}={v}", {arg: v}) for v in sweep]
        elif item in POINT_FRACTIONS:
            if not sweep:
                continue
            v = sweep[int(POINT_FRACTIONS[item] * (len(sweep) - 1) + 0.5)]
            chosen.append((f"{item} {key}={v}", {arg: v}))
        else:
            v = float(item)
            v = int(v) if not continuous and v == int(v) else v
            chosen.append((f"{key}={v}", {arg: v}))
    seen, unique = set(), []
    for label, rate in chosen:  # a short sweep can map low and mid to the same value
        marker = tuple(sorted(rate.items()))
        if marker not in seen:
            seen.add(marker)
            unique.append((label, rate))
    better_up = continuous or rc.higher_is_better
    unique.sort(key=lambda item: item[1][arg] if better_up else -item[1][arg])
    return unique  # worst to best quality


# -- codecs --------------------------------------------------------------------------------------------
def accepted_options(name: str, options: dict) -> dict:
    """The pass-through options this codec's factory takes (anchors take none of them)."""
    from icm.plugins import get_plugins

    factory = get_plugins().codecs.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in options.items() if v is not None and (takes_all or k in params)}


@dataclass
class Row:
    codec: str
    kind: str
    rate_label: str
    rate: dict
    bpp: float
    psnr: float | None
    encode_ms: float
    decode_ms: float
    encode_ms_per_mp: float
    decode_ms_per_mp: float
    weights: str = ""  # "random" for untrained weights, else empty
    x_jpeg: float | None = None
    jpeg_ref: str | None = None
    split_shape: list | None = None  # feature codecs: the split tensor's (C, h, w) and values per pixel
    split_values_per_pixel: float | None = None
    per_image: dict = field(default_factory=dict)


def time_call(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), result


def measure(codec, rate: dict, images: dict[str, np.ndarray], repeat: int) -> dict:
    from icm.images import psnr

    first = next(iter(images.values()))
    features = getattr(codec, "kind", "") == "features"
    # a feature codec's decode is the tensor (what tasks read); its picture, if it has one, comes after
    decode = codec.decode_features if features else codec.decode
    decode(codec.encode(first, **rate))  # warm-up: model loading, ffmpeg probing, caches
    enc, dec, bpps, psnrs, per_image = [], [], [], [], {}
    for name, img in images.items():
        e_ms, data = time_call(lambda: codec.encode(img, **rate), repeat)
        d_ms, out = time_call(lambda: decode(data), repeat)
        pixels = img.shape[0] * img.shape[1]
        bpp = len(data) * 8 / pixels
        extra = {}
        if features:
            extra["split_shape"] = list(out.shape[1:])
            extra["split_values_per_pixel"] = out.numel() / pixels
            out = codec.features_to_image(out, img.shape[1], img.shape[0]) if codec.has_image_decoder else None
        q = psnr(img, out) if out is not None else float("nan")
        enc.append(e_ms)
        dec.append(d_ms)
        bpps.append(bpp)
        psnrs.append(q)
        per_image[name] = {"bytes": len(data), "bpp": bpp, "psnr": q if math.isfinite(q) else None,
                           "encode_ms": e_ms, "decode_ms": d_ms, **extra}
    mp = first.shape[0] * first.shape[1] / 1e6
    finite = [q for q in psnrs if math.isfinite(q)]
    split = {k: per_image[next(iter(per_image))][k] for k in ("split_shape", "split_values_per_pixel") if features}
    return {"bpp": statistics.fmean(bpps), "psnr": statistics.fmean(finite) if finite else None,
            "encode_ms": statistics.fmean(enc), "decode_ms": statistics.fmean(dec),
            "encode_ms_per_mp": statistics.fmean(enc) / mp, "decode_ms_per_mp": statistics.fmean(dec) / mp,
            **split, "per_image": per_image}


def add_jpeg_ratios(rows: list[Row]) -> bool:
    refs = [r for r in rows if r.codec == "jpeg"]
    if not refs:
        return False
    for row in rows:
        ref = min(refs, key=lambda j: abs(math.log(max(j.bpp, 1e-9)) - math.log(max(row.bpp, 1e-9))))
        row.x_jpeg = row.encode_ms / ref.encode_ms if ref.encode_ms > 0 else None
        row.jpeg_ref = ",".join(f"{k}={v}" for k, v in ref.rate.items())
    return True


# -- output --------------------------------------------------------------------------------------------
def make_console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=170)
    return console


def ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def print_table(console, rows: list[Row], have_jpeg: bool, size, repeat: int) -> None:
    from rich.table import Table

    table = Table(title=f"icm codec speed: {len(IMAGE_NAMES)} images at {size[0]}x{size[1]}, "
                        f"median of {repeat} run(s) per image, mean over images")
    for col, justify in (("codec", "left"), ("rate", "left"), ("bpp", "right"), ("PSNR dB", "right"),
                         ("enc ms", "right"), ("dec ms", "right"), ("enc ms/MP", "right"),
                         ("dec ms/MP", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    if have_jpeg:
        table.add_column("x jpeg", justify="right", no_wrap=True)
    table.add_column("note", no_wrap=True)
    previous = None
    for r in rows:
        if previous is not None and r.codec != previous:
            table.add_section()
        previous = r.codec
        random = r.weights == "random"
        psnr = ("-" if r.kind == "features" else "inf") if r.psnr is None else f"{r.psnr:.2f}"
        cells = [r.codec, r.rate_label, f"{r.bpp:.3f}", f"[dim]{psnr}[/]" if random else psnr,
                 ms(r.encode_ms), ms(r.decode_ms), f"{r.encode_ms_per_mp:.0f}", f"{r.decode_ms_per_mp:.0f}"]
        if have_jpeg:
            cells.append("-" if r.x_jpeg is None else f"{r.x_jpeg:.1f}x @q{r.jpeg_ref.split('=')[-1]}")
        split = (f"features {'x'.join(map(str, r.split_shape))} ({r.split_values_per_pixel:.2f} values/px); dec = tensor"
                 if r.split_shape else "")
        cells.append(" ".join(x for x in ("[yellow]random weights[/]" if random else "", split) if x))
        table.add_row(*cells)
    console.print(table)
    if have_jpeg:
        console.print("x jpeg: encode time / JPEG's encode time at the JPEG point of nearest bpp, same run.")
    if any(r.weights == "random" for r in rows):
        console.print("[yellow]random weights[/]: untrained learned codecs; their bpp/PSNR are meaningless and "
                      "their timings only indicative (entropy coding time grows with the bitstream size).")


def write_json(path: str, header: dict, rows: list[Row], notes: list[dict]) -> None:
    from icm.bitstream import atomic_write_bytes

    def clean(obj):  # strict JSON: no NaN/inf
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    doc = {"header": header, "rows": [asdict(r) for r in rows], "skipped": notes}
    atomic_write_bytes(path, (json.dumps(clean(doc), indent=2, allow_nan=False) + "\n").encode())


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = make_console()
    err = Console(stderr=True, highlight=False)  # progress lines, kept out of the table's stream

    import torch

    from icm.codecs import open_codec
    from icm.errors import UserError
    from icm.plugins import get_plugins

    if args.threads:
        torch.set_num_threads(args.threads)
    socket.setdefaulttimeout(args.download_timeout)  # torch.hub's urlopen has no timeout of its own

    registry = get_plugins().codecs
    if args.codecs:
        names = list(dict.fromkeys(n.strip() for n in args.codecs.split(",") if n.strip()))
        for n in names:
            try:
                registry.entry(n)
            except UserError as exc:
                print(f"codec_speed: {exc}", file=sys.stderr)
                return 2
    else:
        names = registry.names()
    if args.checkpoint and args.weights == "random":
        print("codec_speed: --weights random and --checkpoint contradict each other; give one", file=sys.stderr)
        return 2
    if args.checkpoint and os.path.isfile(args.checkpoint) and len(args.learned_points) != 1:
        print("codec_speed: --checkpoint FILE holds one quality; give that quality with --learned-points Q",
              file=sys.stderr)
        return 2

    images = load_images(args.size)
    pass_through = {"checkpoint": args.checkpoint, "weights": args.weights, "device": args.device}
    header = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_threads_source": "--threads" if args.threads else "torch default",
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
        "images": list(IMAGE_NAMES), "size": list(args.size), "repeat": args.repeat,
        "options": {k: v for k, v in pass_through.items() if v is not None},
    }
    env_threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    console.print(f"[bold]icm codec speed[/]  cpus: {header['cpu_count']} (usable {header['cpus_usable']})  "
                  f"torch threads: {header['torch_threads']} ({header['torch_threads_source']}"
                  f"{', ' + ', '.join(f'{k}={v}' for k, v in env_threads.items()) if env_threads else ''})  "
                  f"torch {header['torch']}  cuda: {header['cuda']}  python {header['python']}")
    console.print(f"images: {', '.join(IMAGE_NAMES)} at {args.size[0]}x{args.size[1]}; "
                  f"repeat {args.repeat} (median); codecs: {', '.join(names)}", soft_wrap=True)

    rows: list[Row] = []
    notes: list[dict] = []
    failed = False

    def note(codec: str, reason: str, kind: str = "skipped") -> None:
        notes.append({"codec": codec, "status": kind, "reason": reason})
        colour = "red" if kind == "failed" else "yellow"
        console.print(f"[{colour}]note:[/] {codec}: {kind}: {reason}", soft_wrap=True)  # one line

    started = time.perf_counter()
    for name in names:
        opts = accepted_options(name, pass_through)
        try:
            codec = open_codec(name, **opts)
        except UserError as exc:
            note(name, str(exc))
            continue
        reason = codec.unavailable_reason()
        if reason:
            note(name, f"unavailable ({reason})")
            continue
        kind = getattr(codec, "kind", "anchor")
        points = args.learned_points if kind in ("learned", "features") else args.anchor_points
        random_weights = kind in ("learned", "features") and opts.get("weights") == "random"
        try:
            rates = select_rates(codec, points)
        except UserError as exc:  # e.g. weights that cannot be loaded to read their sweep
            note(name, str(exc).splitlines()[0])
            continue
        except (ValueError, TypeError) as exc:
            note(name, f"cannot choose rate points ({exc})", "failed")
            failed = True
            continue
        if not rates:  # every codec asked for gets a row or a note
            note(name, f"no rate point to time: {', '.join(points)} of an empty default sweep", "failed")
            failed = True
            continue
        for label, rate in rates:
            err.print(f"[dim]{name} {label} ...[/]")
            try:
                m = measure(codec, rate, images, args.repeat)
            except UserError as exc:  # missing weights, out-of-range point, a backend that fails here
                note(name, str(exc).splitlines()[0])
                break
            except Exception as exc:  # a bug in a codec must not lose the other rows
                note(name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} at {label}", "failed")
                failed = True
                break
            rows.append(Row(codec=name, kind=kind, rate_label=label, rate=codec.check_rate(**rate),
                            weights="random" if random_weights else "", **m))

    have_jpeg = add_jpeg_ratios(rows)
    header["wall_s"] = round(time.perf_counter() - started, 2)
    console.print()
    if rows:
        print_table(console, rows, have_jpeg, args.size, args.repeat)
    else:
        console.print("no rows: every codec was skipped")
    if notes:
        console.print("skipped/failed: " + "; ".join(f"{n['codec']} ({n['status']})" for n in notes), soft_wrap=True)
    console.print(f"benchmark wall time {header['wall_s']:.1f} s")
    if args.json:
        write_json(args.json, header, rows, notes)
        console.print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
