"""The report's first table and its rate axis."""

from icm.evaluation.report import _log_rate_axis, bd_matrix_html


def _analysis():
    def task(primary, uncompressed, bd):
        return {"primary": primary, "uncompressed": uncompressed, "reference": "hevc",
                "curves": {c: {"points": [], "front": []} for c in ("hevc", "icm-omni", "jpeg")},
                "bd": {c: {"bd_rate": r} for c, r in bd.items()}}
    return {"det": task("bbox_mAP", 0.682, {"icm-omni": -34.4, "jpeg": 276.0}),
            "seg": task("mIoU", 0.823, {"icm-omni": -32.4, "jpeg": None}),
            "_psnr": task("PSNR", None, {"icm-omni": 183.8, "jpeg": 187.0})}


def test_bd_matrix_has_codecs_by_tasks_coloured_with_the_ceiling_on_top():
    html = bd_matrix_html(_analysis())
    assert html.startswith("<table class='matrix'>") and "BD-rate % vs hevc" in html
    head = html[:html.index("</tr>")]
    assert head.index(">det<") < head.index(">seg<") < head.index(">PSNR<")  # tasks, then PSNR last
    assert "<td>0.682</td><td>0.823</td><td>–</td>" in html  # uncompressed accuracy per task
    omni = html[html.index("<td>icm-omni</td>"):].split("</tr>")[0]
    assert "-34.4" in omni and "hsl(130" in omni and "hsl(0" in omni  # green saves bits, red costs bits
    assert html[html.index("<td>hevc</td>"):].split("</tr>")[0].count(">ref<") == 3  # the reference itself
    assert "#f3f3f3'>–" in html  # a missing figure is grey, not a colour


def test_log_rate_axis_labels_do_not_collide_within_one_decade():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0.3, 0.45, 0.9], [0.1, 0.5, 0.6])
    _log_rate_axis(ax)
    fig.canvas.draw()
    major = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert minor == [] and "0.5" in major and all("10^" not in m and "times" not in m for m in major), major


def test_plots_render_headless_without_font_fallback_warnings(tmp_path, caplog):
    """A log-scale axis renders mathtext ticks; icm's figures must not log findfont fallbacks."""
    import logging

    from icm.plotting import pyplot

    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
    fig, ax = plt.subplots()
    ax.plot([0.1, 1, 10], [1, 2, 3])
    ax.set_xscale("log")
    ax.set_title(r"$\mathcal{R}$ and $\mathtt{bpp}$")  # fonts a foreign font cache may lack
    with caplog.at_level(logging.WARNING):
        fig.savefig(tmp_path / "p.png")
    plt.close(fig)
    assert (tmp_path / "p.png").stat().st_size > 0
    assert not [r for r in caplog.records if r.name.startswith("matplotlib.font_manager")]
