"""Faults of a run rather than of its input: a full disk, an output folder that cannot be written,
a worker that died, a writer killed half-way. Each ends in one line (docs/evaluate.md#faults)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
from pathlib import Path

from icm.errors import UserError

DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
CANNOT_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged writer on the filesystem of ``path`` (or its nearest existing folder)."""
    for p in (path, *path.parents):
        if p.is_dir():
            return shutil.disk_usage(p).free
    return None


def check_out_dir(path, what: str = "--out") -> None:
    """Make the output folder now, and refuse one that is a file or cannot be written, before any
    model loads (it used to fail in a worker, with a traceback, after the models were loaded)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.is_dir():
            break
        if p.exists() or p.is_symlink():
            where = "" if p == path else f" ({p} is a file)"
            raise UserError(f"{what} {path}: not a folder{where}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # an unnamed file: nothing is left behind
            pass
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from None


def fault_line(exc: OSError) -> str | None:
    """The one line for an OSError of a write (full disk, read-only, I/O error), or None for any other
    (a bug, which keeps its traceback)."""
    from icm.bitstream import WRITTEN

    where = exc.filename or "a file"
    if exc.errno in DISK_FULL:
        free = free_bytes(Path(exc.filename)) if exc.filename else None
        who = (f"worker rank {os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "this run")
        return (f"{DISK_FULL[exc.errno]} writing {where} ({size_text(free) if free is not None else 'no space'} free there; "
                f"{who} had written {size_text(WRITTEN[0])}): make room or choose another --out, and run again to "
                f"resume from what is written")
    if exc.errno in CANNOT_WRITE:
        return f"cannot write {where}: {exc.strerror or exc}"
    return None


def signal_line(rank: int, signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    why = " (the kernel's out-of-memory killer sends it: `dmesg` says if it did)" if signum == signal.SIGKILL else ""
    return f"worker rank {rank} was killed by {name}{why}; run again to resume from what is written"


def remove_stale_temporaries(root: Path, pattern: str = ".*.tmp", recursive: bool = True) -> int:
    """Delete atomic writers' temporary files (``.NAME.PID.XXXXXXXX.tmp``) whose writer is gone (a run
    killed half-way through a write); a live writer's file (another run on the same folder) is kept."""
    removed = 0
    if not root.is_dir():
        return 0
    for f in (root.rglob(pattern) if recursive else root.glob(pattern)):
        parts = f.name[:-len(".tmp")].rsplit(".", 2)
        try:
            pid = int(parts[1])
        except (IndexError, ValueError):
            continue  # not one of ours
        if pid != os.getpid() and not _alive(pid):
            f.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


PREVIOUS = "previous"  # where the outputs of an earlier run go while a new one runs
OUTPUTS = ("results.json", "results.csv", "report.html", "metrics", "plots")


def set_aside_previous(out: Path) -> None:
    """Move an earlier run's outputs to ``OUT/previous/``: until this run writes its own, nothing in
    ``OUT`` looks like a current result. A successful run removes the folder."""
    present = [n for n in OUTPUTS if (out / n).exists()]
    if not present:
        return
    aside = out / PREVIOUS
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True, exist_ok=True)
    for name in present:
        try:
            os.replace(out / name, aside / name)
        except OSError:  # another run on the same OUT moved it first (or is moving it now)
            pass
