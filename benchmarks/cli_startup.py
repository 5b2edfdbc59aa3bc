"""Start-up cost of the `icm` command line: CPU and wall time of each light command, as a ratio
against `python -c pass` measured in the same run.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 5] [--pythonpath DIR]

CPU time is the child's user + system time (resource.getrusage(RUSAGE_CHILDREN)), so it counts
what the command costs whatever else the machine is doing; the median of --repeat runs is shown.
``--pythonpath DIR`` puts DIR first on PYTHONPATH, to time another checkout of the package (for a
before/after: a folder holding an ``icm`` symlink to that checkout's ``core/``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(tmp: Path) -> dict[str, list[str]]:
    icm = [sys.executable, "-m", "icm"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "icm --version": icm + ["--version"],
        "icm --help": icm + ["--help"],
        "icm codecs": icm + ["codecs"],
        "icm codecs --json": icm + ["codecs", "--json"],
        "icm tasks": icm + ["tasks"],
        "icm plugins": icm + ["plugins"],
        "icm info <missing file> (error)": icm + ["info", str(tmp / "missing.icm")],
        "icm encode --codec nope (error)": icm + ["encode", str(tmp / "x.png"), "--codec", "nope", "-o", str(tmp)],
    }


def measure(cmd: list[str], env: dict) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pythonpath", help="put this folder first on PYTHONPATH (time another checkout)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.pythonpath, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, cmd in commands(Path(tmp)).items():
            runs = [measure(cmd, env) for _ in range(args.repeat)]
            rows.append((label, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2]))
    base_cpu, base_wall = rows[0][1], rows[0][2]
    print(f"{'command':36s} {'CPU s':>7s} {'wall s':>7s} {'CPU / python':>13s} {'exit':>5s}")
    for label, cpu, wall, code in rows:
        print(f"{label:36s} {cpu:7.2f} {wall:7.2f} {cpu / base_cpu:12.1f}x {code:5d}")
    worst = max(rows[1:], key=lambda r: r[1])
    print(f"slowest: {worst[0]} at {worst[1]:.2f} s CPU (target <= 1.5 s)")


if __name__ == "__main__":
    main()
