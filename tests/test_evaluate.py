import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import toy_task
from conftest import REPO, assert_user_error, run_icm
from icm.evaluation.config import CodecSpec, Experiment, TaskSpec
from icm.evaluation.run import evaluate

JPEG_RATES = [{"quality": q} for q in (10, 30, 60, 90)]
HEVC_RATES = [{"quality": q} for q in (47, 40, 33, 26)]


def experiment(tiny_shapes, out, tasks=("colour",), **kw):
    return Experiment(tasks=[TaskSpec(t) for t in tasks], dataset=str(tiny_shapes), out=str(out),
                      codecs=[CodecSpec("jpeg", rates=JPEG_RATES, anchor=True), CodecSpec("hevc", rates=HEVC_RATES, anchor=True)],
                      **kw)


def test_encode_once_for_all_tasks_and_reuse_on_a_new_task(toy, tiny_shapes, tmp_path):
    summary = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour", "brightness")), progress=False)
    c = summary["counters"]
    # 8 rate points x 6 images, each encoded and decoded exactly once although two tasks read them
    assert (c["encodes"], c["decodes"], c["bitstream_cache_hits"]) == (48, 48, 0)
    assert c["predictions"] == 2 * (48 + 6)  # + the uncompressed reference, per task

    again = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour", "brightness")), progress=False)
    assert again["counters"]["encodes"] == 0 and again["counters"]["predictions"] == 0

    # an interrupted run: lose part of the cache, only that part is redone
    shutil.rmtree(tmp_path / "cache" / "bitstreams" / "hevc" / "qp=40")
    resumed = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour",)), progress=False)
    assert resumed["counters"]["encodes"] == 6

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["schema"] == "icm.results/1" and set(results["tasks"]) == {"colour"}
    a = results["analysis"]["colour"]
    assert a["reference"] == "hevc" and a["bd"]["jpeg"]["bd_rate"] is not None
    # bpp from real bytes on disk: the mean of file sizes * 8 / pixels
    point = next(p for p in results["points"] if p["codec"] == "jpeg" and p["rate_key"] == "quality=90")
    files = list((tmp_path / "cache" / "bitstreams" / "jpeg" / "quality=90").glob("*.icm"))
    assert point["bpp"] == pytest.approx(sum(f.stat().st_size for f in files) * 8 / 64 / 64 / len(files))


def test_entropy_estimate_is_cached_with_the_bitstream(toy, tiny_shapes, tmp_path, monkeypatch):
    from icm.codecs.icm_codec import ICMCodec

    exp = lambda: Experiment(tasks=[TaskSpec("colour")], dataset=str(tiny_shapes), out=str(tmp_path),  # noqa: E731
                             codecs=[CodecSpec("icm-omni", rates=[{"rate": 0.5}], options={"weights": "random"}),
                                     CodecSpec("jpeg", rates=JPEG_RATES, anchor=True)])
    evaluate(exp(), progress=False)
    est = lambda: [p["est_bpp"] for p in json.loads((tmp_path / "results.json").read_text())["points"]  # noqa: E731
                   if p["codec"] == "icm-omni"]
    first = est()
    calls = []
    real = ICMCodec.estimate_bits_batch
    monkeypatch.setattr(ICMCodec, "estimate_bits_batch", lambda self, images, rate: calls.append(len(images))
                        or real(self, images, rate))
    again = evaluate(exp(), progress=False)
    assert calls == [] and again["counters"]["encodes"] == 0
    assert est() == first and first[0] > 0
    # a damaged sidecar is recomputed, not trusted
    sidecar = next((tmp_path / "cache" / "bitstreams" / "icm-omni").rglob("*.est.json"))
    sidecar.write_text("{")
    evaluate(exp(), progress=False)
    assert calls == [1] and json.loads(sidecar.read_text())["bits"] > 0  # that image alone


def test_outputs_are_complete_and_the_report_is_self_contained(toy, tiny_shapes, tmp_path):
    evaluate(experiment(tiny_shapes, tmp_path), progress=False)
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 9  # header + (8 points + original) x 1 task
    for name in ("colour.png", "colour.svg", "psnr.png", "psnr.svg"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    html = (tmp_path / "report.html").read_text()
    assert "BD-rate" in html and "Provenance" in html and "data:image/png;base64," in html
    import re

    external = re.findall(r'(?:src|href)="(?!data:)([^"]+)"', html)
    assert external == []


def test_label_free_mode_scores_uncompressed_as_perfect(toy, tiny_shapes, tmp_path):
    evaluate(experiment(tiny_shapes, tmp_path, label_free=True), progress=False)
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]["colour"]
    assert metrics["original@none"]["closeness"] == pytest.approx(1.0)
    assert metrics["jpeg@quality=10"]["closeness"] < 1.0


