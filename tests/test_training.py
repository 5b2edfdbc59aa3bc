"""icm train: loss terms, schedules, the loop (checkpoints, resume, DDP) and the Pareto re-evaluation.

Everything runs on an 8+4 image shapes set at 64 px with untrained CompressAI models at quality 1
and the toy mean-colour task (tests/toy_task.py)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import toy_task
from conftest import REPO
from icm import hookimpl
from icm.codecs import Codec, RateControl, TrainableCodec
from icm.codecs.icm_codec import MAX_GAIN_LEVELS, GainUnit
from icm.datasets import load_dataset
from icm.errors import UserError
from icm.tasks import Batch
from icm.training import losses as L
from icm.training.config import load_config, load_stages, parse_config
from icm.training.data import load_batch
from icm.training.loop import train
from icm.training.schedules import DWA, LePhased, Uncertainty, build_schedule

TERMS = ["rate", "mse", "task:colour", "distill:colour", "objectness_distill:objecty", "gtbox_distill:objecty",
         "cognition", "cognition:objecty"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from icm.datasets.shapes import generate

    root = tmp_path_factory.mktemp("shapes8")
    generate(root, train=8, val=4, size=64)
    return root


class Objecty(toy_task.MeanColour):
    """The toy task with two feature levels and objectness maps (constant unless ``maps`` is given)."""

    name = "objecty"

    def __init__(self, *args, level=0.5, maps=None, **kw):
        super().__init__(*args, **kw)
        self.level, self.maps = level, maps

    def features(self, x):
        f = self.net(x)
        return [f, F.avg_pool2d(f, 4)]

    def objectness(self, x):
        if self.maps is not None:
            return self.maps
        n, _, h, w = x.shape
        return [torch.full((n, 1, h, w), self.level), torch.full((n, 1, h // 4, w // 4), self.level)]


def codec_net(arch="bmshj2018-hyperprior"):
    from icm.codecs.learned import CompressAICodec

    net = CompressAICodec(arch, weights="random", device="cpu").model(1)
    return net.train()


def context(shapes, net, adapters):
    ds = load_dataset(str(shapes), "train")
    for a in adapters.values():
        a.bind(ds)
    samples = ds.images[:3]
    x = load_batch(samples, "cpu")
    out = net(x)
    return L.Context(x, out["x_hat"], out["likelihoods"], Batch(x, samples), adapters)


# -- losses -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("term", TERMS)
def test_each_loss_is_finite_and_differentiable(shapes, term):
    net = codec_net()
    adapters = {"colour": toy_task.MeanColour(), "objecty": Objecty()}
    ctx = context(shapes, net, adapters)
    value = L.build_loss(term)(ctx)
    assert value.dim() == 0 or value.shape == (ctx.x.shape[0],)  # a scalar or one value per sample
    value = value.mean()
    assert math.isfinite(float(value.detach()))
    value.backward()
    grads = [p.grad for n, p in net.named_parameters() if p.grad is not None and not n.endswith("quantiles")]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"{term}: no gradient reaches the codec"
    assert all(torch.isfinite(g).all() for g in grads)


def test_several_adapters_at_once_and_the_originals_are_computed_once(shapes):
    calls = []

    class Counting(Objecty):
        def features(self, x):
            calls.append(x.requires_grad or x.grad_fn is not None)
            return super().features(x)

    net = codec_net()
    ctx = context(shapes, net, {"colour": toy_task.MeanColour(), "objecty": Counting()})
    total = sum(L.build_loss(t)(ctx) for t in ("distill:objecty", "objectness_distill:objecty", "cognition", "task:colour"))
    total.backward()
    assert sorted(calls) == [False, True]  # one pass on the originals, one on the decoded images, shared by 3 terms


def test_objectness_weighting_equals_plain_distillation_when_objectness_is_constant(shapes):
    net = codec_net()
    ctx = context(shapes, net, {"objecty": Objecty(level=0.37)})
    plain = L.build_loss("distill:objecty")(ctx)
    weighted = L.build_loss("objectness_distill:objecty")(ctx)
    assert float(weighted.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)

    # a real map weights the error where the objects are; each level's weights average to 1 per image
    n, h = 3, 64
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(n, 1, s, s, generator=g) * 0.1 for s in (h, h // 4)]
    for m in maps:  # objects in the top-left quadrant
        m[..., : m.shape[-2] // 2, : m.shape[-1] // 2] += 0.9
    ctx2 = context(shapes, net, {"objecty": Objecty(maps=maps)})
    loss = L.build_loss("objectness_distill:objecty")
    ws = loss.weights(ctx2, ctx2.original_features("objecty"))
    for wl in ws:
        assert wl.mean(dim=(2, 3)).flatten().tolist() == pytest.approx([1.0] * n, rel=1e-4)
    f, fh = ctx2.original_features("objecty"), ctx2.decoded_features("objecty")
    by_hand = sum(((m / m.mean(dim=(2, 3), keepdim=True)) * (a - b) ** 2).mean() for m, a, b in zip(maps, f, fh)) / 2
    value = float(loss(ctx2).detach())
    assert value == pytest.approx(float(by_hand.detach()), rel=1e-4)
    assert value != pytest.approx(float(plain.detach()), rel=1e-3)


def test_gtbox_weights_are_one_inside_the_boxes_and_the_floor_outside(shapes):
    net = codec_net()
    ctx = context(shapes, net, {"objecty": Objecty()})
    loss = L.build_loss("gtbox_distill:objecty", {"floor": 0.05})
    full, quarter = loss.weights(ctx, ctx.original_features("objecty"))
    anns = json.loads((shapes / "annotations" / "instances_train.json").read_text())["annotations"]
    for i, s in enumerate(ctx.batch.samples):
        expect = torch.full((64, 64), 0.05)
        for a in anns:
            if a["image_id"] == s["id"]:
                x, y, bw, bh = a["bbox"]
                expect[math.floor(y):math.ceil(y + bh), math.floor(x):math.ceil(x + bw)] = 1.0
        assert torch.equal(full[i, 0], expect)
        assert torch.equal(quarter[i, 0], F.max_pool2d(expect[None, None], 4)[0, 0])
        assert (expect == 1).any() and (expect == 0.05).any()


def test_cognition_penalises_pixels_outside_0_1_with_lambda_local(shapes):
    net = codec_net()
    ctx = context(shapes, net, {"objecty": Objecty()})
    base = float(L.build_loss("cognition", {"lambda_local": 0.0})(ctx).detach())
    ctx.x_hat = ctx.x_hat.detach() + 2.0  # every pixel above 1 (features shift, so compare the penalty only)
    ctx.cache.pop(("decoded_features", "objecty"))
    no_pen = float(L.build_loss("cognition", {"lambda_local": 0.0})(ctx).detach())
    with_pen = float(L.build_loss("cognition", {"lambda_local": 1e-5})(ctx).detach())
    penalty = float(((ctx.x_hat - ctx.x) ** 2).mean())
    assert with_pen - no_pen == pytest.approx(1e-5 * penalty, rel=1e-3)
    assert math.isfinite(base)


def test_bad_loss_names_are_user_errors():
    for term, fragment in (("nope", "unknown loss"), ("task", "needs a task"), ("rate:colour", "takes no task")):
        with pytest.raises(UserError, match=fragment):
            L.build_loss(term)


# -- schedules ------------------------------------------------------------------------------------------
def test_le_phased_weights_follow_eq_4_1():
    s = LePhased(["rate", "mse", "task:det", "distill:det"])  # phases (50, 75, 120, 165)

    def at(e):
        s.set_epoch(e)
        return s.factors()

    assert at(1) == {"rate": 0.0, "mse": 1.0, "task:det": 0.0, "distill:det": 0.0}  # MSE only
    assert at(49)["task:det"] == 0.0
    assert at(50)["task:det"] == pytest.approx(4e-3 * 1.01 ** -1) and at(50)["rate"] == 0.0
    assert at(60)["task:det"] == pytest.approx(4e-3 * 1.01 ** 9) == at(60)["distill:det"]
    assert at(75)["rate"] == pytest.approx(2e-3 * 1.01 ** -1)
    assert at(100)["rate"] == pytest.approx(2e-3 * 1.01 ** 24)
    assert at(130)["rate"] == pytest.approx(2e-3 * 1.01 ** 9)
    assert at(170)["rate"] == pytest.approx(2e-3 * 1.02 ** 4)
    assert at(170)["task:det"] == pytest.approx(4e-3 * 1.01 ** 119)
    assert at(170)["mse"] == 1.0
    custom = LePhased(["rate", "mse"], phases=[2, 3, 5, 7])
    custom.set_epoch(4)
    assert custom.factors()["rate"] == pytest.approx(2e-3 * 1.01 ** 0)
    with pytest.raises(UserError, match="mse"):
        LePhased(["rate", "task:det"])


def test_dwa_weights_match_a_hand_computation():
    s = DWA(["a", "b"], temperature=2.0)
    s.set_epoch(1)
    assert s.factors() == {"a": 1.0, "b": 1.0}
    s.end_epoch(1, {"a": 1.0, "b": 2.0})
    s.set_epoch(2)
    assert s.factors() == {"a": 1.0, "b": 1.0}
    s.end_epoch(2, {"a": 0.5, "b": 3.0})
    s.set_epoch(3)
    # λ_a = 0.5/1 = 0.5, λ_b = 3/2 = 1.5; w = 2·exp(λ/2)/(exp(0.25) + exp(0.75))
    assert s.factors()["a"] == pytest.approx(2 * 1.2840254166877414 / (1.2840254166877414 + 2.117000016612675))
    assert s.factors()["b"] == pytest.approx(2 * 2.117000016612675 / (1.2840254166877414 + 2.117000016612675))
    assert sum(s.factors().values()) == pytest.approx(2.0)
    again = DWA(["a", "b"], temperature=2.0)
    again.load_state_dict(s.state_dict())
    again.set_epoch(3)
    assert again.factors() == s.factors()


def test_uncertainty_adds_learnable_parameters_eq_2_10():
    s = Uncertainty(["rate", "mse"])
    (p,) = s.parameters()
    assert p.requires_grad and p.shape == (2,)
    with torch.no_grad():
        p.copy_(torch.tensor([0.5, -1.0]))
    losses = {"rate": torch.tensor(2.0), "mse": torch.tensor(3.0)}
    total = s.combine(losses)
    expect = sum(0.5 * math.exp(-v) * losses[t].item() + math.log(math.exp(v) + 1) for t, v in (("rate", 0.5), ("mse", -1.0)))
    assert float(total.detach()) == pytest.approx(expect)
    total.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    eq29 = Uncertainty(["rate"], positive=False)
    assert float(eq29.combine({"rate": torch.tensor(2.0)})) == pytest.approx(1.0)  # 0.5·e^0·2 + 0


def _wire_schedules_hook(plugins, monkeypatch):
    """Until core/hookspecs.py declares icm_register_schedules, add the spec to this plugin set."""
    from icm import hookspecs
    from icm.registry import Registry

    if hasattr(hookspecs, "icm_register_schedules"):
        return

    class Spec:
        @hookspecs.hookspec
        def icm_register_schedules(self, register):
            """Register loss-weight schedules."""

    plugins.pm.add_hookspecs(Spec)
    plugins._registries["icm_register_schedules"] = Registry("schedule")
    monkeypatch.setattr(type(plugins), "schedules", property(lambda self: self._registry("icm_register_schedules")),
                        raising=False)
    from icm.training import builtin_schedules

    plugins.register_plugin(builtin_schedules, "icm.training.builtin_schedules")


def test_a_plugin_adds_a_schedule(icm_plugins, icm_register_plugin, monkeypatch):
    from icm.training.schedules import Schedule

    class Halves(Schedule):
        name = "halves"

        def factors(self):
            return {t: 0.5 for t in self.terms}

    class Plugin:
        @hookimpl
        def icm_register_schedules(self, register):
            register("halves", Halves, description="every term at half weight")

    _wire_schedules_hook(icm_plugins, monkeypatch)
    icm_register_plugin(Plugin(), name="halves-plugin")
    assert {"fixed", "le_phased", "dwa", "uncertainty", "halves"} <= set(icm_plugins.schedules.names())
    assert icm_plugins.schedules.entry("halves").plugin == "halves-plugin"
    assert build_schedule("halves", ["mse"]).factors() == {"mse": 0.5}
    with pytest.raises(UserError, match="unknown schedule"):
        build_schedule("halfs", ["mse"])


# -- the loop ---------------------------------------------------------------------------------------------
CONFIG = """
dataset = "{dataset}"
tasks = ["colour"]
epochs = 3
batch_size = 4
eval_batch_size = 4
lr = 1e-4
out = "{out}"
{extra}

