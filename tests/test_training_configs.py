"""Every config in configs/train/ trains for one epoch with the real task models and codecs.

Each config runs as written except for its size: 2 steps of 2 images (a pass over 4 images for the
pass-based ones), 2 validation images, no Pareto re-evaluation, and its out/export folders moved to a
temporary folder. Chains run in order, a config's `init` naming an earlier config's `out` pointing at
that run's temporary folder, so the icm-omni chain is exercised link by link."""

import math
from pathlib import Path

import pytest
import torch

from conftest import REPO
from icm.training.config import load_config
from icm.training.loop import train

CONFIGS = sorted((REPO / "configs" / "train").glob("*.toml"))


def _chain_order(cfgs: dict[Path, object]) -> list[Path]:
    """Configs in an order where each runs after the config whose `out` its `init` names."""
    by_out = {str(Path(c.out)): p for p, c in cfgs.items()}
    done: list[Path] = []

    def visit(p):
        if p in done:
            return
        parent = by_out.get(str(Path(cfgs[p].init))) if cfgs[p].init else None
        if parent is not None:
            visit(parent)
        done.append(p)

    for p in cfgs:
        visit(p)
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("configs")
    cfgs = {p: load_config(p) for p in CONFIGS}
    outs = {str(Path(c.out)): tmp / p.stem for p, c in cfgs.items()}
    results = {}
    for p in _chain_order(cfgs):
        cfg = cfgs[p]
        cfg.out = str(outs[str(Path(cfg.out))])
        if cfg.init and str(Path(cfg.init)) in outs:
            cfg.init = str(outs[str(Path(cfg.init))])
        if cfg.export:
            cfg.export = str(tmp / "export" / p.stem / Path(cfg.export).name)
        cfg.epochs, cfg.reevaluate = 1, False
        cfg.train_limit, cfg.val_limit, cfg.batch_size, cfg.eval_batch_size = 4, 2, 2, 2
        if cfg.steps_per_epoch:
            cfg.steps_per_epoch = 2
        cfg.device = "cpu"
        results[p.stem] = (cfg, train(cfg, progress=False))
    return results


@pytest.mark.parametrize("config", [p.stem for p in CONFIGS])
def test_config_trains_one_epoch_with_finite_losses(runs, config):
    cfg, summary = runs[config]
    (entry,) = summary["history"]
    assert entry["steps"] >= 1 and entry["skipped_steps"] == 0
    # every term the schedule weighs this epoch was computed (le_phased starts from MSE alone)
    assert set(entry["losses"]) == {t for t, w in entry["weights"].items() if w != 0} and entry["losses"]
    assert all(math.isfinite(v) for v in entry["losses"].values()), entry["losses"]
    assert math.isfinite(entry["total"])
    for row in entry["val"]:
        assert math.isfinite(row["est_bpp"]) and row["est_bpp"] > 0, row
    final = torch.load(Path(cfg.out) / "model.pth", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in final.values() if v.is_floating_point())
    if cfg.export:
        exported = torch.load(cfg.export, weights_only=True)
        assert exported.keys() == final.keys()
        # shipped format: fp16, except what fp16 cannot hold (the entropy models' 1e-9 likelihood bound)
        assert any(v.dtype == torch.float16 for v in exported.values())
        bounds = [k for k in exported if k.endswith("likelihood_lower_bound.bound")]
        assert all(float(exported[k]) == pytest.approx(1e-9) for k in bounds)
        assert bounds or cfg.backend  # every codec has entropy models; a task back end has none
        assert any(v.dtype == torch.float16 for v in exported.values())


