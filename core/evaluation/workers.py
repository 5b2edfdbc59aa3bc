"""`icm evaluate --workers N`: N worker processes of one thread each, sharded like torchrun.

On a CPU machine one process with several intra-op threads is slow on small images (the threads
wait on each other inside every small convolution), while processes with one thread each keep every
core busy. The workers are the torchrun path the engine already has (``WORLD_SIZE``/``RANK`` and a
gloo process group, images sharded by rank, results gathered to rank 0), started here so a user does
not have to. Rank 0 prints as usual; the other ranks' output goes to a file that is shown only when
such a rank fails on its own, so an error is still one line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from icm.errors import PEER_STOPPED_EXIT


def default_workers(device: str | None) -> int:
    """``$ICM_WORKERS`` when set; else all usable cores on a CPU run, and one process on a GPU or
    under torchrun (which already shards)."""
    if os.environ.get("WORLD_SIZE"):
        return 1
    if os.environ.get("ICM_WORKERS"):
        try:
            return max(1, int(os.environ["ICM_WORKERS"]))
        except ValueError:
            from icm.errors import UserError

            raise UserError(f"ICM_WORKERS={os.environ['ICM_WORKERS']!r} is not a whole number") from None
    from icm.distributed import default_device

    if (device or str(default_device())).startswith("cuda"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "icm", *argv, "--workers", "1"]


def _note_failures(procs, failed: list[tuple[int, int]]) -> None:
    seen = {r for r, _ in failed}
    failed += [(r, p.poll()) for r, p in enumerate(procs) if r not in seen and p.poll() not in (None, 0)]


def _die_with(parent: int):
    """A worker's pre-exec step: the kernel kills it when the launcher dies (``kill -9`` of ``icm
    evaluate``), so no orphaned worker goes on writing into OUT beside the next run. libc is looked up
    here, before the fork: the child only calls it."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: a worker may outlive a killed launcher
        return None

    def setup():
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the line above
            os._exit(1)
    return setup


def launch(argv: list[str], workers: int) -> int:
    """Run ``icm <argv> --workers 1`` as ``workers`` ranks; returns the exit code to use."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(workers),
           "LOCAL_WORLD_SIZE": str(workers), "OMP_NUM_THREADS": "1", "ICM_WORKERS": "1", "ICM_LAUNCHED": "1"}
    cmd = worker_command(argv)
    logs, procs = [], []
    try:
        for rank in range(workers):
            log = None if rank == 0 else tempfile.TemporaryFile()
            logs.append(log)
            procs.append(subprocess.Popen(cmd, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=log or None, stderr=log or None, preexec_fn=_die_with(os.getpid())))
        failed: list[tuple[int, int]] = []  # (rank, exit code), in the order the ranks failed
        while True:  # one rank failing would leave the others waiting in a collective: stop them all
            _note_failures(procs, failed)
            if failed or all(p.returncode == 0 for p in procs):
                break
            time.sleep(0.2)
        # a user error stops every rank at once: let them finish saying it (rank 0 speaks for itself)
        # before the rest are stopped, or its one-line error can come twice, its own and a rank's
        deadline = time.monotonic() + 3.0
        while failed and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        _note_failures(procs, failed)
    except KeyboardInterrupt:
        failed = [(0, 130)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    if not failed:
        return 0
    # the cause is the first rank that failed on its own, not one that only lost its peer (which is silent)
    rank, code = next(((r, c) for r, c in failed if c != PEER_STOPPED_EXIT), failed[0])
    if code < 0:  # killed by a signal (the OOM killer, kill -9): it said nothing, so say who and how
        from icm.faults import signal_line

        print(f"icm: error: {signal_line(rank, -code)}", file=sys.stderr)
        return 1
    if rank != 0 and procs[0].returncode in (0, None, -15, PEER_STOPPED_EXIT):  # rank 0 said nothing: show the rank's words
        logs[rank].seek(0)
        lines = [ln for ln in logs[rank].read().decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("icm: error")] or lines[-1:]
        for ln in errors[-1:] or [f"icm: error: worker rank {rank} stopped (exit code {code})"]:
            print(ln, file=sys.stderr)
    elif code == PEER_STOPPED_EXIT:  # every rank only saw another stop: nobody has said anything yet
        print("icm: error: a worker process stopped without an error message", file=sys.stderr)
    return code if code > 0 else 1
