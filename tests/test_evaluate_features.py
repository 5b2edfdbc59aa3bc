"""`icm evaluate` with a feature codec: each file is decoded once per image and rate, feature readers
get the decoded tensor, pixel tasks the picture decoded from it, and without an image decoder a pixel
task is skipped with one recorded failure."""

import json

import pytest
import torch

import toy_features
from icm.evaluation.config import CodecSpec, Experiment, TaskSpec
from icm.evaluation.run import evaluate


@pytest.fixture
def feature_tasks(toy, icm_register_plugin):
    return icm_register_plugin(toy_features, name="toy-features")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    from icm.codecs import open_codec

    path = tmp_path_factory.mktemp("weights") / "features.pth"
    torch.save(open_codec("icm-omni-features", weights="random", device="cpu").net.state_dict(), path)
    return str(path)


def test_one_decode_per_file_serves_feature_and_pixel_tasks(feature_tasks, tiny_shapes, tmp_path, random_weights):
    toy_features.SEEN.clear()
    rates = [{"rate": 0.2}, {"rate": 0.9}]
    exp = Experiment(tasks=[TaskSpec("fcolour"), TaskSpec("pcolour")], dataset=str(tiny_shapes), out=str(tmp_path),
                     codecs=[CodecSpec("jpeg", anchor=True),
                             CodecSpec("icm-omni-features", rates=rates, options={"checkpoint": random_weights})],
                     reference="jpeg")
    summary = evaluate(exp, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    images = 6
    feature_points = [r for r in results["points"] if r["codec"] == "icm-omni-features"]
    assert len(feature_points) == len(rates)
    assert all(r["psnr"] is not None and r["bpp"] > 0 for r in feature_points)  # the picture from the features
    jpeg_points = len([r for r in results["points"] if r["codec"] == "jpeg"])
    assert summary["counters"]["decodes"] == images * (len(rates) + jpeg_points)  # one decode per file
    seen = toy_features.SEEN
    readers = [s for s in seen if s[1] == "features"]
    # the reader got the 64 px images' split tensors (padded to 64: 16x16 at stride 4) with the image size
    assert readers and all(s[0] == "fcolour" and s[2][1:] == (32, 16, 16) and s[3] == (64, 64) for s in readers)
    assert sum(s[2][0] for s in readers) == images * len(rates)
    # pixel tasks read pixels at every point, the feature codec's included
    assert sum(s[2][0] for s in seen if s[0] == "pcolour") == images * (1 + jpeg_points + len(rates))
    assert set(results["metrics"]["fcolour"]) >= {f"icm-omni-features@rate={r['rate']}" for r in rates}
    assert not summary["counters"]["failures"]
    # a rerun decodes nothing: every prediction, the readers' included, is cached
    toy_features.SEEN.clear()
    again = evaluate(exp, progress=False)
    assert again["counters"]["decodes"] == 0 and not toy_features.SEEN
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == results["metrics"]


def test_without_an_image_decoder_a_pixel_task_is_skipped_once(feature_tasks, tiny_shapes, tmp_path):
    toy_features.SEEN.clear()
    exp = Experiment(tasks=[TaskSpec("fcolour"), TaskSpec("pcolour")], dataset=str(tiny_shapes), out=str(tmp_path),
                     codecs=[CodecSpec("jpeg", anchor=True), CodecSpec("toy-blind-features", rates=[{"rate": 0.5}])],
                     reference="jpeg")
    summary = evaluate(exp, progress=False)
    [failure] = summary["counters"]["failures"]
    assert failure["task"] == "pcolour" and "no image decoder" in failure["error"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "toy-blind-features@rate=0.5" in results["metrics"]["fcolour"]
    assert "toy-blind-features@rate=0.5" not in results["metrics"]["pcolour"]
    [point] = [r for r in results["points"] if r["codec"] == "toy-blind-features"]
    assert point["psnr"] is None and point["bpp"] > 0


# -- icm train backend = TASK ---------------------------------------------------------------------------
def _backend_config(data, out, **extra):
    from icm.training.config import parse_config

    return parse_config({"codec": {"name": "icm-omni-features", "options": {"weights": "random"}, "rates": [0.0, 1.0],
                                   "rate_sampling": "uniform", "per_sample_rates": True, "val_rates": [0.5]},
                         "backend": "fcolour", "losses": {"task:fcolour": 1.0}, "dataset": str(data), "epochs": 1,
                         "steps_per_epoch": 3, "batch_size": 2, "eval_batch_size": 2, "lr": 1e-2, "out": str(out),
                         "export": str(out / "backend.pth"), **extra})


def test_backend_training_moves_the_back_end_and_never_the_codec(feature_tasks, tiny_shapes, tmp_path):
    from icm.training.loop import Run

    run = Run(_backend_config(tiny_shapes, tmp_path), progress=False)
    codec_before = {k: v.clone() for k, v in run.trainable.codec.net.state_dict().items()}
    head_before = {k: v.clone() for k, v in run.trainable.net.state_dict().items()}
    summary = run.run()
    (entry,) = summary["history"]
    assert entry["steps"] == 3 and entry["losses"]["task:fcolour"] > 0
    assert [r["rate_key"] for r in entry["val"]] == ["rate=0.5"]  # the reader scored on decoded features
    assert all(torch.equal(v, codec_before[k]) for k, v in run.trainable.codec.net.state_dict().items())
    exported = torch.load(tmp_path / "backend.pth", weights_only=True)
    assert set(exported) == set(head_before)  # the back end's weights, nothing of the codec
    assert any(not torch.equal(exported[k].float(), head_before[k]) for k in exported)


def test_backend_config_errors_are_one_line(feature_tasks, tiny_shapes, tmp_path):
    from icm.errors import UserError
    from icm.training.loop import Run

    with pytest.raises(UserError, match="not a task of this run"):
        _backend_config(tiny_shapes, tmp_path, backend="pcolour")
    with pytest.raises(UserError, match="whole images"):
        _backend_config(tiny_shapes, tmp_path, crop=32)
    with pytest.raises(UserError, match="cannot read features"):  # a task without a feature reader
        Run(_backend_config(tiny_shapes, tmp_path, backend="pcolour", losses={"task:pcolour": 1.0}), progress=False)
    with pytest.raises(UserError, match="not a trainable feature codec"):
        Run(_backend_config(tiny_shapes, tmp_path, codec={"name": "icm-omni", "options": {"weights": "random"},
                                                           "rates": [0.0, 1.0]}), progress=False)
