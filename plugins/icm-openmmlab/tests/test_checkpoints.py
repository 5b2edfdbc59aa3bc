"""Checkpoints of task models: loaded with weights_only, so a file that would run code is refused."""

import os

import pytest
import torch

from icm.errors import UserError
from icm_openmmlab import read_state_dict


class Evil:
    marker = ""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_and_runs_nothing(tmp_path):
    Evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(UserError, match="cannot load") as info:
        read_state_dict(str(path))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_a_state_dict_loads_and_a_missing_file_is_one_line(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "meta": {"epoch": 1}}, path)
    assert torch.equal(read_state_dict(str(path))["w"], torch.arange(3.0))
    with pytest.raises(UserError, match="no such file"):
        read_state_dict(str(tmp_path / "missing.pth"))