def _fake_dist(root: Path):
    shutil.copy(Path(toy_task.__file__), root / "toy_task.py")
    dist = root / "toy_task-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-task\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[icm]\ntoy = toy_task\n")
    # one torch thread everywhere (torchrun's default per rank): a float convolution may sum in
    # another order with another thread count, and these tests compare metrics exactly
    return {"PYTHONPATH": str(root), "ICM_LOAD_PLUGINS": "toy", "OMP_NUM_THREADS": "1"}


def test_cli_bad_input_is_one_line(tiny_shapes, tmp_path):
    env = _fake_dist(tmp_path)
    base = ["evaluate", "--dataset", str(tiny_shapes), "--out", str(tmp_path / "o"), "--anchors", "jpeg", "--reference", "jpeg"]
    assert_user_error(run_icm(*base, "--tasks", "colur", env=env), "unknown task 'colur'")
    assert_user_error(run_icm(*base, "--tasks", "colour", "--codec", "nope", env=env), "unknown codec 'nope'")
    assert_user_error(run_icm(*base, "--tasks", "colour", "--dataset", "nowhere", env=env), "nowhere")
    assert_user_error(run_icm(*base, "--tasks", "colour", "--codec", "webp", "--rates", "500", env=env), "out of range")
    assert_user_error(run_icm(*base, "--tasks", "colour", "--limit", "0", env=env), "at least 1")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"name": "empty", "images_dir": str(tmp_path / "no_images")}))
    (tmp_path / "no_images").mkdir()
    assert_user_error(run_icm(*base, "--tasks", "colour", "--dataset", str(empty), env=env), "no images")
    assert_user_error(run_icm(*base, "--tasks", "colour", "--task", "colour=/missing.py", env=env), "/missing.py: no such file")


