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
import socket
import subprocess
import sys
import tempfile
import time


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
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], workers: int) -> int:
    """Run ``icm <argv> --workers 1`` as ``workers`` ranks; returns the exit code to use."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(workers),
           "LOCAL_WORLD_SIZE": str(workers), "OMP_NUM_THREADS": "1", "ICM_WORKERS": "1"}
    cmd = [sys.executable, "-m", "icm", *argv, "--workers", "1"]
    logs, procs = [], []
    try:
        for rank in range(workers):
            log = None if rank == 0 else tempfile.TemporaryFile()
            logs.append(log)
            procs.append(subprocess.Popen(cmd, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=log or None, stderr=log or None))
        while True:  # one rank failing would leave the others waiting in a collective: stop them all
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
        # a user error stops every rank at once: let them finish saying it (rank 0 speaks for itself)
        # before the rest are stopped, or its one-line error can come twice, its own and a rank's
        deadline = time.monotonic() + 3.0
        while failed and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
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
    rank, code = failed[0]
    if rank != 0 and procs[0].returncode in (0, None, -15):  # rank 0 said nothing about it: show the rank's words
        logs[rank].seek(0)
        lines = [ln for ln in logs[rank].read().decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("icm: error")] or lines[-1:]
        for ln in errors[-1:]:
            print(ln, file=sys.stderr)
    return code if code > 0 else 1
