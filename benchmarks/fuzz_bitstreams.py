"""The long version of tests/test_fuzz_bitstreams.py: structured mutations of real bitstreams of every
available codec (or the ones named), each decoded in a persistent child process.

    .venv/bin/python benchmarks/fuzz_bitstreams.py                      # 1,200 cases per codec
    .venv/bin/python benchmarks/fuzz_bitstreams.py -n 5000 --codec icm-omni --codec jpeg
    .venv/bin/python benchmarks/fuzz_bitstreams.py --save-failures failures/   # keep what broke

Prints the count, wall time, the peak RSS of the worker during any single decode (and the most any
decode added to it), the slowest refusal, and outcome tables per mutation kind and per codec.
Outcomes: decoded (garbage allowed, of the header's size), refused (one-line BitstreamError), and the
failures: crash (the worker died, e.g. SIGSEGV), hang (no answer within --timeout), error (any other
exception, or a multi-line message), slow (a refusal over 1 s), memory (a decode peaking over 1 GB).
Exit status 1 when there was any failure. CompressAI architectures run with ``weights="random"``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fuzzing  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--cases", type=int, default=1200, help="mutations per codec")
    ap.add_argument("--codec", action="append", help="codec to fuzz (repeatable; default: every available one)")
    ap.add_argument("--size", type=int, default=64, help="side of the square test image (default 64)")
    ap.add_argument("--rates", type=int, default=3, help="real bitstreams per codec to mutate (rates)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a decode counts as a hang")
    ap.add_argument("--rlimit-as", type=float, default=8.0, help="GB of address space for the worker (safety net)")
    ap.add_argument("--save-failures", type=Path, help="write each failing case here as <codec>-<n>.icm")
    args = ap.parse_args()

    worker = fuzzing.Worker(env={"ICM_FUZZ_RLIMIT_AS": str(int(args.rlimit_as * 2**30))}, timeout=args.timeout)
    names = args.codec or worker.request({"op": "available"}, timeout=600)["available"]
    print(f"fuzzing {len(names)} codecs x {args.cases} cases: {', '.join(names)}", flush=True)
    report = fuzzing.Report()
    t0 = time.perf_counter()
    try:
        for name in names:  # one worker per codec: the peak RSS is then that codec's alone
            t = time.perf_counter()
            before = report.count
            fuzzing.run([name], args.cases, seed=args.seed, image_size=args.size, rates_per_codec=args.rates,
                        worker=worker, report=report)
            worker.close()
            c = report.codecs[name]
            print(f"  {name}: {report.count - before} cases in {time.perf_counter() - t:.0f} s "
                  f"({c['decoded']} decoded, {c['refused']} refused, "
                  f"{sum(c[f] for f in report.FAILURES)} failures)", flush=True)
    finally:
        worker.close()
    total = time.perf_counter() - t0
    print(f"\n{report.count} cases in {total:.0f} s ({report.count / total:.0f}/s); worker restarts {worker.restarts}")
    print(f"peak RSS during a decode: {report.peak_kb / 1024:.0f} MB; a decode added at most "
          f"{report.peak_growth_kb / 1024:.0f} MB to the worker's resident memory, which was at most "
          f"{report.baseline_kb / 1024:.0f} MB before a decode (torch, the plugins, the codec's models)")
    s = report.slowest
    if "codec" in s:
        print(f"slowest refusal: {s['seconds'] * 1000:.0f} ms, {s['codec']} {s['kind']} ({s['detail']}): {s['message']}")
    print("\n" + report.outcome_table() + "\n")
    print(report.outcome_table(report.codecs, label="codec"))
    for f in report.failures[:30]:
        print(f"FAIL {f['verdict']}: {f['codec']} {f['kind']} {f['detail']}: {f['message'][:300]}")
    if args.save_failures and report.failures:
        args.save_failures.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(report.failures):
            (args.save_failures / f"{f['codec']}-{i}.icm").write_bytes(f["data"])
        print(f"wrote {len(report.failures)} failing cases to {args.save_failures}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
