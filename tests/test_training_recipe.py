"""icm train's recipe options (what scripts/train_omni_codec.py and friends had), the loss-kind hook,
non-finite steps, start weights and chains. Toy tasks and untrained codecs on a 64 px shapes set."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import toy_task
from icm import hookimpl
from icm.datasets import load_dataset
from icm.errors import UserError
from icm.tasks import Batch
from icm.training import codec as C
from icm.training import losses as L
from icm.training.config import CodecConfig, parse_config
from icm.training.data import augment, load_batch
from icm.training.loop import Run, TrainingDiverged, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from icm.datasets.shapes import generate

    root = tmp_path_factory.mktemp("shapes_recipe")
    generate(root, train=8, val=2, size=64)
    return root


def config(shapes, out, **extra):
    data = {"codec": {"name": "bmshj2018-factorized", "quality": 1, "options": {"weights": "random"}},
            "tasks": ["colour"], "losses": {"rate": 0.01, "mse": 1.0}, "dataset": str(shapes), "epochs": 1,
            "batch_size": 4, "eval_batch_size": 4, "out": str(out), "reevaluate": False}
    for key, value in extra.items():
        if key == "codec":
            data["codec"] = {**data["codec"], **value}
        else:
            data[key] = value
    return parse_config(data)


def omni(**codec):
    return {"name": "icm-omni", "options": {"weights": "random"}, "rates": [0.0, 1.0], "val_rates": [0.5], **codec}


class Fixed(toy_task.MeanColour):
    """The toy task with one feature level whose values the test sets."""

    name = "fixed"

    def __init__(self, *a, feats=None, maps=None, **kw):
        super().__init__(*a, **kw)
        self.feats, self.maps = feats, maps

    def features(self, x):
        return [self.feats[0] if not x.requires_grad and x.grad_fn is None else self.feats[1]]

    def objectness(self, x):
        return self.maps


def ctx_for(shapes, adapters, x=None, x_hat=None, n=2):
    ds = load_dataset(str(shapes), "train")
    for a in adapters.values():
        a.bind(ds)
    samples = ds.images[:n]
    x = load_batch(samples, "cpu") if x is None else x
    x_hat = (x + 0.1).requires_grad_() if x_hat is None else x_hat
    return L.Context(x, x_hat, {}, Batch(x, samples), adapters)


# -- rates: per sample, sampling power, λ placement, low-rate weight -----------------------------------
def test_per_sample_rates_follow_u_to_the_power():
    cfg = CodecConfig("icm-omni", rates=[0.0, 1.0], rate_sampling="uniform", per_sample_rates=True, rate_power=2.0)
    rate = C.sample_rate(cfg, True, n=5, generator=torch.Generator().manual_seed(3))
    u = torch.rand(5, generator=torch.Generator().manual_seed(3))
    assert rate.shape == (5,) and torch.allclose(rate, u ** 2)
    many = C.sample_rate(cfg, True, n=20000, generator=torch.Generator().manual_seed(0))
    assert float(many.mean()) == pytest.approx(1 / 3, abs=0.01)  # E[u²] = 1/3: low rates sampled more
    per_batch = CodecConfig("icm-omni", rates=[0.2, 0.6], rate_sampling="uniform")
    r = C.sample_rate(per_batch, True, n=5)
    assert isinstance(r, float) and 0.2 <= r <= 0.6
    assert C.sample_rate(per_batch, False) is None  # quality-indexed codecs have no rate


def test_lambda_scales_the_chosen_term_and_the_rate_weight_varies_with_alpha():
    rate = torch.tensor([0.0, 0.5, 1.0])
    lam = torch.tensor([0.0009, math.sqrt(0.0009 * 0.026), 0.026])  # log-linear between the two
    on_rate = CodecConfig("icm-omni", rates=[0.0, 1.0], rate_lambdas=[0.0009, 0.026])
    assert torch.allclose(C.term_factor(on_rate, "rate", rate), lam)
    assert C.term_factor(on_rate, "mse", rate) == 1.0
    on_dist = CodecConfig("icm-omni", rates=[0.0, 1.0], rate_lambdas=[0.0009, 0.026], lambda_on="distortion",
                          low_rate_weight=6.0)
    assert torch.allclose(C.term_factor(on_dist, "mse", rate), lam)
    assert torch.allclose(C.term_factor(on_dist, "rate", rate), torch.tensor([6.0, math.sqrt(6.0), 1.0]))
    assert C.term_factor(on_dist, "distill:det", rate) == 1.0
    assert C.term_factor(on_dist, "rate", None) == 1.0
    assert C.rate_lambda(on_dist, 0.5) == pytest.approx(math.sqrt(0.0009 * 0.026))


def test_task_rate_weights_scale_every_task_term_by_rate():
    rate = torch.tensor([0.0, 0.5, 1.0])
    cfg = CodecConfig("icm-omni", rates=[0.0, 1.0], rate_lambdas=[0.0009, 0.026], lambda_on="distortion",
                      low_rate_weight=6.0, task_rate_weights=[0.1, 1.0])
    weights = torch.tensor([0.1, math.sqrt(0.1), 1.0])  # log-linear, like λ
    for term in ("task:seg", "distill:cls", "objectness_distill:det"):
        assert torch.allclose(C.term_factor(cfg, term, rate), weights)
    assert torch.allclose(C.term_factor(cfg, "rate", rate), torch.tensor([6.0, math.sqrt(6.0), 1.0]))  # untouched
    assert torch.allclose(C.term_factor(cfg, "mse", rate), torch.tensor([0.0009, math.sqrt(0.0009 * 0.026), 0.026]))
    assert C.term_factor(cfg, "task:seg", None) == 1.0
    base = {"dataset": "shapes", "out": "o", "losses": {"rate": 1.0}}
    for bad in ([1.0], [0.0, 1.0]):
        with pytest.raises(UserError, match="task_rate_weights"):
            parse_config({**base, "codec": {"name": "icm-omni", "rates": [0.0, 1.0], "task_rate_weights": bad}})


def test_a_step_weighs_each_sample_by_its_own_factor(toy, shapes, tmp_path):
    cfg = config(shapes, tmp_path / "r", codec=omni(rate_lambdas=[0.001, 0.1], lambda_on="distortion",
                                                    low_rate_weight=4.0), task_scales={"colour": 3.0},
                 losses={"rate": 2.0, "mse": 1.0, "task:colour": 0.5})
    run = Run(cfg, progress=False)
    ctx = ctx_for(shapes, run.adapters)
    per_sample = torch.tensor([1.0, 3.0])
    run.losses = {"rate": lambda c: per_sample, "mse": lambda c: per_sample, "task:colour": lambda c: torch.tensor(0.7)}
    rate = torch.tensor([0.0, 1.0])
    v = run.term_values(ctx, ["rate", "mse", "task:colour"], rate)
    assert float(v["rate"]) == pytest.approx(2.0 * (1.0 * 4.0 + 3.0 * 1.0) / 2)  # w · mean(4^(1-α) · bpp)
    assert float(v["mse"]) == pytest.approx((1.0 * 0.001 + 3.0 * 0.1) / 2)  # mean(λ(α) · mse)
    assert float(v["task:colour"]) == pytest.approx(0.7 * 0.5 * 3.0)  # weight × task scale


# -- learning rate: cosine per step, warm-up, stop_after ----------------------------------------------
def test_cosine_lr_with_warmup_and_stop_after(toy, shapes, tmp_path):
    cfg = config(shapes, tmp_path / "lr", epochs=5, steps_per_epoch=2, lr=1e-3, lr_schedule="cosine",
                 lr_steps=8, warmup_steps=2, stop_after=3)
    run = Run(cfg, progress=False)
    assert run.lr_at(0, 1) == pytest.approx(1e-3 * 0.5)  # warm-up: (0+1)/2 of the cosine's 1e-3
    assert run.lr_at(1, 1) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 8)))
    assert run.lr_at(4, 3) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert run.lr_at(8, 5) == pytest.approx(0.0, abs=1e-12)
    summary = run.run()
    assert summary["trained_epochs"] == [1, 2]  # 3 steps: 2 + 1, then stop
    assert [e["steps"] for e in summary["history"]] == [2, 1]
    assert summary["history"][1]["lr"] == pytest.approx(run.lr_at(2, 2))
    exp = config(shapes, tmp_path / "exp", lr=1e-3, lr_decay=0.5)
    assert Run(exp, progress=False).lr_at(17, 3) == pytest.approx(2.5e-4)  # per epoch, as before


# -- random crops and flips ---------------------------------------------------------------------------
def test_random_crops_are_windows_and_flips_mirror_whole_samples():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 40)
    crop = augment(x, crop=16)
    assert crop.shape == (6, 3, 16, 16)
    found = [(t, l) for t in range(17) for l in range(25) if torch.equal(x[..., t:t + 16, l:l + 16], crop)]
    assert len(found) == 1  # one window, the same for the whole batch
    flipped = augment(x, hflip=True)
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)
    with pytest.raises(UserError, match="larger than the images"):
        augment(x, crop=64)


def test_crop_with_ground_truth_terms_is_refused(shapes, tmp_path):
    with pytest.raises(UserError, match="crop"):
        config(shapes, tmp_path, crop=32, losses={"task:colour": 1.0})


# -- distillation: relative, nearest-resized weights, GT boxes --------------------------------------------
def test_relative_distillation_divides_by_the_targets_energy(shapes):
    g = torch.Generator().manual_seed(0)
    f, h = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ctx = ctx_for(shapes, {"fixed": Fixed(feats=(f, h))})
    plain = float(L.build_loss("distill:fixed")(ctx))
    rel = float(L.build_loss("distill:fixed", {"relative": True})(ctx))
    assert plain == pytest.approx(float(((f - h) ** 2).mean()), rel=1e-6)
    assert rel == pytest.approx(float(((f - h) ** 2).mean() / f.pow(2).mean()), rel=1e-6)
    scaled = ctx_for(shapes, {"fixed": Fixed(feats=(10 * f, 10 * h))})
    assert float(L.build_loss("distill:fixed", {"relative": True})(scaled)) == pytest.approx(rel, rel=1e-5)
    assert float(L.build_loss("distill:fixed")(scaled)) == pytest.approx(100 * plain, rel=1e-5)


def test_objectness_weights_nearest_resized_to_the_level(shapes):
    f = torch.ones(2, 1, 4, 4)
    o = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.1
    o[:, :, :4, :4] += 0.9  # objects in the top-left quarter, at twice the level's resolution
    ctx = ctx_for(shapes, {"fixed": Fixed(feats=(f, f), maps=[o])})
    (w,) = L.build_loss("objectness_distill:fixed", {"resize": "nearest"}).weights(ctx, [f])
    expect = F.interpolate(o, size=(4, 4), mode="nearest")
    expect = (expect + 1e-6) / (expect.mean(dim=(2, 3), keepdim=True) + 1e-6)
    assert torch.allclose(w, expect) and float(w[:, :, :2, :2].mean()) > 3.0
    (bil,) = L.build_loss("objectness_distill:fixed").weights(ctx, [f])
    assert not torch.allclose(bil, w)  # the default stays bilinear
    with pytest.raises(UserError, match="resize"):
        L.build_loss("objectness_distill:fixed", {"resize": "cubic"})


def test_gtbox_weights_nearest_and_normalised_come_from_the_dataset_annotations(shapes):
    f = torch.ones(2, 1, 16, 16)
    ctx = ctx_for(shapes, {"fixed": Fixed(feats=(f, f))})
    loss = L.build_loss("gtbox_distill:fixed", {"resize": "nearest", "normalise": True, "floor": 0.1})
    (w,) = loss.weights(ctx, [f])
    anns = json.loads((shapes / "annotations" / "instances_train.json").read_text())["annotations"]
    for i, s in enumerate(ctx.batch.samples):
        mask = torch.zeros(1, 1, 64, 64)
        for a in anns:
            if a["image_id"] == s["id"] and not a.get("iscrowd", 0):
                x, y, bw, bh = a["bbox"]
                mask[..., math.floor(y):math.ceil(y + bh), math.floor(x):math.ceil(x + bw)] = 1.0
        expect = 0.1 + 0.9 * F.interpolate(mask, size=(16, 16), mode="nearest")[0, 0]
        assert torch.allclose(w[i, 0], expect / expect.mean())
        assert float(w[i].mean()) == pytest.approx(1.0, rel=1e-5)


# -- task losses: running-mean normalisation ------------------------------------------------------------
def test_task_loss_divided_by_its_running_mean_which_survives_a_resume(shapes):
    values = iter([2.0, 4.0, 1.0])

    class Scripted(toy_task.MeanColour):
        def loss(self, decoded, batch):
            return decoded.sum() * 0 + next(values)

    ctx = ctx_for(shapes, {"colour": Scripted()})
    loss = L.build_loss("task:colour", {"normalise": True, "momentum": 0.9})
    assert float(loss(ctx)) == pytest.approx(1.0)  # the first value is its own mean
    assert float(loss(ctx)) == pytest.approx(4.0 / (0.9 * 2.0 + 0.1 * 4.0))
    again = L.build_loss("task:colour", {"normalise": True, "momentum": 0.9})
    again.load_state_dict(loss.state_dict())
    running = 0.9 * 2.2 + 0.1 * 1.0
    assert float(again(ctx)) == pytest.approx(1.0 / running)
    assert float(L.build_loss("task:colour")(ctx_for(shapes, {"colour": toy_task.MeanColour()}))) > 0


# -- non-finite steps --------------------------------------------------------------------------------------
class Flaky(L.Loss):
    """Not finite at the listed calls (counted from 0), else the pixel MSE."""

    kind = "flaky"

    def __init__(self, task=None, bad=(1,), every=False):
        super().__init__(task)
        self.bad, self.every, self.calls = set(bad), bool(every), 0

    def __call__(self, ctx):
        i, self.calls = self.calls, self.calls + 1
        value = ((ctx.x_hat - ctx.x) ** 2).mean()
        return value * float("nan") if self.every or i in self.bad else value


class FlakyPlugin:
    @hookimpl
    def icm_register_losses(self, register):
        register("flaky", Flaky, task="none", description="not finite at chosen steps")


def test_a_plugin_loss_kind_is_used_by_a_config_and_non_finite_steps_are_skipped(
        toy, icm_register_plugin, shapes, tmp_path):
    plugins = icm_register_plugin(FlakyPlugin(), name="flaky-plugin")
    assert plugins.losses.entry("flaky").plugin == "flaky-plugin"
    assert plugins.losses.entry("rate").plugin == "icm.training.builtin_losses"
    cfg = config(shapes, tmp_path / "flaky", losses={"rate": 0.01, "flaky": {"weight": 1.0, "bad": [1]}},
                 steps_per_epoch=3, epochs=2)
    before = [p.detach().clone() for p in Run(cfg, progress=False).main]
    summary = train(cfg, progress=False)
    first, second = summary["history"]
    assert first["skipped_steps"] == 1 and first["steps"] == 2 and second["skipped_steps"] == 0
    assert math.isfinite(first["losses"]["flaky"]) and math.isfinite(first["total"])
    state = torch.load(Path(summary["out"]) / "model.pth", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert any(not torch.equal(a, state[k]) for a, k in zip(before, [n for n, p in Run(cfg, progress=False)
                                                                       .trainable.net.named_parameters()
                                                                       if not n.endswith("quantiles")]))
    log = json.loads((Path(summary["out"]) / "log.json").read_text())
    assert log["epochs"][0]["skipped_steps"] == 1


def test_an_epoch_without_a_finite_step_stops_with_exit_1_and_saves_nothing(toy, icm_register_plugin, icm_cli,
                                                                           shapes, tmp_path):
    icm_register_plugin(FlakyPlugin(), name="flaky-plugin")
    out = tmp_path / "nan"
    path = tmp_path / "nan.toml"
    path.write_text(f'dataset = "{shapes}"\ntasks = ["colour"]\nepochs = 2\nbatch_size = 4\nout = "{out}"\n'
                    f'reevaluate = false\n[codec]\nname = "bmshj2018-factorized"\nquality = 1\n'
                    f'options = {{ weights = "random" }}\n[losses]\nrate = 0.01\nflaky = {{ every = true }}\n')
    result = icm_cli("train", path, "--no-progress")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not finite" in lines[0] and "Traceback" not in result.stderr
    assert not (out / "checkpoints").exists() and not (out / "model.pth").exists()
    with pytest.raises(TrainingDiverged):
        train(config(shapes, tmp_path / "nan2", losses={"flaky": {"every": True}}), progress=False)


def test_a_duplicate_loss_kind_is_reported_and_the_plugin_skipped(toy, icm_register_plugin):
    class Clash:
        @hookimpl
        def icm_register_losses(self, register):
            register("mine", Flaky, task="none")
            register("rate", Flaky, task="none")

    plugins = icm_register_plugin(Clash(), name="clash")
    names = plugins.losses.names()
    assert "mine" not in names and plugins.losses.entry("rate").plugin == "icm.training.builtin_losses"
    assert any(f.plugin == "clash" and f.stage == "icm_register_losses" and "already registered" in f.error
               for f in plugins.failures)
    with pytest.raises(UserError, match="unknown loss 'mine'"):
        L.build_loss("mine")


# -- start weights and chains ---------------------------------------------------------------------------
def test_init_from_a_file_a_run_folder_or_scratch(toy, shapes, tmp_path):
    first = train(config(shapes, tmp_path / "a", init="scratch", seed=5), progress=False)
    a = torch.load(Path(first["out"]) / "model.pth", weights_only=True)
    second_cfg = config(shapes, tmp_path / "b", init=str(tmp_path / "a"), epochs=1, lr=0.0)
    run = Run(second_cfg, progress=False)
    start = run.trainable.net.state_dict()
    assert all(torch.equal(start[k], a[k]) for k in a if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length")))
    scratch = Run(config(shapes, tmp_path / "c", init="scratch", seed=5), progress=False).trainable.net.state_dict()
    other = Run(config(shapes, tmp_path / "d", init="scratch", seed=6), progress=False).trainable.net.state_dict()
    assert not torch.equal(scratch["g_a.0.weight"], other["g_a.0.weight"])  # seeded
    with pytest.raises(UserError, match="no such file"):
        Run(config(shapes, tmp_path / "e", init=str(tmp_path / "missing.pth")), progress=False)
    with pytest.raises(UserError, match="no model.pth"):
        Run(config(shapes, tmp_path / "f", init=str(tmp_path)), progress=False)
    bad = tmp_path / "bad.pth"
    torch.save({"nope.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="does not fit"):
        Run(config(shapes, tmp_path / "g", init=str(bad)), progress=False)


def test_train_modules_freeze_the_rest_in_eval_mode(toy, shapes, tmp_path):
    cfg = config(shapes, tmp_path / "aux", codec=omni(beta=0.0, train_modules=["aux_a", "aux_s", "gain_aux",
                                                                                  "aux_bottleneck", "aux_r"]),
                 losses={"rate": {"weight": 1.0, "latents": ["aux.aux"]}, "mse": 1.0})
    run = Run(cfg, progress=False)
    net = run.trainable.net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run.trainable.train()
    assert not net.g_a.training and net.aux_a.training
    summary = run.run()
    after = torch.load(Path(summary["out"]) / "model.pth", weights_only=True)
    primary = [k for k in before if k.split(".")[0] in ("g_a", "g_s", "h_a", "gain_y") and "bound" not in k]
    assert primary and all(torch.equal(before[k], after[k]) for k in primary)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("aux_a."))
    with pytest.raises(UserError, match="no submodule"):
        Run(config(shapes, tmp_path / "x", codec=omni(train_modules=["nope"])), progress=False)


def test_a_chain_on_the_command_line_runs_in_order(toy, icm_cli, shapes, tmp_path):
    def write(name, extra):
        p = tmp_path / f"{name}.toml"
        p.write_text(f'dataset = "{shapes}"\ntasks = ["colour"]\nepochs = 1\nbatch_size = 4\nreevaluate = false\n'
                     f'out = "{tmp_path / name}"\n{extra}\n[codec]\nname = "bmshj2018-factorized"\nquality = 1\n'
                     f'options = {{ weights = "random" }}\n[losses]\nrate = 0.01\nmse = 1.0\n')
        return p

    a = write("a", 'init = "scratch"')
    b = write("b", f'init = "{tmp_path / "a"}"\nexport = "{tmp_path / "ship" / "quality1.pth"}"')
    result = icm_cli("train", a, b, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.index(f"== {a}") < result.stdout.index(f"== {b}")
    log = json.loads((tmp_path / "b" / "log.json").read_text())
    assert log["init"]["init"] == str(tmp_path / "a")
    shipped = torch.load(tmp_path / "ship" / "quality1.pth", weights_only=True)
    assert shipped["g_a.0.weight"].dtype == torch.float16
    refused = icm_cli("train", a, b, "--out", tmp_path / "x")
    assert refused.exit_code == 2 and "one config" in refused.stderr


def test_a_recipe_runs_its_stages_in_order_and_one_with_stage(toy, icm_cli, shapes, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'out = "{tmp_path / "written"}"\ndataset = "nowhere"\ntasks = ["colour"]\nepochs = 1\n'
                      'batch_size = 4\nreevaluate = false\n[codec]\nname = "bmshj2018-factorized"\nquality = 1\n'
                      'options = { weights = "random" }\n[losses]\nrate = 0.01\nmse = 1.0\n'
                      '[[stage]]\nname = "first"\ninit = "scratch"\nexport = "ship/quality1.pth"\n'
                      '[[stage]]\nname = "second"\nlosses = { rate = 0.02, mse = 1.0 }\n')
    out = tmp_path / "o"

    def one_error_line(result, text):
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and text in lines[0], result.stderr

    one_error_line(icm_cli("train", recipe, "--stage", "second", "--out", out), "stage first writes it")
    one_error_line(icm_cli("train", recipe, "--stage", "third"), "its stages: first, second")
    one_error_line(icm_cli("train", recipe, "--tasks", "det"), "no run here trains for det")
    # --dataset applies to every stage (the recipe's own dataset does not exist); --out moves them all
    result = icm_cli("train", recipe, "--dataset", shapes, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.index(f"== first -> {out / 'first'}") < result.stdout.index(f"== second -> {out / 'second'}")
    assert json.loads((out / "second" / "log.json").read_text())["init"]["init"] == str(out / "first")
    assert (out / "first" / "export.pth").is_file() and not (tmp_path / "written").exists()
    first = (out / "first" / "model.pth").read_bytes()
    # one stage resumes on its own: second trains a second epoch, first is left as it was
    again = icm_cli("train", recipe, "--stage", "second", "--epochs", "2", "--dataset", shapes, "--out", out, "--no-progress")
    assert again.exit_code == 0, again.stderr
    assert "resumed at epoch 2" in again.stdout and "== " not in again.stdout
    assert len(json.loads((out / "second" / "log.json").read_text())["epochs"]) == 2
    assert (out / "first" / "model.pth").read_bytes() == first


def test_the_epoch_summary_line_prints_missing_values_as_dashes():
    from icm.training.loop import _summary_line

    line = _summary_line({"epoch": 1, "total": 0.5, "skipped_steps": 2,
                          "val": [{"rate_key": "quality=2", "est_bpp": None, "score": None}]})
    assert line == "epoch 1: loss 0.5 (2 non-finite step(s) skipped); quality=2: - bpp, score -"