def test_torchrun_two_ranks_match_one_process(tiny_shapes, tmp_path):
    env = _fake_dist(tmp_path)
    args = ["evaluate", "--tasks", "colour", "--dataset", str(tiny_shapes), "--anchors", "jpeg", "--reference", "jpeg",
            "--no-progress"]
    single = run_icm(*args, "--workers", "1", "--out", tmp_path / "one", env=env)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
                "-m", "icm", *args, "--out", str(tmp_path / "two")]
    import os

    proc = subprocess.run(torchrun, capture_output=True, text=True, env={**os.environ, **env}, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["metrics"] == one["metrics"]
    assert [p["bpp"] for p in two["points"]] == pytest.approx([p["bpp"] for p in one["points"]]) or \
        sorted(p["bpp"] or 0 for p in two["points"]) == pytest.approx(sorted(p["bpp"] or 0 for p in one["points"]))
    assert two["counters"]["encodes"] == one["counters"]["encodes"]


def test_worker_processes_give_the_metrics_of_one_process(tiny_shapes, tmp_path):
    """`--workers 2` (the default on this 2-core machine) starts two one-thread ranks itself; the
    metrics are the single process's to the last digit, and the stage timing covers both ranks."""
    env = _fake_dist(tmp_path)
    args = ["evaluate", "--tasks", "colour,brightness", "--dataset", str(tiny_shapes), "--anchors", "jpeg,hevc",
            "--reference", "hevc", "--no-progress"]
    one = run_icm(*args, "--workers", "1", "--out", tmp_path / "one", env=env)
    two = run_icm(*args, "--workers", "2", "--out", tmp_path / "two", env=env)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    r1, r2 = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r2["metrics"] == r1["metrics"] and r2["analysis"] == r1["analysis"]
    assert r2["counters"]["encodes"] == r1["counters"]["encodes"] > 0
    assert len(r2["timing"]["rank_wall_seconds"]) == 2 and r2["timing"]["workers"] == 2
    # each worker reports its own peak memory: at least the torch it imported, far below the machine
    assert all(100 < mb < 16000 for mb in r2["timing"]["rank_peak_rss_mb"])
    for stage in ("load/tasks", "encode", "decode", "predict/colour", "score/colour", "report"):
        assert r2["timing"]["stages"][stage] > 0, stage
    assert "wall" in two.stdout and "predict/colour" in two.stdout and "peak memory" in two.stdout  # the end-of-run stage table
    bad = run_icm(*args, "--workers", "2", "--tasks", "nope", "--out", tmp_path / "bad", env=env)
    assert_user_error(bad, "unknown task 'nope'")


def test_a_rerun_with_everything_cached_decodes_nothing(toy, tiny_shapes, tmp_path, monkeypatch):
    from icm.evaluation import report

    first = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour",)), progress=False)
    plots = {f.name: f.read_bytes() for f in (tmp_path / "plots").iterdir()}
    drawn = []
    real_draw = report._draw
    monkeypatch.setattr(report, "_draw", lambda *a: drawn.append(a[0]) or real_draw(*a))
    again = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour",)), progress=False)
    # the figures come from the cache, byte for byte, and nothing is drawn
    assert drawn == [] and {f.name: f.read_bytes() for f in (tmp_path / "plots").iterdir()} == plots
    assert first["counters"]["decodes"] == 48
    assert (again["counters"]["encodes"], again["counters"]["decodes"], again["counters"]["predictions"]) == (0, 0, 0)
    assert again["metrics"] == first["metrics"]
    # the metrics too come from the cache: same predictions and ground truth, nothing scored again
    assert first["counters"]["scores"] == 9 and (again["counters"]["scores"], again["counters"]["score_cache_hits"]) == (0, 9)
    r = json.loads((tmp_path / "results.json").read_text())
    assert all(p["psnr"] is not None for p in r["points"] if p["codec"] != "original")  # from the quality cache
    # a new task needs pixels again: decoded once per image and point, not encoded
    third = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour", "brightness")), progress=False)
    assert (third["counters"]["encodes"], third["counters"]["decodes"]) == (0, 48)
    assert (third["counters"]["scores"], third["counters"]["score_cache_hits"]) == (9, 9)  # brightness is new
    # changed ground truth is scored again
    import os

    from icm.datasets import load_dataset

    for f in load_dataset(str(tiny_shapes), "val").annotations.values():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    fourth = evaluate(experiment(tiny_shapes, tmp_path, tasks=("colour",)), progress=False)
    assert (fourth["counters"]["scores"], fourth["counters"]["score_cache_hits"]) == (9, 0)
    assert fourth["metrics"] == first["metrics"]


class _FlakyPlugin:
    """A codec that fails on one particular image, to check that a run survives it."""

    @staticmethod
    def _cls():
        from icm.codecs.anchors import JPEG
        from icm.errors import UserError

        class Flaky(JPEG):
            name = "flaky"

            def encode_streams(self, image, rate):
                if int(image.sum()) % 3 == 0:
                    raise UserError("flaky codec refuses this image")
                return super().encode_streams(image, rate)

        return Flaky

    from icm import hookimpl

    @hookimpl
    def icm_register_codecs(self, register):
        register("flaky", self._cls(), kind="anchor")


def test_a_failing_image_is_reported_with_its_id_and_the_rest_is_kept(toy, icm_register_plugin, tiny_shapes, tmp_path):
    from icm.images import load_image
    from icm.datasets import load_dataset

    icm_register_plugin(_FlakyPlugin(), name="flaky")
    exp = experiment(tiny_shapes, tmp_path)
    exp.codecs.append(CodecSpec("flaky", rates=[{"quality": 50}]))
    summary = evaluate(exp, progress=False)
    images = load_dataset(str(tiny_shapes), "val").images
    bad = sorted(r["id"] for r in images if int(load_image(r["file_name"]).sum()) % 3 == 0)
    failed = sorted(f["image_id"] for f in summary["counters"]["failures"])
    assert failed == bad and 0 < len(bad) < len(images)
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]["colour"]
    assert metrics["flaky@quality=50"]["images"] == len(images) - len(bad)
    assert metrics["jpeg@quality=90"]["images"] == len(images)


def test_codec_batches_give_the_results_of_one_image_at_a_time(toy, tiny_shapes, tmp_path):
    """Codecs code each point's images in batches of batch_size; batch_size 1 is the one-by-one path."""
    codecs = [CodecSpec("jpeg", rates=JPEG_RATES[:2], anchor=True), CodecSpec("hevc", rates=HEVC_RATES[:2], anchor=True),
              CodecSpec("icm-omni", rates=[{"rate": 0.3}], options={"weights": "random"})]
    runs = {}
    for n in (1, 4):
        exp = Experiment(tasks=[TaskSpec("colour")], dataset=str(tiny_shapes), out=str(tmp_path / str(n)),
                         codecs=codecs, batch_size=n)
        evaluate(exp, progress=False)
        runs[n] = json.loads((tmp_path / str(n) / "results.json").read_text())
    assert runs[1]["metrics"] == runs[4]["metrics"] and runs[1]["analysis"] == runs[4]["analysis"]
    assert [p["bpp"] for p in runs[1]["points"]] == [p["bpp"] for p in runs[4]["points"]]
    # the same files byte for byte; in a batched HEVC encode x265 may set one slice-header bit otherwise
    for f in (tmp_path / "1" / "cache" / "bitstreams").rglob("*.icm"):
        other = (tmp_path / "4").joinpath(f.relative_to(tmp_path / "1"))
        assert f.read_bytes() == other.read_bytes() or f.parts[-3] == "hevc" and f.stat().st_size == other.stat().st_size
