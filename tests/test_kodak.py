"""Issue 31: the registered ``kodak`` dataset (fetched, every image checked by its decoded pixels,
read from a local copy through ICM_DATA exactly as CI reads ../shared/data/kodak, one-line refusals)
and ``icm evaluate --tasks none`` for codec-only studies."""

import functools
import http.server
import json
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_user_error, run_icm
from icm.datasets import kodak, load_dataset
from icm.errors import UserError
from icm.evaluation.cache import image_key
from icm.images import load_image, psnr

SHARED = (REPO.parent / "shared" / "data").resolve()  # holds kodak/: ICM_DATA points here
OFFLINE = "http://127.0.0.1:1/{name}"  # nothing listens on port 1: a download fails at once
pytestmark = pytest.mark.skipif(not (SHARED / "kodak").is_dir(), reason=f"no local Kodak copy in {SHARED}/kodak")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A copy of the 24 PNGs served over HTTP on localhost: icm's download path, without internet."""
    root = tmp_path / "served"
    shutil.copytree(SHARED / "kodak", root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
    server.shutdown()
    server.server_close()


def _local_copy(folder):
    """ICM_DATA-style folder whose kodak/ links to the shared images (so single files can be replaced)."""
    (folder / "kodak").mkdir(parents=True)
    for name in kodak.IMAGES:
        os.symlink(SHARED / "kodak" / name, folder / "kodak" / name)
    return folder / "kodak"


def _change_one_pixel(path):
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[0, 0, 0] ^= 1
    path.unlink(missing_ok=True)
    Image.fromarray(pixels).save(path)


def test_icm_data_kodak_downloads_and_checks_every_image_and_a_rerun_downloads_none(mirror, tmp_path):
    _, url = mirror
    env = {"ICM_DATA": str(tmp_path / "data"), "ICM_KODAK_URL": url}
    proc = run_icm("data", "kodak", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "24 Kodak images, each checked (24 downloaded now)" in proc.stdout
    for name, listed in kodak.IMAGES.items():
        assert kodak.pixel_digest(tmp_path / "data" / "kodak" / name) == listed
    again = run_icm("data", "kodak", env=env)
    assert again.returncode == 0 and "(0 downloaded now)" in again.stdout, again.stderr


def test_a_download_with_other_pixels_is_refused_and_never_written(mirror, tmp_path):
    served, url = mirror
    _change_one_pixel(served / "kodim05.png")
    proc = run_icm("data", "kodak", "--out", tmp_path / "k", env={"ICM_KODAK_URL": url})
    assert_user_error(proc, "kodim05.png: its pixels are not Kodak's kodim05.png")
    assert (tmp_path / "k" / "kodim04.png").is_file() and not (tmp_path / "k" / "kodim05.png").exists()


def test_offline_the_dataset_is_refused_in_one_line_that_says_how_to_use_a_local_copy(tmp_path):
    env = {"ICM_DATA": str(tmp_path), "ICM_KODAK_URL": OFFLINE}
    for args in (("data", "kodak"),
                 ("evaluate", "--dataset", "kodak", "--tasks", "none", "--codec", "jpeg", "--anchors", "",
                  "--reference", "jpeg", "--out", tmp_path / "o")):
        proc = run_icm(*args, env=env)
        assert_user_error(proc, "kodak: cannot download http://127.0.0.1:1/kodim01.png")
        assert "set ICM_DATA to a folder holding kodak/" in proc.stderr and "--dataset FOLDER" in proc.stderr
    assert not (tmp_path / "o" / "results.json").exists()


def test_the_shared_copy_loads_through_ICM_DATA_and_as_a_bare_folder(monkeypatch):
    monkeypatch.setenv("ICM_DATA", str(SHARED))
    monkeypatch.setenv("ICM_KODAK_URL", OFFLINE)  # all 24 are there: nothing may be fetched
    ds = load_dataset("kodak")
    assert ds.name == "kodak" and len(ds) == 24
    assert [(i["width"], i["height"]) for i in ds.images] == [v[:2] for v in kodak.IMAGES.values()]
    assert ds.images[3]["file_name"] == str(SHARED / "kodak" / "kodim04.png")
    with pytest.raises(UserError, match="only a 'val' split"):
        load_dataset("kodak", split="train")
    bare = load_dataset(str(SHARED / "kodak"))  # --dataset FOLDER: the images as they are, no labels
    assert [i["file_name"] for i in bare.images] == [i["file_name"] for i in ds.images]


def test_a_local_copy_is_checked_by_its_pixels_not_its_png_bytes(tmp_path, monkeypatch):
    folder = _local_copy(tmp_path)
    monkeypatch.setenv("ICM_DATA", str(tmp_path))
    monkeypatch.setenv("ICM_KODAK_URL", OFFLINE)
    resaved = folder / "kodim01.png"
    pixels = np.asarray(Image.open(resaved))
    resaved.unlink()
    Image.fromarray(pixels).save(resaved, compress_level=1, pnginfo=_text_chunk())  # other bytes, same pixels
    assert resaved.read_bytes() != (SHARED / "kodak" / "kodim01.png").read_bytes()
    assert len(load_dataset("kodak")) == 24
    _change_one_pixel(folder / "kodim02.png")
    with pytest.raises(UserError, match=r"kodim02.png: its pixels are not Kodak's kodim02.png .*icm data kodak"):
        load_dataset("kodak")
    Image.fromarray(np.asarray(Image.open(SHARED / "kodak" / "kodim03.png"))[:100]).save(folder / "kodim02.png")
    with pytest.raises(UserError, match=r"kodim02.png: 768x100 pixels, Kodak's kodim02.png has 768x512"):
        load_dataset("kodak")
    (folder / "kodim02.png").unlink()  # missing: fetched on first use, which fails offline
    with pytest.raises(UserError, match="cannot download http://127.0.0.1:1/kodim02.png"):
        load_dataset("kodak")


def _text_chunk():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "re-saved by a test")
    return info


def test_evaluate_tasks_none_on_kodak_reports_mean_bpp_and_mean_rgb_psnr_per_image(tmp_path):
    out = tmp_path / "o"
    proc = run_icm("evaluate", "--dataset", "kodak", "--tasks", "none", "--codec", "jpeg,webp", "--rates", "40",
                   "--anchors", "", "--reference", "jpeg", "--limit", "2", "--workers", "1", "--no-progress",
                   "--out", out, env={"ICM_DATA": str(SHARED), "ICM_KODAK_URL": OFFLINE})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PSNR (RGB dB, mean over images); BD vs jpeg" in " ".join(proc.stdout.split())
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == {} and results["metrics"] == {}
    rows = {r["codec"]: r for r in results["points"] if r["codec"] != "original"}
    assert set(rows) == {"jpeg", "webp"}
    originals = {image_key(img): img for img in (load_image(SHARED / "kodak" / n) for n in ("kodim01.png", "kodim02.png"))}
    from icm.codecs import open_codec

    for codec, row in rows.items():
        files = sorted((out / "cache" / "bitstreams" / codec / row["rate_key"]).glob("*.icm"))
        assert row["images"] == len(files) == 2
        bpp = [f.stat().st_size * 8 / originals[f.stem].shape[0] / originals[f.stem].shape[1] for f in files]
        rgb_psnr = [psnr(originals[f.stem], open_codec(codec).decode(f.read_bytes())) for f in files]
        assert row["bpp"] == pytest.approx(np.mean(bpp), rel=1e-12)
        assert row["psnr"] == pytest.approx(np.mean(rgb_psnr), rel=1e-12)
        assert 25 < row["psnr"] < 40 and row["ms_ssim"] > 0.9
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("codec,rate_key") and len(csv_lines) == 1 + 3  # original, jpeg, webp


def test_tasks_none_is_not_a_task_name():
    assert_user_error(run_icm("evaluate", "--tasks", "none,det", "--codec", "jpeg"), "--tasks none cannot be combined")
