"""Installed as ``sitecustomize`` (on PYTHONPATH) by tests/test_faults.py: makes the Nth atomic write
whose path contains a given text fail the way a real fault would, in every icm process of a run
(the --workers ranks too). ``ICM_FAULT=action:text:n[:rank]``:

- ``kill``: SIGKILL this process (the OOM killer) before the write;
- ``kill-launcher``: SIGKILL the parent process (``kill -9`` of ``icm evaluate --workers``);
- ``kill-midwrite``: leave half the data in a writer's temporary file, then SIGKILL this process;
- ``enospc``: that write and every later one fail with ENOSPC (a full disk).
"""

import os

SPEC = os.environ.get("ICM_FAULT")
if SPEC:
    import errno
    import signal
    import tempfile
    from pathlib import Path

    import icm.bitstream as _bitstream

    action, text, n, *rank = SPEC.split(":")
    _original, _seen = _bitstream.atomic_write_bytes, [0]

    def atomic_write_bytes(path, data):
        if text in str(path) and (not rank or os.environ.get("RANK", "0") == rank[0]):
            _seen[0] += 1
            if action == "enospc" and _seen[0] >= int(n):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            if _seen[0] == int(n):
                if action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if action == "kill-launcher":
                    os.kill(os.getppid(), signal.SIGKILL)
                if action == "kill-midwrite":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    fd, _ = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.{os.getpid()}.", suffix=".tmp")
                    os.write(fd, data[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
        return _original(path, data)

    _bitstream.atomic_write_bytes = atomic_write_bytes