[codec]
name = "bmshj2018-hyperprior"
quality = 1
options = {{ weights = "random" }}

[losses]
rate = 0.01
mse = 1.0
"distill:colour" = 0.5

[schedule]
name = "dwa"
temperature = 2.0
"""


class Killed(Exception):
    pass


def test_run_checkpoints_logs_plots_resumes_and_reevaluates_the_front(toy, shapes, tmp_path):
    from click.testing import CliRunner

    from icm.training.command import train as train_command

    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(dataset=shapes, out=tmp_path / "run", extra=""))
    cfg = load_config(path)

    def kill_after_first(epoch, entry):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, progress=False, on_epoch_end=kill_after_first)
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_001.pth", "state.pt"]
    assert torch.load(ck / "state.pt", weights_only=True)["epoch"] == 1

    # rerun: resumes at epoch 2 (not from scratch), then the Pareto front goes through real bitstreams
    result = CliRunner().invoke(train_command, [str(path), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "resumed at epoch 2" in result.output and "front: epoch" in result.output
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_001.pth", "epoch_002.pth", "epoch_003.pth", "state.pt"]
    assert (tmp_path / "run" / "plot.png").stat().st_size > 10_000
    e3 = log["epochs"][2]
    assert set(e3["losses"]) == {"rate", "mse", "distill:colour"} and e3["weights"]["mse"] != 1.0  # DWA at epoch 3
    val = e3["val"][0]
    assert val["rate"] == {"quality": 1} and val["est_bpp"] > 0 and "closeness" in val["metrics"]["colour"]

    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert pareto["candidates"] == 3 and pareto["front"]
    for row in pareto["front"]:
        assert row["bpp"] > 0 and row["codec_est_bpp"] == pytest.approx(row["est_bpp"], rel=1e-3)
        assert row["gap_bpp"] == pytest.approx(row["bpp"] - row["est_bpp"])
        # same pixels, forward vs decoded: equal up to float32 rounding (y - mean + mean), which on this
        # machine's CPU is 3e-7 relative on a score of -6.3 (the old abs=1e-6 failed here, old code too)
        assert row["score_real"] == pytest.approx(row["score_est"], rel=1e-6, abs=1e-6)
        results = json.loads(Path(row["results"]).read_text())
        point = next(p for p in results["points"] if p["codec"] == "bmshj2018-hyperprior")
        assert point["bpp"] == row["bpp"]
    assert log["pareto"] == pareto["front"]

    # the same run without the interruption ends with the same weights: the resume restored everything
    straight = load_config(path)
    straight.out, straight.reevaluate = str(tmp_path / "straight"), False
    train(straight, progress=False)
    a = torch.load(ck / "epoch_003.pth", weights_only=True)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_003.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # another config does not silently continue these checkpoints
    changed = load_config(path)
    changed.lr = 5e-5
    with pytest.raises(UserError, match="lr differ"):
        train(changed, progress=False)
    # but where the final weights are exported is not part of the training: a chain link that stops
    # exporting (or exports elsewhere) resumes, and the finished run writes the new export
    moved = load_config(path)
    moved.export, moved.reevaluate = str(tmp_path / "elsewhere" / "model.pth"), False
    summary = train(moved, progress=False)
    assert summary["trained_epochs"] == [] and summary["start_epoch"] == 4
    exported = torch.load(moved.export, weights_only=True)
    assert torch.equal(exported["g_a.0.weight"], torch.load(tmp_path / "run" / "model.pth", weights_only=True)["g_a.0.weight"].half())

    # --no-resume starts again from scratch
    fresh = CliRunner().invoke(train_command, [str(path), "--no-progress", "--no-resume", "--epochs", "1",
                                               "--no-reevaluate"], catch_exceptions=False)
    assert fresh.exit_code == 0 and "resumed" not in fresh.output
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_001.pth", "state.pt"]


def test_resume_refuses_when_the_init_weights_were_replaced(toy, shapes, tmp_path):
    """Same config, new weights behind its `init` (say a newly shipped model): continuing the old
    checkpoints would silently train and export from the old weights."""
    def config(name, extra=""):
        path = tmp_path / f"{name}.toml"
        path.write_text(CONFIG.format(dataset=shapes, out=tmp_path / name, extra="reevaluate = false\n" + extra))
        cfg = load_config(path)
        cfg.epochs = 1
        return cfg

    train(config("parent"), progress=False)
    child = f'init = "{tmp_path / "parent"}"'
    train(config("child", child), progress=False)
    train(config("parent"), progress=False)  # a finished chain run again: each link re-saves the same weights
    state = torch.load(tmp_path / "child" / "checkpoints" / "state.pt", weights_only=True)
    assert len(state["init"]["weights_hash"]) == 16
    assert train(config("child", child), progress=False)["start_epoch"] == 2  # unchanged init: resumes

    weights = torch.load(tmp_path / "parent" / "model.pth", weights_only=True)
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 4)
    weights[key] = weights[key] * 0.5
    torch.save(weights, tmp_path / "parent" / "model.pth")
    with pytest.raises(UserError, match="trained from other weights in .*parent.*--no-resume"):
        train(config("child", child), progress=False)
    assert train(config("child", child), resume=False, progress=False)["start_epoch"] == 1


def test_a_run_does_not_depend_on_what_drew_from_the_global_rngs_before_it(toy, shapes, tmp_path, monkeypatch):
    """A chain link used to train differently after another link in the same `icm train` command: the
    task models' first build in a process draws from the global RNGs (a later build does not), and the
    run was seeded before that build. The same config must give the same weights either way."""
    import random

    import icm.training.loop as loop

    def run(name):
        path = tmp_path / f"{name}.toml"
        path.write_text(CONFIG.format(dataset=shapes, out=tmp_path / name, extra="reevaluate = false\ncrop = 32\nhflip = true"))
        cfg = load_config(path)
        cfg.epochs = 1
        train(cfg, progress=False)
        return torch.load(tmp_path / name / "model.pth", weights_only=True)

    quiet = run("quiet")
    build = loop.build_adapters

    def noisy_build(cfg, device):  # as a first build in a process does
        torch.rand(97), np.random.rand(5), random.random()
        return build(cfg, device)

    monkeypatch.setattr(loop, "build_adapters", noisy_build)
    noisy = run("noisy")
    assert quiet.keys() == noisy.keys() and all(torch.equal(quiet[k], noisy[k]) for k in quiet)


class FakeOmni(Codec, TrainableCodec):
    """A continuous-rate codec for the test: a factorized CompressAI model behind a crude gain unit."""

    name, kind, version = "fake-omni", "learned", "1"
    rate_control = RateControl("rate", None, True, (0.2, 0.8), continuous=True)

    def __init__(self, checkpoint=None, device=None):
        from compressai.zoo import bmshj2018_factorized

        from icm.codecs.learned import load_checkpoint

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = bmshj2018_factorized(quality=1)
        if checkpoint:
            self.net.load_state_dict(load_checkpoint(checkpoint))
        self.net.update(force=True)
        self.net.eval()

    @staticmethod
    def gain(rate):
        return 0.25 + 1.5 * rate

    def trainable_module(self, quality=None):
        return self.net

    def fresh_module(self, module, seed):
        from icm.codecs.trainable import seeded

        return seeded(seed, lambda: type(module)(module.N, module.M))

    def forward(self, x, rate, beta=1.0):
        y = self.net.g_a(x) * self.gain(rate)
        y_hat, lik = self.net.entropy_bottleneck(y)
        return {"x_hat": self.net.g_s(y_hat / self.gain(rate)), "likelihoods": {"y": lik}}

    def weights_hash(self, rate):
        from icm.codecs.learned import tensor_hash

        return tensor_hash(self.net.state_dict())

    def encode_streams(self, image, rate):
        from icm.codecs.learned import pad, to_tensor

        with torch.no_grad():
            y = self.net.g_a(pad(to_tensor(image, "cpu"))) * self.gain(rate["rate"])
            return {"main": self.net.entropy_bottleneck.compress(y)[0]}

    def decode_streams(self, streams, rate, width, height):
        from icm.codecs.learned import to_image

        shape = ((height + 63) // 64 * 4, (width + 63) // 64 * 4)
        with torch.no_grad():
            y_hat = self.net.entropy_bottleneck.decompress([streams["main"]], shape)
            return to_image(self.net.g_s(y_hat / self.gain(rate["rate"]))[..., :height, :width])


class FakeOmniPlugin:
    @hookimpl
    def icm_register_codecs(self, register):
        register("fake-omni", FakeOmni, kind="learned", description="test continuous-rate codec")


def test_continuous_rate_codec_with_per_rate_lambda_and_uncertainty(toy, icm_register_plugin, shapes, tmp_path):
    icm_register_plugin(FakeOmniPlugin(), name="fake-omni")
    cfg = parse_config({
        "codec": {"name": "fake-omni", "rates": [0.2, 0.8], "rate_lambdas": [4.0, 0.25], "rate_sampling": "uniform"},
        "tasks": ["colour"], "losses": {"rate": 0.01, "mse": 1.0, "task:colour": 0.1}, "schedule": "uncertainty",
        "dataset": str(shapes), "epochs": 1, "batch_size": 4, "eval_batch_size": 4, "out": str(tmp_path / "omni")})
    from icm.training.codec import rate_lambda

    assert rate_lambda(cfg.codec, 0.2) == 4.0 and rate_lambda(cfg.codec, 0.5) == pytest.approx(1.0)
    summary = train(cfg, progress=False)
    state = torch.load(tmp_path / "omni" / "checkpoints" / "state.pt", weights_only=True)
    assert len(state["optimizer"]["param_groups"]) == 2  # the codec, and the log-variances of the schedule
    assert state["schedule"]["log_var"].abs().sum() > 0  # learned away from 0
    val = summary["history"][0]["val"]
    assert [r["rate"] for r in val] == [{"rate": 0.2}, {"rate": 0.8}]
    assert val[0]["est_bpp"] < val[1]["est_bpp"]
    assert summary["pareto"] and all(r["bpp"] > 0 for r in summary["pareto"])


def test_icm_omni_trains_at_beta_below_1_and_its_candidates_reopen_by_name(toy, shapes, tmp_path):
    cfg = parse_config({
        "codec": {"name": "icm-omni", "options": {"weights": "random"}, "rates": [0.0, 1.0], "val_rates": [0.5],
                  "beta": 0.5},
        "tasks": ["colour"], "losses": {"rate": 0.01, "mse": 1.0, "cognition": 0.1},
        "dataset": str(shapes), "epochs": 1, "batch_size": 4, "eval_batch_size": 4, "out": str(tmp_path / "omni")})
    summary = train(cfg, progress=False)
    losses = summary["history"][0]["losses"]
    assert all(math.isfinite(v) for v in losses.values())
    (row,) = summary["pareto"]
    assert row["rate"] == {"rate": 0.5} and row["bpp"] > 0 and row["score_real"] is not None


def test_icm_omni_grows_gain_levels_below_its_init_and_resumes(toy, shapes, tmp_path):
    """codec.new_low_gains extends the rate range downwards: rate 0 becomes a new, coarser gain level,
    the init's levels move up the rate axis unchanged, and a codec with fewer levels loads the result."""
    def config(name, **extra):
        codec = {"name": "icm-omni", "options": {"weights": "random"}, "rates": [0.0, 1.0], "val_rates": [0.0],
                 "train_modules": ["g_s"], **extra.pop("codec", {})}
        return parse_config({"codec": codec, "tasks": ["colour"], "losses": {"rate": 0.01, "mse": 1.0},
                             "dataset": str(shapes), "epochs": 1, "batch_size": 4, "eval_batch_size": 4,
                             "train_limit": 8, "val_limit": 4, "reevaluate": False, "out": str(tmp_path / name), **extra})

    train(config("parent"), progress=False)
    grown = config("grown", init=str(tmp_path / "parent"), codec={"new_low_gains": [1.5]})
    train(grown, progress=False)
    before = torch.load(tmp_path / "parent" / "model.pth", weights_only=True)
    after = torch.load(tmp_path / "grown" / "model.pth", weights_only=True)
    for unit in ("gain_y", "gain_z", "gain_aux"):
        old, new = (GainUnit(6, before[f"{unit}.log_gain0"].numel()), GainUnit(7, after[f"{unit}.log_gain0"].numel()))
        old.load_state_dict({k[len(unit) + 1:]: v.float() for k, v in before.items() if k.startswith(unit + ".")})
        new.load_state_dict({k[len(unit) + 1:]: v.float() for k, v in after.items() if k.startswith(unit + ".")})
        t_old, t_new = old.log_table().detach(), new.log_table().detach()
        assert torch.allclose(t_new[1:], t_old, atol=1e-5)  # the gains were frozen: the old levels, exactly
        assert torch.allclose(t_new[0], t_old[0] - 1.5 * (t_old[1] - t_old[0]), atol=1e-5)
        inv_old, inv_new = old.log_inv_gain.detach(), new.log_inv_gain.detach()
        assert torch.equal(inv_new[1:], inv_old)
        assert torch.allclose(inv_new[0], inv_old[0] - 1.5 * (inv_old[1] - inv_old[0]), atol=1e-5)
    # the codec reopened on the grown weights: rate 0 is the new, coarser level; the parent's rate 0 is
    # now at 1/6, its rate 1 still at 1
    from icm.codecs.icm_codec import ICMCodec

    was, now = (ICMCodec(checkpoint=str(tmp_path / run / "model.pth")).net.gain_y for run in ("parent", "grown"))
    at = lambda unit, r: unit(torch.tensor([r]))[0].flatten()  # noqa: E731
    assert (at(now, 0.0) < at(was, 0.0)).all()
    assert torch.allclose(at(now, 1 / 6), at(was, 0.0), rtol=1e-4) and torch.allclose(at(now, 1.0), at(was, 1.0), rtol=1e-4)
    assert train(grown, progress=False)["start_epoch"] == 2  # the finished run resumes as finished
    # a run from the grown weights on the 6-level codec (icm-omni-aux's case) takes the 7 levels
    train(config("next", init=str(tmp_path / "grown")), progress=False)
    assert torch.load(tmp_path / "next" / "model.pth", weights_only=True)["gain_y.log_inv_gain"].shape[0] == 7
    # a crafted init whose gain table has no levels, or more than a codec may have, is refused in one
    # line, not built
    table = before["gain_y.log_inv_gain"]
    for levels in (0, MAX_GAIN_LEVELS + 1):
        crafted = {**before, "gain_y.log_inv_gain": table[:1].repeat(levels, 1)}
        torch.save(crafted, tmp_path / "crafted.pth")
        with pytest.raises(UserError, match="shape of gain_y.log_inv_gain differs"):
            train(config("crafted", init=str(tmp_path / "crafted.pth")), progress=False)
    with pytest.raises(UserError, match="new_low_gains"):
        config("bad", init=str(tmp_path / "parent"), codec={"new_low_gains": [0.0]})
    with pytest.raises(UserError, match="set init"):
        config("bad", codec={"new_low_gains": [1.0]})


