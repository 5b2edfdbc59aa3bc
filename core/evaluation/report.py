"""Plots (matplotlib, PNG + SVG) and one self-contained report.html (everything inlined)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from icm.bitstream import atomic_write_bytes


def _fig_bytes(fig, fmt):
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=110)
    return buf.getvalue()


def _plot_key(name: str, curve_analysis: dict) -> str:
    """A figure is a function of its task's analysis, this module's code and matplotlib's version."""
    import hashlib
    import json

    import matplotlib

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{name}\n{matplotlib.__version__}\n".encode())
    h.update(json.dumps(curve_analysis, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def plot_curves(analysis: dict, out: Path, cache: Path | None = None) -> dict[str, Path]:
    """One rate-accuracy figure per task and a PSNR-rate figure; returns name -> PNG path. With
    ``cache`` (``OUT/cache/plots``), a figure whose inputs are unchanged is copied, not drawn again
    (matplotlib takes about half a second per figure and format)."""
    written = {}
    for task, a in analysis.items():
        name = "psnr" if task == "_psnr" else task
        key = _plot_key(name, a) if cache else None
        try:
            files = {fmt: (cache / f"{key}.{fmt}").read_bytes() for fmt in ("png", "svg")} if cache else None
        except OSError:
            files = None
        if files is None:
            files = _draw(name, a)
            for fmt, data in files.items():
                if cache:
                    atomic_write_bytes(cache / f"{key}.{fmt}", data)
        for fmt, data in files.items():
            atomic_write_bytes(out / "plots" / f"{name}.{fmt}", data)
        written[name] = out / "plots" / f"{name}.png"
    return written


def _draw(name: str, a: dict) -> dict[str, bytes]:
    from icm.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (codec, c) in enumerate(sorted(a["curves"].items())):
        if not c["points"]:
            continue
        colour = f"C{i % 10}"
        bpp, metric = zip(*[(b, m) for b, m, _ in c["points"]])
        ax.scatter(bpp, metric, s=10, alpha=0.35, color=colour)
        if c["front"]:
            fb, fm = zip(*c["front"])
            style = "--" if codec == a["reference"] else "-"
            ax.plot(fb, fm, style, marker="o", ms=4, color=colour, label=codec + (" (reference)" if codec == a["reference"] else ""))
    if a.get("uncompressed") is not None:
        ax.axhline(a["uncompressed"], color="grey", lw=1, ls=":", label="uncompressed")
    _log_rate_axis(ax)
    ax.set_xlabel("bits per pixel (real file bytes)")
    ax.set_ylabel(a["primary"])
    ax.set_title(f"{name}: {a['primary']} vs rate (lines: Pareto fronts)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # a task with no computable point has no curve to name
        ax.legend(fontsize=8)
    files = {fmt: _fig_bytes(fig, fmt) for fmt in ("png", "svg")}
    plt.close(fig)
    return files


def _log_rate_axis(ax) -> None:
    """Log bpp axis labelled with plain numbers at 1, 2 and 5 per decade. Matplotlib's default labels
    the minor ticks too when the data span less than a decade, and they collide ("3×10⁻¹4×10⁻¹")."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def bd_matrix_html(analysis: dict) -> str:
    """The report's first table: codecs by tasks, BD-rate against the reference, coloured (green saves
    bits, red costs bits; the stronger the colour, the larger the figure), the uncompressed accuracy
    per task on top."""
    tasks = [t for t in analysis if t != "_psnr"] + (["_psnr"] if "_psnr" in analysis else [])
    if not tasks:
        return ""
    codecs = sorted({c for t in tasks for c in analysis[t]["curves"]})
    reference = analysis[tasks[0]]["reference"]
    head = "".join(f"<th>{html.escape('PSNR' if t == '_psnr' else t)}<br><small>{html.escape(analysis[t]['primary'])}"
                   f"</small></th>" for t in tasks)
    ceiling = "".join(f"<td>{_fmt(analysis[t].get('uncompressed'))}</td>" for t in tasks)
    rows = [f"<table class='matrix'><tr><th>BD-rate % vs {html.escape(reference)}</th>{head}</tr>",
            f"<tr><td><i>uncompressed</i></td>{ceiling}</tr>"]
    for codec in codecs:
        cells = []
        for t in tasks:
            if codec == reference:
                cells.append("<td class='ref'>ref</td>")
                continue
            rate = analysis[t]["bd"].get(codec, {}).get("bd_rate")
            cells.append(f"<td style='background:{_bd_colour(rate)}'>{_fmt(rate, 1)}</td>")
        rows.append(f"<tr><td>{html.escape(codec)}</td>{''.join(cells)}</tr>")
    return "".join(rows) + "</table>"


def _bd_colour(rate) -> str:
    if rate is None:
        return "#f3f3f3"
    strength = min(abs(rate), 60.0) / 60.0  # saturates at ±60 %
    light = round(96 - 40 * strength)
    return f"hsl({130 if rate < 0 else 0},60%,{light}%)"


def _img_tag(png: bytes, alt: str, width=None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def write_report(out: Path, analysis: dict, rows: list[dict], results: dict, samples: list[tuple[str, str, bytes]],
                 cache: Path | None = None) -> Path:
    plots = plot_curves(analysis, out, cache)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>icm evaluate report</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}.neg{color:#0a7d20;font-weight:bold}.pos{color:#b00}"
             ".grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;font-size:11px;text-align:center}"
             ".matrix td{text-align:center;min-width:5em}.matrix td.ref{color:#777}",
             "</style></head><body><h1>icm evaluate</h1>"]
    c = results["counters"]
    parts.append(f"<p>{len({r['image_id'] for r in results['records']})} images; {c['encodes']} encodes "
                 f"({c['bitstream_cache_hits']} bitstreams reused from cache), {c['decodes']} decodes, "
                 f"{c['predictions']} task predictions ({c['prediction_cache_hits']} from cache); "
                 f"world size {results['world_size']}.</p>")
    parts.append(bd_matrix_html(analysis))
    for task, a in analysis.items():
        name = "PSNR" if task == "_psnr" else task
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if name in plots or task in plots:
            parts.append(_img_tag(plots["psnr" if task == "_psnr" else task].read_bytes(), f"{name} rate curve"))
        parts.append(f"<p>Reference anchor: <b>{html.escape(a['reference'])}</b>; uncompressed {a['primary']}: {_fmt(a['uncompressed'])}</p>")
        parts.append(f"<table><tr><th>codec</th><th>BD-rate %</th><th>{html.escape(next(iter(a['bd'].values()), {}).get('bd_metric_name', 'BD-metric'))}</th><th>{html.escape(a['primary'])} at each rate (bpp: value)</th></tr>")
        for codec, curve in sorted(a["curves"].items()):
            bd = a["bd"].get(codec, {})
            rate = bd.get("bd_rate")
            cls = "" if rate is None else (" class='neg'" if rate < 0 else " class='pos'")
            pts = ", ".join(f"{b:.3f}: {m:.3f}" for b, m, _ in sorted(curve["points"]))
            parts.append(f"<tr><td>{html.escape(codec)}</td><td{cls}>{_fmt(rate, 1)}</td><td>{_fmt(bd.get('bd_metric'), 4)}</td>"
                         f"<td style='text-align:left;font-size:12px'>{pts}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Rate points</h2><table><tr><th>codec</th><th>rate</th><th>bpp</th><th>est. bpp</th><th>gap</th>"
                 "<th>PSNR</th><th>MS-SSIM</th><th>enc ms</th><th>dec ms</th></tr>")
    for r in sorted(rows, key=lambda r: (r["codec"], r["bpp"] or 0)):
        parts.append("<tr>" + "".join(f"<td>{_fmt(r[k], 4 if k in ('bpp', 'est_bpp', 'est_gap_bpp', 'ms_ssim') else 2)}</td>"
                                      for k in ("codec", "rate_key", "bpp", "est_bpp", "est_gap_bpp", "psnr", "ms_ssim", "encode_ms", "decode_ms")) + "</tr>")
    parts.append("</table>")
    if samples:
        parts.append("<h2>Decoded samples</h2><div class='grid'>")
        for label, caption, png in samples:
            parts.append(f"<figure>{_img_tag(png, label, 160)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    prov = results.get("provenance", {})
    parts.append("<h2>Provenance</h2><pre>" + html.escape(_pretty(prov)) + "</pre></body></html>")
    path = out / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def _pretty(obj) -> str:
    import json

    return json.dumps(obj, indent=1, default=str)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
