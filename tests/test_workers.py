"""The `icm evaluate --workers` launcher and the CLI's exits when a worker loses its peer: the user
reads the failing rank's own error, once, never a consequence such as "aborted"."""

import sys

import click
import pytest

from icm import cli as icm_cli
from icm.errors import PEER_STOPPED_EXIT, PeerStopped
from icm.evaluation import workers

# rank 1 fails on its own after a moment; rank 0 then only sees its peer gone (PeerStopped, silent)
SCRIPT = """
import os, sys, time
rank = int(os.environ["RANK"])
if rank == 1:
    time.sleep(0.3)
    print("some progress", file=sys.stderr)
    print("icm: error: image 7: cannot read (the real cause)", file=sys.stderr)
    sys.exit(2)
time.sleep(0.6)
sys.exit(%d)
""" % PEER_STOPPED_EXIT


def test_the_rank_that_failed_on_its_own_is_the_one_reported(monkeypatch, capfd):
    monkeypatch.setattr(workers, "worker_command", lambda argv: [sys.executable, "-c", SCRIPT])
    code = workers.launch(["evaluate"], 2)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["icm: error: image 7: cannot read (the real cause)"]


def test_only_peer_losses_still_say_something(monkeypatch, capfd):
    script = f"import sys; sys.exit({PEER_STOPPED_EXIT})"
    monkeypatch.setattr(workers, "worker_command", lambda argv: [sys.executable, "-c", script])
    assert workers.launch(["evaluate"], 2) == PEER_STOPPED_EXIT
    assert capfd.readouterr().err.strip().splitlines() == ["icm: error: a worker process stopped without an error message"]


def _run_cli_raising(monkeypatch, exc):
    @click.command()
    def boom():
        raise exc

    monkeypatch.setattr(icm_cli, "cli", boom)
    with pytest.raises(SystemExit) as stop:
        icm_cli.main([])
    return stop.value.code


def test_peer_stopped_is_silent_under_the_launcher_and_one_line_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("ICM_LAUNCHED", "1")
    assert _run_cli_raising(monkeypatch, PeerStopped("another worker stopped")) == PEER_STOPPED_EXIT
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("ICM_LAUNCHED")
    assert _run_cli_raising(monkeypatch, PeerStopped("another worker stopped")) == PEER_STOPPED_EXIT
    assert capsys.readouterr().err.strip() == "icm: error: another worker stopped"


def test_an_eof_error_is_an_error_not_a_ctrl_c(monkeypatch, capsys):
    # click turns EOFError into Abort; pickle's "Ran out of input" is one
    assert _run_cli_raising(monkeypatch, EOFError("Ran out of input")) == 1
    # and says where it was raised: without a traceback, the one lead a report of this bug can give
    err = capsys.readouterr().err.strip()
    assert err.startswith("icm: error: unexpected end of input (Ran out of input; raised at tests/test_workers.py:"), err
    assert _run_cli_raising(monkeypatch, KeyboardInterrupt()) == 130
    assert "aborted" in capsys.readouterr().err