def test_icm_omni_adds_a_context_model_to_its_init_and_trains_only_it(toy, shapes, tmp_path):
    """codec.new_context gives the init's weights a context model (channel groups x checkerboard
    halves); with train_modules = ["context", "gaussian_conditional"] nothing else moves. A later run from those weights keeps the context; a run from weights
    without one has none, whatever the codec's own weights have."""
    def config(name, **extra):
        codec = {"name": "icm-omni", "options": {"weights": "random"}, "rates": [0.0, 1.0], "val_rates": [0.0],
                 "rate_sampling": "uniform", "per_sample_rates": True, **extra.pop("codec", {})}
        return parse_config({"codec": codec, "tasks": ["colour"], "losses": {"rate": 0.01, "mse": 1.0},
                             "dataset": str(shapes), "epochs": 1, "batch_size": 4, "eval_batch_size": 4, "lr": 1e-2,
                             "train_limit": 8, "val_limit": 4, "reevaluate": False, "out": str(tmp_path / name), **extra})

    train(config("parent", codec={"train_modules": ["g_s"]}), progress=False)
    child = config("child", init=str(tmp_path / "parent"), losses={"rate": 1.0},
                   codec={"new_context": True, "train_modules": ["context", "gaussian_conditional"]})
    summary = train(child, progress=False)
    before = torch.load(tmp_path / "parent" / "model.pth", weights_only=True)
    after = torch.load(tmp_path / "child" / "model.pth", weights_only=True)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert sorted({k.split(".")[0] for k in set(after) - set(before)}) == ["context"]
    # its last layer starts at zero; both halves trained: the means' rows (the gradient the noise of a
    # gaussian_conditional in training mode gives; rounding gives none) and the scales'
    for group in (0, 1):
        d_means, d_scales = after[f"context.params.{group}.4.weight"].chunk(2)
        assert d_means.abs().sum() > 0 and d_scales.abs().sum() > 0
    assert summary["history"][0]["losses"].keys() == {"rate"}
    from icm.codecs.icm_codec import ICMCodec

    codec = ICMCodec(checkpoint=str(tmp_path / "child" / "model.pth"), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert codec.net.context is not None and codec.from_bitstream(codec.to_bitstream(image, rate=0.5)).shape == image.shape
    train(config("next", init=str(tmp_path / "child"), codec={"train_modules": ["g_s"]}), progress=False)
    assert "context.spatial.0.weight" in torch.load(tmp_path / "next" / "model.pth", weights_only=True)
    # the codec's own weights (here the child's) have a context, the init has none: the run has none
    own = {"options": {"checkpoint": str(tmp_path / "child" / "model.pth")}, "train_modules": ["context"]}
    with pytest.raises(UserError, match="no submodule 'context'"):
        train(config("plain", init=str(tmp_path / "parent"), codec=own), progress=False)


def test_a_run_saved_before_a_config_key_existed_still_resumes():
    """A finished chain link must not be refused after icm gains a config key: it trained with the default."""
    from icm.training.loop import _changed_keys, plain

    now = plain(parse_config({"codec": {"name": "icm-omni", "rates": [0.0, 1.0]}, "losses": {"rate": 1.0}}).to_dict())
    saved = {k: v for k, v in now.items() if k != "warmup_steps"}
    saved["codec"] = {k: v for k, v in now["codec"].items() if k not in ("task_rate_weights", "new_low_gains")}
    assert _changed_keys(saved, now) == []
    saved["codec"]["rate_power"] = 3.0
    assert _changed_keys(saved, now) == ["codec"]


def test_shipped_training_configs_parse(icm_plugins):
    from icm.training.schedules import schedule_registry

    configs = sorted((REPO / "configs" / "train").glob("*.toml"))
    assert configs
    for _, cfg in (run for path in configs for run in load_stages(path)):
        for term, spec in cfg.losses.items():
            L.build_loss(term, spec.options)
        assert cfg.schedule in schedule_registry()
        assert {t.partition(":")[2] for t in cfg.losses} - {""} <= {t.name for t in cfg.tasks}


def test_config_errors_are_one_line_user_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('epochz = 3\n[codec]\nname = "x"\n[losses]\nmse = 1\n')
    with pytest.raises(UserError, match="unknown keys"):
        load_config(bad)
    with pytest.raises(UserError, match="losses"):
        parse_config({"codec": {"name": "x"}})
    with pytest.raises(UserError, match="rate_lambdas"):
        parse_config({"codec": {"name": "x", "rates": [0.1], "rate_lambdas": [1, 2]}, "losses": {"mse": 1}})
    with pytest.raises(UserError, match="rate_lambdas needs one value > 0"):  # log-interpolated: 0 has no log
        parse_config({"codec": {"name": "x", "rates": [0.1, 0.9], "rate_lambdas": [0, 2]}, "losses": {"mse": 1}})


DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import toy_task
from icm.plugins import get_plugins
from icm.training.config import parse_config
from icm.training.loop import train

get_plugins().register_plugin(toy_task, "toy")
cfg = parse_config({{"codec": {{"name": "bmshj2018-factorized", "quality": 1, "options": {{"weights": "random"}}}},
                    "tasks": ["colour"], "losses": {{"rate": 0.01, "mse": 1.0, "task:colour": 0.1}},
                    "dataset": {dataset!r}, "epochs": 1, "batch_size": 2, "eval_batch_size": 2, "out": {out!r}}})
train(cfg, progress=False)
"""


def test_torchrun_two_ranks_gloo(shapes, tmp_path):
    script = tmp_path / "ddp_train.py"
    out = tmp_path / "ddp"
    script.write_text(DDP_SCRIPT.format(tests=str(REPO / "tests"), dataset=str(shapes), out=str(out)))
    import socket

    with socket.socket() as sock:  # a free port rather than a fixed one, which a lingering run may hold
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-3000:])
    log = json.loads((out / "log.json").read_text())
    assert log["world_size"] == 2 and [e["epoch"] for e in log["epochs"]] == [1]
    assert log["epochs"][0]["batches"] == 4  # 8 images / batch 2, 2 batches on each rank
    assert (out / "checkpoints" / "epoch_001.pth").is_file() and (out / "plot.png").is_file()
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert front and front[0]["bpp"] > 0
    assert np.isfinite(log["epochs"][0]["val"][0]["est_bpp"])
