"""Every run in configs/train/ (each plain config, each stage of a recipe) trains for one epoch with the
real task models and codecs.

Each runs as written except for its size: 2 steps of 2 images (a pass over 4 images for the pass-based
ones), 2 validation images, no Pareto re-evaluation, and its out/export folders moved to a temporary
folder. A recipe's stages run in order, moved as `icm train RECIPE --out DIR` moves them, so the
icm-omni recipe is exercised stage by stage. Then the recipes' own properties."""

import math
from pathlib import Path

import pytest
import torch

from conftest import REPO
from icm.errors import UserError
from icm.evaluation.config import TaskSpec
from icm.training.config import load_stages, parse_stages, relocate, retarget
from icm.training.loop import train

CONFIGS = sorted((REPO / "configs" / "train").glob("*.toml"))
OMNI = REPO / "configs" / "train" / "icm_omni.toml"


def _runs_of(path: Path) -> list[tuple[str, object]]:
    """(id, config) of every run in a file: the file's stem, or STEM:STAGE for a recipe's stages."""
    return [(f"{path.stem}:{name}" if name else path.stem, cfg) for name, cfg in load_stages(path)]


RUN_IDS = [run_id for p in CONFIGS for run_id, _ in _runs_of(p)]


def _photo_folder(folder: Path) -> Path:
    """A bare folder of four images of four sizes: what a run on a folder of photos (dataset = a path,
    as icm_photo_mse's) is pointed at here, as `icm train --dataset FOLDER` points it."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    folder.mkdir()
    for i, (h, w) in enumerate([(160, 200), (200, 136), (144, 144), (176, 240)]):
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g), size=(h, w), mode="bilinear")
        Image.fromarray((smooth[0].permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("configs")
    photos = _photo_folder(tmp / "photos")
    results = {}
    for path in CONFIGS:
        stages = load_stages(path)
        if stages[0][0] is not None:  # a recipe: every stage under tmp/STEM, exports and inits following
            relocate(stages, tmp / path.stem)
        for (name, cfg), (run_id, _) in zip(stages, _runs_of(path)):
            if name is None:
                cfg.out = str(tmp / path.stem)
                if cfg.export:
                    cfg.export = str(tmp / "export" / path.stem / Path(cfg.export).name)
            cfg.epochs, cfg.reevaluate = 1, False
            cfg.train_limit, cfg.val_limit, cfg.batch_size, cfg.eval_batch_size = 4, 2, 2, 2
            if cfg.steps_per_epoch:
                cfg.steps_per_epoch = 2
            cfg.device = "cpu"
            if "/" in cfg.dataset:
                cfg.dataset = str(photos)
            results[run_id] = (cfg, train(cfg, progress=False))
    return results


@pytest.mark.parametrize("config", RUN_IDS)
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


def test_the_icm_omni_recipe_passes_weights_stage_to_stage(runs):
    """Each stage starts from the previous stage's final weights (its out folder) unless it names its init:
    distill the icm-omni-mse weights mse exports, aux the icm-omni weights context exports."""
    stages = [(name.partition(":")[2], cfg) for name, (cfg, _) in runs.items() if name.startswith("icm_omni:")]
    cfgs = dict(stages)
    for (_, parent), (name, cfg) in zip(stages, stages[1:]):
        expected = {"distill": cfgs["mse"].export, "aux": cfgs["context"].export}.get(name, parent.out)
        assert Path(cfg.init) == Path(expected), name
        assert str(Path(cfg.init)) in (Path(cfg.out) / "log.json").read_text()
    primary = torch.load(cfgs["context"].export, weights_only=True)
    trained = torch.load(Path(cfgs["aux"].out) / "model.pth", weights_only=True)
    # stage II: the primary branch is icm-omni's, untouched; only the aux branch trained
    assert torch.equal(trained["g_a.0.weight"].half(), primary["g_a.0.weight"])
    assert any(k.startswith("aux_a.") for k in trained)
    # the gains-only stages: transforms frozen at the parent's values, quantisation steps trained;
    # the whole-model stages between them train the transforms again
    def final(stage):
        return torch.load(Path(cfgs[stage].out) / "model.pth", weights_only=True)

    for gains, parent in (("gains", "det_x2"), ("gains_2", "whole"), ("gains_3", "low_gain"), ("gains_4", "whole_2"),
                          ("low_gain_2", "whole_3")):
        after, before = final(gains), final(parent)
        assert cfgs[gains].codec.train_modules == ["gain_y", "gain_z", "entropy_bottleneck"]
        assert torch.equal(after["g_a.0.weight"], before["g_a.0.weight"]) and torch.equal(after["h_s.0.weight"], before["h_s.0.weight"])
        # the parent's levels are the last rows (a stage that adds levels puts them first)
        steps = before["gain_y.log_steps"]
        assert not torch.equal(after["gain_y.log_steps"][-steps.shape[0]:], steps)
    for whole, parent in (("whole", "gains"), ("low_gain", "gains_2"), ("whole_2", "gains_3"), ("whole_3", "gains_4")):
        assert not torch.equal(final(whole)["g_a.0.weight"], final(parent)["g_a.0.weight"])
    # low_gain adds one gain level below gains_2's six and trains the whole model
    assert final("gains_2")["gain_y.log_inv_gain"].shape[0] == 6
    assert final("low_gain")["gain_y.log_inv_gain"].shape[0] == 7
    # low_gain_2 adds an eighth level below whole_3's seven in its gains-only pass, and trains the old
    # seven's inverse gains too (the rows after the new one)
    assert final("whole_3")["gain_y.log_inv_gain"].shape[0] == 7
    assert not torch.equal(final("low_gain_2")["gain_y.log_inv_gain"][1:], final("whole_3")["gain_y.log_inv_gain"])
    # context adds a context model to low_gain_2 and trains only it: every other tensor is low_gain_2's
    before, after = final("low_gain_2"), final("context")
    new = sorted(set(after) - set(before))
    assert not any(k.startswith("context.") for k in before) and new and all(k.startswith("context.") for k in new)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(after[f"context.params.{g}.4.weight"].abs().sum() > 0 for g in (0, 1))  # they start at zero: it trained
    exported = torch.load(cfgs["context"].export, weights_only=True)
    assert exported["gain_y.log_inv_gain"].shape[0] == exported["gain_z.log_inv_gain"].shape[0] == 8
    assert "context.spatial.0.weight" in exported


def test_each_shipped_learned_codec_is_exported_by_one_stage():
    exports = {}
    for path in CONFIGS:
        for name, cfg in load_stages(path):
            if cfg.export and Path(cfg.export).parts[:2] == ("configs", "codecs"):
                exports.setdefault(Path(cfg.export).parent.name, []).append(f"{path.stem}:{name}" if name else path.stem)
    assert exports["icm-omni-mse"] == ["icm_omni:mse"]
    assert exports["icm-omni"] == ["icm_omni:context"]
    assert exports["icm-omni-aux"] == ["icm_omni:aux"]
    assert exports["icm-photo-mse"] == ["icm_photo_mse"]
    # the image decoder's pass exports over the codec stage's file: the last one is what ships
    assert exports["icm-omni-features"] == ["icm_omni_features:codec", "icm_omni_features:image_decoder"]


def test_a_stage_overrides_the_base_and_starts_from_the_previous_stage():
    stages = dict(load_stages(OMNI))
    assert stages["gains"].codec.rate_power == 2.0 and stages["mse"].codec.rate_power == 1.0  # codec key by key
    assert stages["mse"].codec.rates == stages["gains"].codec.rates == [0.0, 1.0]  # ...the rest from the base
    assert set(stages["context"].losses) == {"rate"}  # losses as a whole
    assert stages["context"].codec.rate_lambdas is None and stages["mse"].val_limit is None  # unset
    assert stages["whole"].val_limit == 50 and stages["whole"].init == stages["gains"].out
    assert [Path(c.out).name for c in stages.values()] == list(stages)  # stage NAME writes OUT/NAME
    assert len({Path(c.out).parent for c in stages.values()}) == 1


@pytest.mark.parametrize("stages, error", [
    ([{"name": "a"}, {"name": "a"}], "two stages are named 'a'"),
    ([{"lr": 1.0}], "stage 1 needs a name"),
    ([{"name": "a", "unset": ["val_limit"]}], "unsets 'val_limit', which the base does not set"),
    ([{"name": "a", "out": "x"}], "stage a sets out"),
    ([{"name": "a", "epochz": 1}], "stage a: unknown keys"),
])
def test_recipe_errors_are_one_line_user_errors(stages, error):
    base = {"codec": {"name": "x"}, "losses": {"mse": 1.0}}
    with pytest.raises(UserError, match=error):
        parse_stages({**base, "stage": stages}, "recipe")


def test_relocate_moves_outs_and_exports_and_inits_follow(tmp_path):
    stages = load_stages(OMNI)
    relocate(stages, tmp_path)
    cfgs = dict(stages)
    assert cfgs["distill"].init == str(tmp_path / "mse" / "export.pth")
    assert cfgs["whole"].init == str(tmp_path / "gains")
    assert cfgs["context"].export == str(tmp_path / "context" / "export.pth")
    assert cfgs["aux"].init == str(tmp_path / "context" / "export.pth")
    alone = [s for s in load_stages(OMNI) if s[0] == "aux"]
    relocate(alone, tmp_path)  # a stage moved alone keeps reading its init where it is
    assert alone[0][1].init == "configs/codecs/icm-omni/model.pth"


def test_retarget_points_every_stage_at_other_data_and_tasks():
    stages = dict(load_stages(OMNI))
    for cfg in stages.values():
        retarget(cfg, "my_data", [TaskSpec("det", "det.py", "det.pth"), TaskSpec("cls")])
    assert all(c.dataset == "my_data" for c in stages.values())
    distill, whole = stages["distill"], stages["whole_3"]
    assert distill.tasks == [TaskSpec("det", "det.py", "det.pth")]  # cls joins at six_tasks
    assert set(distill.losses) == {"rate", "mse", "objectness_distill:det"}
    assert [t.name for t in whole.tasks] == ["det", "cls"] and whole.task_scales == {"det": 2.0, "cls": 2.0}
    assert set(whole.losses) == {"rate", "mse", "objectness_distill:det", "distill:cls", "task:det", "task:cls"}
    assert stages["mse"].tasks == [] and set(stages["mse"].losses) == {"rate", "mse"}  # no task models: as written
    with pytest.raises(UserError, match="none would be left"):
        retarget(dict(load_stages(OMNI))["distill"], None, [TaskSpec("cls")])
