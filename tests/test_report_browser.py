"""report.html opened in a real headless browser (Debian's chromium): it renders, with every image
inline, so nothing can go missing when the file is mailed or archived."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from icm.evaluation.config import CodecSpec, Experiment, TaskSpec
from icm.evaluation.run import evaluate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it as root)")
def test_report_renders_in_headless_chromium(toy, tiny_shapes, tmp_path):
    out = tmp_path / "run"
    evaluate(Experiment(tasks=[TaskSpec("colour")], dataset=str(tiny_shapes), out=str(out), samples_in_report=1,
                        codecs=[CodecSpec("jpeg", rates=[{"quality": 20}, {"quality": 80}], anchor=True),
                                CodecSpec("hevc", rates=[{"qp": 40}, {"qp": 28}], anchor=True)]), progress=False)
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", "--hide-scrollbars",
           f"--screenshot={shot}", (out / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    dom = subprocess.run([*cmd[:-2], "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "icm evaluate" in dom and dom.count("<img") >= 3  # plots + decoded samples parsed
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # a rendered plot and sample images: many distinct colours, not a blank or error page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    shutil.copy(shot, out / "report_screenshot.png")
