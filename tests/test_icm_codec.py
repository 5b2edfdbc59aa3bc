"""icm's own codec (icm.codecs.icm_codec): architecture size, container round trip, continuous rate,
aux stream and beta, cross-process determinism, gradients, checkpoint errors. CPU, well under a minute."""

import numpy as np
import pytest
import torch

from decode_probe import assert_same_decode, save_job
from icm.bitstream import Bitstream
from icm.codecs.icm_codec import DEFAULT_CONFIG, STRIDE, GainUnit, ICMCodec, ICMNet, _interpolate
from icm.codecs.learned import pad, to_image, to_tensor
from icm.codecs.trainable import freeze_all_but, split_parameters
from icm.errors import BitstreamError, CodecUnavailable, UserError

SMALL = dict(N=32, M=32, Nh=32, aux_channels=32, aux_latent=16, res_channels=16)
RATES = (0.0, 0.3, 0.6, 1.0)


@pytest.fixture(scope="module")
def images():
    """64x96 crops of scikit-image photographs, plus an odd 61x90 one to exercise padding."""
    from skimage import data

    crops = [data.astronaut()[100:164, 100:196], data.coffee()[100:164, 200:296], data.chelsea()[10:71, 100:190]]
    return [np.ascontiguousarray(c) for c in crops]


def _mse(a, b):
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