def test_the_icm_omni_chain_passes_weights_link_to_link(runs):
    """Each link starts from the previous link's final weights (init = its out folder)."""
    for link, parent in (("icm_omni_2_task_losses", "icm_omni_1_distill"), ("icm_omni_3_seg_x2", "icm_omni_2_task_losses"),
                         ("icm_omni_4_low_rates", "icm_omni_3_seg_x2"),
                         ("icm_omni_5_six_tasks", "icm_omni_4_low_rates"), ("icm_omni_7_gains", "icm_omni_6_det_x2"),
                         ("icm_omni_8_whole", "icm_omni_7_gains"), ("icm_omni_9_gains", "icm_omni_8_whole"),
                         ("icm_omni_10_low_gain", "icm_omni_9_gains"), ("icm_omni_11_gains", "icm_omni_10_low_gain"),
                         ("icm_omni_12_whole", "icm_omni_11_gains"), ("icm_omni_13_gains", "icm_omni_12_whole"),
                         ("icm_omni_14_whole", "icm_omni_13_gains"), ("icm_omni_15_gains", "icm_omni_14_whole"),
                         ("icm_omni_16_context", "icm_omni_15_gains")):
        cfg, _ = runs[link]
        assert Path(cfg.init) == Path(runs[parent][0].out)
        log = (Path(cfg.out) / "log.json").read_text()
        assert str(Path(cfg.init)) in log
    aux_cfg, _ = runs["icm_omni_aux"]
    primary = torch.load(REPO / "configs" / "codecs" / "icm-omni" / "model.pth", weights_only=True)
    trained = torch.load(Path(aux_cfg.out) / "model.pth", weights_only=True)
    # stage II: the primary branch is icm-omni's, untouched; only the aux branch trained
    assert torch.equal(trained["g_a.0.weight"].half(), primary["g_a.0.weight"])
    assert any(k.startswith("aux_a.") for k in trained)
    # the gains-only links: transforms frozen at the parent's values, quantisation steps trained;
    # the whole-model link between them trains the transforms again
    def final(config):
        return torch.load(Path(runs[config][0].out) / "model.pth", weights_only=True)

    for link, parent in (("icm_omni_7_gains", "icm_omni_6_det_x2"), ("icm_omni_9_gains", "icm_omni_8_whole"),
                         ("icm_omni_11_gains", "icm_omni_10_low_gain"), ("icm_omni_13_gains", "icm_omni_12_whole"),
                         ("icm_omni_15_gains", "icm_omni_14_whole")):
        gains, before = final(link), final(parent)
        assert torch.equal(gains["g_a.0.weight"], before["g_a.0.weight"]) and torch.equal(gains["h_s.0.weight"], before["h_s.0.weight"])
        # the parent's levels are the last rows (a link that adds levels puts them first)
        steps = before["gain_y.log_steps"]
        assert not torch.equal(gains["gain_y.log_steps"][-steps.shape[0]:], steps)
    assert not torch.equal(final("icm_omni_8_whole")["g_a.0.weight"], final("icm_omni_7_gains")["g_a.0.weight"])
    # link 10 adds one gain level below link 9's and trains the whole model; what it exports has 7
    assert final("icm_omni_9_gains")["gain_y.log_inv_gain"].shape[0] == 6
    assert final("icm_omni_10_low_gain")["gain_y.log_inv_gain"].shape[0] == 7
    assert not torch.equal(final("icm_omni_10_low_gain")["g_a.0.weight"], final("icm_omni_9_gains")["g_a.0.weight"])
    for whole, parent in (("icm_omni_12_whole", "icm_omni_11_gains"), ("icm_omni_14_whole", "icm_omni_13_gains")):
        assert not torch.equal(final(whole)["g_a.0.weight"], final(parent)["g_a.0.weight"])
    # link 15 adds an eighth level below link 14's seven in its gains-only pass, and exports 8
    assert final("icm_omni_14_whole")["gain_y.log_inv_gain"].shape[0] == 7
    # ...and trains the old seven's inverse gains too (the rows after the new one)
    assert not torch.equal(final("icm_omni_15_gains")["gain_y.log_inv_gain"][1:], final("icm_omni_14_whole")["gain_y.log_inv_gain"])
    # link 16 adds a context model to link 15 and trains only it: every other tensor is link 15's
    before, after = final("icm_omni_15_gains"), final("icm_omni_16_context")
    new = sorted(set(after) - set(before))
    assert not any(k.startswith("context.") for k in before) and new and all(k.startswith("context.") for k in new)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(after[f"context.params.{g}.4.weight"].abs().sum() > 0 for g in (0, 1))  # they start at zero: it trained
    exported = torch.load(runs["icm_omni_16_context"][0].export, weights_only=True)
    assert exported["gain_y.log_inv_gain"].shape[0] == exported["gain_z.log_inv_gain"].shape[0] == 8
    assert "context.spatial.0.weight" in exported
    exporters = [p.stem for p in CONFIGS if (e := load_config(p).export) and Path(e).parent.name == "icm-omni"]
    assert exporters == ["icm_omni_16_context"]  # one link writes the shipped weights
