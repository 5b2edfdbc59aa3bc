"""The training interface (icm.codecs.TrainableCodec): the tutorial codec of docs/plugins/hooks.md trains
with `icm train` and its candidates code real bitstreams; a codec without the interface is refused in
one line; the shipped learned codecs implement it."""

import json
import re
import types

import pytest
import torch

from conftest import REPO

HOOKS = REPO / "docs" / "plugins" / "hooks.md"


def _tutorial_block(first_line: str) -> str:
    """The code block of the "A codec that trains" section whose first line is ``first_line``."""
    text = HOOKS.read_text()
    section = text[text.index("### A codec that trains"):text.index("## icm_register_tasks")]
    blocks = [b for b in re.findall(r"```\w+\n(.*?)```", section, re.S) if b.startswith(first_line + "\n")]
    assert len(blocks) == 1, f"docs/plugins/hooks.md: no single block starting {first_line!r}"
    return blocks[0]


@pytest.fixture
def tiny(icm_register_plugin):
    module = types.ModuleType("tiny_codec")
    exec(compile(_tutorial_block("# tiny_codec.py"), str(HOOKS), "exec"), module.__dict__)
    icm_register_plugin(module, name="tiny-codec")
    return module


def test_the_tutorial_codec_trains_and_its_candidates_code_real_bitstreams(tiny, icm_cli, tiny_shapes, tmp_path):
    config = _tutorial_block("# tiny.toml: icm train tiny.toml")
    config = config.replace('dataset = "shapes"', f'dataset = "{tiny_shapes}"')
    config = config.replace('out = "results/train/tiny"', f'out = "{tmp_path / "run"}"\nval_limit = 2')
    (tmp_path / "tiny.toml").write_text(config)
    result = icm_cli("train", tmp_path / "tiny.toml", "--no-progress")
    assert result.exit_code == 0, result.stderr
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and all(e["steps"] == 3 for e in log["epochs"])
    trained = torch.load(tmp_path / "run" / "model.pth", weights_only=True)
    start = tiny.TinyCodec().net.state_dict()
    assert trained.keys() == start.keys() and not torch.equal(trained["g_a.weight"], start["g_a.weight"])
    # the candidates, opened as `tiny` with checkpoint=, decode their files to the forward path's pixels
    # (untrained: 8.4 dB; after these 6 steps 11-13)
    front = json.loads((tmp_path / "run" / "pareto.json").read_text())["front"]
    assert front and all(row["psnr_real"] > 10 and row["psnr_real"] == pytest.approx(row["psnr_est"], abs=0.01)
                         and 0 < row["bpp"] - row["est_bpp"] < 0.2 for row in front)


def test_a_codec_without_the_interface_is_refused_in_one_line(icm_cli, tiny_shapes, tmp_path):
    (tmp_path / "jpeg.toml").write_text(f'dataset = "{tiny_shapes}"\nout = "{tmp_path / "run"}"\n'
                                        '[codec]\nname = "jpeg"\nquality = 50\n[losses]\nmse = 1.0\n')
    result = icm_cli("train", tmp_path / "jpeg.toml", "--no-progress")
    assert result.exit_code == 2
    assert "codec 'jpeg' cannot be trained: JPEG does not implement icm.codecs.TrainableCodec" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["icm-omni", "icm-omni-aux", "icm-omni-mse", "icm-omni-features",
                                  "icm-hyperprior-mse", "bmshj2018-hyperprior", "mbt2018"])
def test_the_shipped_learned_codecs_implement_it(name):
    from icm.codecs import TrainableCodec, open_codec

    assert isinstance(open_codec(name), TrainableCodec)