def _eval_forward(codec, img, rate, beta=1.0):
    with torch.no_grad():
        out = codec.net(pad(to_tensor(img, codec.device), STRIDE), rate, beta)
    return to_image(out["x_hat"][..., :img.shape[0], :img.shape[1]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small ICMNet trained briefly on random crops: stage 1 (MSE + rate at 6 rates, per-sample
    mixed in each batch), then stage 2 (aux branch only, MSE at beta=0 + aux rate, one lambda). Returns the two
    checkpoint paths (stage 1 has the untrained aux branch)."""
    from skimage import data

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    sources = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255
               for im in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]

    def batch(n=4, s=64):
        out = []
        for _ in range(n):
            im = sources[int(torch.randint(len(sources), (1,), generator=gen))]
            i = int(torch.randint(im.shape[1] - s, (1,), generator=gen))
            j = int(torch.randint(im.shape[2] - s, (1,), generator=gen))
            out.append(im[:, i:i + s, j:j + s])
        return torch.stack(out)

    def bits(liks):
        return sum(-torch.log2(v).sum((1, 2, 3)) for v in liks.values())

    net = ICMNet(**SMALL)
    quantiles = torch.optim.Adam(net.parameter_groups()["quantiles"], lr=1e-2)
    folder = tmp_path_factory.mktemp("icm_codec")
    paths = []
    primary = [name for name, _ in net.named_children() if name not in ICMNet.AUX_MODULES]
    # lr 3e-3 made stage 1 oscillate (MSE 1300-4100 after 300 steps) and the aux checks flaky
    for stage, steps, lr in ((1, 300, 5e-4), (2, 150, 1e-3)):
        # as `icm train` chooses them with codec.train_modules: the primary branch, then the aux branch
        frozen = freeze_all_but(net, primary if stage == 1 else list(ICMNet.AUX_MODULES))
        net.train()
        for m in frozen:
            m.eval()
        opt = torch.optim.Adam(split_parameters(net, frozen)[0], lr=lr)
        for _ in range(steps):
            x = batch()
            rate = torch.randint(0, 6, (x.shape[0],), generator=gen).float() / 5
            # stage 1: lambda 0.002 .. 0.05, log-spaced along the rate; stage 2: one lambda, so that the
            # shared residual network is not trained for the high rates only
            lam = 0.002 * 25 ** rate if stage == 1 else torch.full_like(rate, 0.05)
            if stage == 1:
                out = net(x, rate, aux=False)
                rate_term = bits(out["likelihoods"])
            else:
                out = net(x, rate, beta=0.0)
                rate_term = bits(out["aux_likelihoods"])
            mse = ((out["x_hat"] - x) ** 2).mean((1, 2, 3))
            loss = (rate_term / (x.shape[2] * x.shape[3]) + lam * 255 ** 2 * mse).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            quantiles.zero_grad()
            net.aux_loss().backward()
            quantiles.step()
        paths.append(folder / f"stage{stage}.pth")
        torch.save(net.state_dict(), paths[-1])
    return paths


# -- architecture ------------------------------------------------------------------------------------
def test_default_parameter_count_is_le_sized():
    groups = ICMNet().parameter_groups()
    counts = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    total = sum(counts.values())
    print(f"ICMNet parameters: {counts}, total {total}")
    assert 1_000_000 <= counts["primary"] + counts["quantiles"] <= 2_000_000  # Le: ~1.5M
    assert 1_000_000 <= total <= 2_000_000
    assert counts["aux_branch"] < counts["primary"] / 3
    no_aux = ICMNet(aux=False)
    assert sum(p.numel() for p in no_aux.parameters()) == counts["primary"] + 3 * 64  # + z quantiles
    assert sum(p.numel() for p in ICMNet(context=True).context.parameters()) == 273_344  # docs/icm_codec.md


def test_latent_is_one_eighth_and_a_context_model_reads_it_in_four_parallel_steps():
    """Without a context model y is read in one step; with one (as the shipped icm-omni has), in two
    channel groups x two checkerboard halves, each element exactly once: not position by position."""
    net = ICMNet(**SMALL).eval()
    out = net(torch.rand(1, 3, 64, 96), 0.5)
    y = out["y"]
    assert y.shape[-2:] == (8, 12) and out["x_hat"].shape == (1, 3, 64, 96)
    assert net.context is None and len(net._y_steps(y)) == 1
    net.set_context(True)
    steps = net._y_steps(y)
    assert len(steps) == 4
    reads = torch.zeros(y.shape[1:], dtype=torch.int)
    for channels, mask in steps:
        reads[channels] += mask
    assert (reads == 1).all()


def test_the_shipped_icm_omni_reads_y_in_four_context_steps_and_decodes_to_its_forward(images):
    """What docs/icm_codec.md says of the shipped weights: a context model that reads y in four steps
    (two channel groups x two checkerboard halves, each element once), and a file at each of its eight
    gain levels decodes to the eval forward's pixels (within one grey level: the rounding of x_hat)."""
    codec = ICMCodec(device="cpu")
    net = codec.net
    assert net.context is not None and net.config["num_gains"] == 8
    img = images[0]
    with torch.no_grad():
        y = net(pad(to_tensor(img, "cpu"), STRIDE), 0.5)["y"]
    steps = net._y_steps(y)
    reads = torch.zeros(y.shape[1:], dtype=torch.int)
    for channels, mask in steps:
        reads[channels] += mask
    assert len(steps) == 4 and (reads == 1).all()
    for rate in codec.default_rates():
        decoded = codec.decode(codec.encode(img, **rate))
        assert np.abs(decoded.astype(int) - _eval_forward(codec, img, rate["rate"]).astype(int)).max() <= 1, rate


def test_a_context_model_decodes_what_the_forward_gives_at_the_bits_it_estimates(images):
    """y coded in four steps (two channel groups, each in two checkerboard halves), every step's
    entropy model refined from the steps before it. The file decodes to the eval forward's x_hat, and
    its size is the likelihoods' estimate."""
    torch.manual_seed(2)
    net = ICMNet(**SMALL, context=True).eval()
    with torch.no_grad():  # a context that is not the identity (its residual layers start at zero)
        for p in net.context.params:
            p[-1].weight.normal_(0, 0.05)
    net.update(force=True)
    x = pad(to_tensor(images[2], "cpu"), STRIDE)
    for rate in (0.0, 0.6, 1.0):
        streams = net.compress(x, rate)
        with torch.no_grad():
            out = net(x, rate)
        bits = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values())
        assert torch.allclose(net.decompress(streams, x.shape[-2:], rate), out["x_hat"], atol=1e-4)
        assert abs(len(streams["main"]) * 8 - bits) <= 0.05 * bits + 96
    # weights tell whether there is a context: from_state_dict finds it, fit_state adds and removes it
    assert ICMNet.from_state_dict(net.state_dict()).config["context"]
    plain = ICMNet(**SMALL)
    plain.fit_state(net.state_dict())
    plain.load_state_dict(net.state_dict())
    plain.fit_state(ICMNet(**SMALL).state_dict())
    assert plain.context is None and not plain.config["context"]


def test_each_context_step_uses_only_what_the_decoder_has_read_before_it():
    """What a decoder cannot know must not move an entropy model: changing the values one step reads
    leaves that step's means and scales, and every earlier step's, as they were."""
    torch.manual_seed(4)
    context = ICMNet(**SMALL, context=True).context.eval()
    with torch.no_grad():
        for p in context.params:
            p[-1].weight.normal_(0, 0.1)
    means, scales = torch.randn(2, 1, SMALL["M"], 4, 6)
    values = [torch.randn(1, SMALL["M"] // 2, 4, 6) for _ in range(4)]

    def run(changed_from):
        seen = []

        def read(channels, mask, m, s):
            seen.append((channels.start, bool(mask[0, 0]), m.clone(), s.clone()))
            k = len(seen) - 1
            return values[k] + (5.0 if k >= changed_from else 0.0)

        with torch.no_grad():
            context(means, scales, read)
        return seen

    base = run(4)
    C = SMALL["M"] // 2
    assert [(c, a) for c, a, _, _ in base] == [(0, True), (0, False), (C, True), (C, False)]
    anchor = context.anchors(4, 6, "cpu")
    assert anchor.sum() == 12 and not anchor[0, 1] and anchor[1, 1]
    for k in range(4):
        other = run(k)
        for step in range(k + 1):
            assert torch.equal(other[step][2], base[step][2]) and torch.equal(other[step][3], base[step][3])
        if k < 3:  # and what it read does move the next step's
            assert not torch.equal(other[k + 1][2], base[k + 1][2])


def test_a_new_context_starts_as_the_plain_hyperprior(images):
    """Added to trained weights, the context must not change them: the same latents, the same bits
    (in another order), the same pixels."""
    torch.manual_seed(3)
    plain = ICMNet(**SMALL).eval()
    ctx = ICMNet(**SMALL, context=True).eval()
    missing = ctx.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("context.") for k in missing)
    plain.update(force=True)
    ctx.update(force=True)
    x = pad(to_tensor(images[0], "cpu"), STRIDE)
    for rate in (0.0, 1.0):
        a, b = plain.compress(x, rate), ctx.compress(x, rate)
        assert abs(len(a["main"]) - len(b["main"])) <= 8
        assert torch.equal(plain.decompress(a, x.shape[-2:], rate), ctx.decompress(b, x.shape[-2:], rate))


def test_gains_are_monotone_in_rate_by_construction():
    unit = GainUnit(6, 8)
    with torch.no_grad():  # arbitrary learned values, including negative step logits
        unit.log_steps.normal_(0, 3)
        unit.log_gain0.normal_(0, 1)
    alphas = torch.linspace(0, 1, 101)
    gains, inv = unit(alphas)
    gains = gains[..., 0, 0]
    assert (gains[1:] >= gains[:-1]).all()
    # at alpha = n / (N - 1) the n-th vector itself, in between the geometric interpolation
    table = unit.log_table().exp()
    assert torch.allclose(unit(torch.tensor([0.4]))[0][0, :, 0, 0], table[2], rtol=1e-6)
    mid = unit(torch.tensor([0.5]))[0][0, :, 0, 0]
    assert torch.allclose(mid, (table[2] * table[3]).sqrt(), rtol=1e-5)
    assert inv.shape == (101, 8, 1, 1)
    assert _interpolate(torch.ones(1, 3), torch.tensor([0.3, 0.9])).shape == (2, 3)


def test_batch_with_mixed_rates_matches_per_image_forwards():
    torch.manual_seed(1)
    net = ICMNet(**SMALL).eval()
    x = torch.rand(3, 3, 64, 64)
    rates = torch.tensor([0.0, 0.45, 1.0])
    with torch.no_grad():
        batched = net(x, rates, beta=torch.tensor([1.0, 0.5, 0.0]))
        for i, (r, b) in enumerate(((0.0, 1.0), (0.45, 0.5), (1.0, 0.0))):
            single = net(x[i:i + 1], r, b)
            assert torch.allclose(batched["x_hat"][i], single["x_hat"][0], atol=1e-4)
    with pytest.raises(ValueError, match="rate"):
        net(x, 1.5)


# -- the codec -----------------------------------------------------------------------------------------
def test_round_trip_equals_the_eval_forward(images):
    codec = ICMCodec(weights="random", device="cpu")
    for img in images[:1] + images[2:]:
        for rate in (0.0, 0.25, 0.5, 0.77, 1.0):
            bs = codec.to_bitstream(img, rate=rate)
            assert bs.rate == {"rate": rate} and sorted(bs.streams) == ["main"]
            decoded = codec.from_bitstream(Bitstream.from_bytes(bs.to_bytes()))
            assert decoded.shape == img.shape and decoded.dtype == np.uint8
            assert np.abs(decoded.astype(int) - _eval_forward(codec, img, rate).astype(int)).max() <= 1


def test_rate_control_is_continuous(images):
    codec = ICMCodec(weights="random", device="cpu")
    assert codec.rate_control.continuous and codec.default_rates()[0] == {"rate": 0.0}
    assert codec.check_rate(rate=0.123456789) == {"rate": 0.123457}
    for bad in (dict(rate=1.5), dict(quality=3), dict(rate=0.5, scale=0.5)):
        with pytest.raises(UserError):
            codec.check_rate(**bad)
    assert codec.estimate_bits(images[0], {"rate": 0.5}) > 0


def test_the_default_sweep_is_the_weights_gain_levels(tmp_path):
    """Between two levels the gains are interpolated, which training never saw: the default points sit
    on the levels, as many as the weights have, and `icm codecs` lists the shipped weights' ones."""
    from icm.builtin.codecs import SHIPPED_GAIN_LEVELS
    from icm.codecs import describe_codec, open_codec
    from icm.plugins import get_plugins

    net = ICMNet(**{**DEFAULT_CONFIG, "num_gains": 4})
    torch.save(net.state_dict(), tmp_path / "four.pth")
    codec = ICMCodec(checkpoint=str(tmp_path / "four.pth"), device="cpu")
    assert codec.default_rates() == [{"rate": 0.0}, {"rate": 0.3333}, {"rate": 0.6667}, {"rate": 1.0}]
    assert codec.rate_control.default_points == (0.0, 0.3333, 0.6667, 1.0)
    for name in SHIPPED_GAIN_LEVELS:
        listed = describe_codec(get_plugins().codecs.entry(name))["default_points"]
        assert listed == [r["rate"] for r in open_codec(name).default_rates()], name
        assert len(listed) == SHIPPED_GAIN_LEVELS[name] and listed[0] == 0.0 and listed[-1] == 1.0


def test_a_checkpoint_with_too_many_gain_levels_is_refused(tmp_path):
    """Each level is a default rate point: a crafted file must not plan a million of them."""
    from icm.codecs.icm_codec import MAX_GAIN_LEVELS

    state = ICMNet(**DEFAULT_CONFIG).state_dict()
    levels = MAX_GAIN_LEVELS + 1
    for unit in ("gain_y", "gain_z"):
        channels = state[f"{unit}.log_gain0"].shape[0]
        state[f"{unit}.log_steps"] = torch.zeros(levels - 1, channels)
        state[f"{unit}.log_inv_gain"] = torch.zeros(levels, channels)
    torch.save(state, tmp_path / "many.pth")
    with pytest.raises(ValueError, match="gain levels"):
        ICMNet.from_state_dict(state)
    with pytest.raises(UserError, match="does not fit"):
        ICMCodec(checkpoint=str(tmp_path / "many.pth"), device="cpu").default_rates()


def test_bpp_is_monotonic_in_rate_after_a_little_training(trained, images):
    codec = ICMCodec(checkpoint=str(trained[0]), device="cpu")
    for img in images:
        bpp = [codec.to_bitstream(img, rate=r).bpp() for r in RATES]
        assert all(a <= b for a, b in zip(bpp, bpp[1:])), bpp
        assert bpp[-1] > 1.3 * bpp[0], bpp  # the knob spans a real range
        # the estimate follows the real size
        est = [codec.estimate_bits(img, {"rate": r}) / (img.shape[0] * img.shape[1]) for r in RATES]
        assert all(a <= b for a, b in zip(est, est[1:])), est


def test_aux_stream_task_only_decode_and_beta(trained, images):
    full = {beta: ICMCodec(checkpoint=str(trained[1]), device="cpu", aux=True, beta=beta) for beta in (1.0, 0.5, 0.0)}
    task = ICMCodec(checkpoint=str(trained[1]), device="cpu")  # aux=False: codes and reads main
    assert len({c.weights_hash({}) for c in (*full.values(), task)}) == 1
    gains = []
    for img in images:
        for rate in (0.3, 1.0):
            bs = full[0.0].to_bitstream(img, rate=rate)
            assert sorted(bs.streams) == ["aux", "main"]
            task_only = Bitstream.from_bytes(bs.to_bytes(["main"]))
            assert bs.bpp(["main"]) == task_only.bpp() < bs.bpp()
            assert task_only.streams == task.to_bitstream(img, rate=rate).streams  # the same main bytes
            x1 = task.from_bitstream(task_only)
            # beta = 1 ignores aux; without aux every beta gives x_hat1
            assert np.array_equal(full[1.0].from_bitstream(bs), x1)
            assert np.array_equal(full[0.0].from_bitstream(task_only), x1)
            assert np.abs(x1.astype(int) - _eval_forward(task, img, rate).astype(int)).max() <= 1
            for beta, codec in full.items():  # container == eval forward for every beta
                ref = _eval_forward(codec, img, rate, beta)
                assert np.abs(codec.from_bitstream(bs).astype(int) - ref.astype(int)).max() <= 1
            x2 = full[0.0].from_bitstream(bs)
            assert not np.array_equal(x2, x1)
            gains.append(_mse(x1, img) - _mse(x2, img))
    # beta = 0 reduces the MSE on average; a 450-step toy model may lose on a single image at the top rate
    assert np.mean(gains) > 0 and sum(g > 0 for g in gains) >= len(gains) - 1, gains


def test_unknown_stream_is_a_bitstream_error(images):
    codec = ICMCodec(weights="random", device="cpu")
    bs = codec.to_bitstream(images[0], rate=0.5)
    bs.streams["extra"] = b"x"
    with pytest.raises(BitstreamError, match=r"needs stream main \(and optionally aux\), got \['extra', 'main'\]"):
        codec.from_bitstream(bs)


def test_a_format_1_file_is_refused_by_its_version(images):
    """Format 1 coded z in a stream "hyper" of its own; format 2 codes z and y in one string, so the
    codec version changed and a format-1 file is refused in one line rather than misread."""
    codec = ICMCodec(weights="random", device="cpu")
    assert codec.version.startswith("2-cai")
    bs = codec.to_bitstream(images[0], rate=0.5)
    main = bs.streams["main"]
    bs.streams = {"main": main[8:], "hyper": main[:8]}  # a format-1 layout
    with pytest.raises(BitstreamError, match="needs stream main"):
        codec.from_bitstream(bs)
    bs.codec_version = "1" + codec.version[1:]
    with pytest.raises(BitstreamError, match=r"version '1-cai.*', this is version '2-cai"):
        codec.from_bitstream(Bitstream.from_bytes(bs.to_bytes()))


def test_same_symbols_and_pixels_across_processes_and_thread_counts(trained, images, tmp_path):
    img = np.ascontiguousarray(np.concatenate([images[0], images[1]], axis=1))  # 64x192
    random = ICMCodec(weights="random", device="cpu")
    with_aux = ICMCodec(checkpoint=str(trained[1]), device="cpu", aux=True, beta=0.0)
    shipped = ICMCodec(device="cpu")  # with its context model: later steps' CDFs come from earlier steps' symbols
    assert shipped.net.context is not None
    assert_same_decode([
        save_job(random, random.to_bitstream(img, rate=0.6), tmp_path / "0.icm", weights="random"),
        save_job(with_aux, with_aux.to_bitstream(img, rate=0.8), tmp_path / "1.icm",
                 checkpoint=str(trained[1]), beta=0.0),
        save_job(shipped, shipped.to_bitstream(img, rate=0.3), tmp_path / "2.icm"),
    ])


# -- training interface -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_reach_the_pixels_and_the_gains(mode, trained):
    torch.manual_seed(0)
    net = ICMNet.from_state_dict(torch.load(trained[1], weights_only=True))
    getattr(net, mode)()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = net(x, torch.tensor([0.2, 0.7]), beta=0.5)
    assert set(out["likelihoods"]) == {"y", "z"} and set(out["aux_likelihoods"]) == {"aux"}
    loss = ((out["x_hat"] - 0.5) ** 2).mean() + sum(-torch.log2(v).mean() for v in out["likelihoods"].values())
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for unit in (net.gain_y, net.gain_z, net.gain_aux):
        for p in (unit.log_gain0, unit.log_steps, unit.log_inv_gain):
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_codec_forward_runs_the_aux_branch_only_when_beta_needs_it(trained):
    codec = ICMCodec(checkpoint=str(trained[1]), device="cpu")
    x = torch.rand(1, 3, 64, 64)
    out = codec.forward(x, 0.5)
    assert torch.equal(out["x_hat"], out["x_hat_main"])  # beta = 1: x_bar is x_hat1
    assert not torch.equal(codec.forward(x, 0.5, beta=0.0)["x_hat"], out["x_hat_main"])
    assert "aux_likelihoods" not in out and "aux_likelihoods" not in codec.forward(x, 0.5, 0.0, aux=False)
    forced = codec.forward(x, 0.5, aux=True)
    assert set(forced["aux_likelihoods"]) == {"aux"} and torch.equal(forced["x_hat"], out["x_hat"])


def test_rdc_stage_two_trains_the_aux_branch_alone():
    """What ``codec.train_modules = AUX_MODULES`` chooses: the aux branch trains (its quantiles by the
    auxiliary step), the primary branch is frozen."""
    net = ICMNet(**SMALL)
    frozen = freeze_all_but(net, list(ICMNet.AUX_MODULES))
    main, quantiles = split_parameters(net, frozen)
    assert {id(p) for p in main} == {id(p) for p in net.parameter_groups()["aux_branch"]}
    assert all(p.requires_grad for p in main) and [id(q) for q in quantiles] == [id(net.aux_bottleneck.quantiles)]
    assert net.g_a in frozen and net.entropy_bottleneck in frozen and not net.g_a[0].weight.requires_grad
    with pytest.raises(UserError, match="has no submodule 'nope'"):
        freeze_all_but(net, ["nope"])


# -- weights ---------------------------------------------------------------------------------------------
def test_wrong_checkpoints_are_user_errors(tmp_path, trained, images):
    from compressai.zoo import bmshj2018_hyperprior

    other = tmp_path / "other.pth"
    torch.save(bmshj2018_hyperprior(quality=1).state_dict(), other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    for path, message in ((other, "does not fit"), (junk, "cannot load"), (tmp_path / "missing.pth", "no such file")):
        with pytest.raises(UserError, match=message):
            ICMCodec(checkpoint=str(path), device="cpu").encode(images[0], rate=0.5)
    no_aux = tmp_path / "no_aux.pth"
    state = torch.load(trained[0], weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith(ICMNet.AUX_MODULES)}, no_aux)
    ICMCodec(checkpoint=str(no_aux), device="cpu").encode(images[0], rate=0.5)
    with pytest.raises(UserError, match="no aux branch"):
        ICMCodec(checkpoint=str(no_aux), device="cpu", aux=True).encode(images[0], rate=0.5)
    with pytest.raises(UserError):
        ICMCodec(weights="random", checkpoint=str(no_aux))
    # a file from other weights is refused by the container check
    data = ICMCodec(checkpoint=str(trained[0]), device="cpu").encode(images[0], rate=0.5)
    with pytest.raises(BitstreamError, match="weights mismatch"):
        ICMCodec(weights="random", device="cpu").decode(data)


def test_shipped_weights_path(tmp_path, monkeypatch, trained, images):
    monkeypatch.setenv("ICM_CONFIGS", str(tmp_path))
    codec = ICMCodec(device="cpu")
    reason = codec.unavailable_reason()
    assert reason and str(tmp_path / "codecs" / "icm-omni" / "model.pth") in reason and "--weights random" in reason
    with pytest.raises(CodecUnavailable):
        codec.encode(images[0], rate=0.5)
    (tmp_path / "codecs" / "icm-omni").mkdir(parents=True)
    (tmp_path / "codecs" / "icm-omni" / "model.pth").write_bytes(trained[1].read_bytes())
    codec = ICMCodec(device="cpu")
    assert codec.unavailable_reason() is None
    assert codec.decode(codec.encode(images[0], rate=0.5)).shape == images[0].shape
