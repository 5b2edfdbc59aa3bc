"""Wall time of `icm evaluate` from a cold cache, several ways in one run, as ratios to the first.

    .venv/bin/python benchmarks/evaluate_workers.py [--limit N] [--baseline-pythonpath DIR] [-- EVALUATE ARGS]

Ways measured, each into a fresh output folder (so nothing is cached), then one rerun of the default
way with everything cached:
  - baseline: another checkout of icm (``--baseline-pythonpath DIR``: a folder holding ``icm`` and the
    ``icm_mm*`` plugin packages as symlinks into that checkout, and ``--baseline-configs`` its
    ``configs/`` folder), e.g. the commit before a change;
  - ``--workers 1``: one process, torch's default intra-op threads;
  - default: one one-thread worker per core (``--workers`` unset).
Wall time is measured around the whole command (start-up included); the stage table of each run
comes from its results.json. With no EVALUATE ARGS the default experiment runs (every installed task,
the shipped codecs, the four anchors), which is the README's first command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ICM = [sys.executable, "-m", "icm", "evaluate", "--no-progress"]


def timed(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run([*ICM, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"icm evaluate {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def stages(out: Path) -> str:
    timing = json.loads((out / "results.json").read_text()).get("timing")
    if not timing:
        return "(no stage timing in this version)"
    top = sorted(timing["stages"].items(), key=lambda kv: -kv[1])[:5]
    return ", ".join(f"{k} {v:.0f}" for k, v in top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="only the first N images")
    ap.add_argument("--baseline-pythonpath", help="time this checkout of icm first (see the docstring)")
    ap.add_argument("--baseline-configs", help="that checkout's configs/ folder ($ICM_CONFIGS for the baseline)")
    ap.add_argument("extra", nargs="*", help="icm evaluate options (after --)")
    args = ap.parse_args()
    extra = list(args.extra) + (["--limit", str(args.limit)] if args.limit else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ways = []
        if args.baseline_pythonpath:
            base_env = {**env, "PYTHONPATH": args.baseline_pythonpath}
            if args.baseline_configs:
                base_env["ICM_CONFIGS"] = args.baseline_configs
            ways.append(("baseline checkout", [], base_env))
        ways += [("--workers 1", ["--workers", "1"], env), ("default (workers = cores)", [], env)]
        for i, (label, opts, way_env) in enumerate(ways):
            out = Path(tmp) / f"out{i}"
            wall = timed([*extra, *opts, "--out", str(out)], way_env)
            rows.append((label, wall, stages(out)))
        out = Path(tmp) / f"out{len(ways) - 1}"
        rows.append(("default, rerun (all cached)", timed([*extra, "--out", str(out)], env), stages(out)))
    base = rows[0][1]
    print(f"icm evaluate {' '.join(extra) or '(defaults)'}")
    print(f"{'way':30s} {'wall s':>8s} {'vs first':>9s}   top stages (s, summed over workers)")
    for label, wall, top in rows:
        print(f"{label:30s} {wall:8.1f} {wall / base:8.2f}x   {top}")


if __name__ == "__main__":
    main()
