"""Hostile bitstreams (issue 10): structured mutations of real bitstreams of every available codec,
each decoded in a child process, must decode or be refused with a one-line BitstreamError, fast, in
bounded memory; never crash, hang or escape as another exception. Every crashing case ever found is
kept under tests/regressions/bitstreams/ and must stay refused. The long run is
benchmarks/fuzz_bitstreams.py."""

import base64
import json
import os
import random
from pathlib import Path

import pytest

import fuzzing
from icm.bitstream import Bitstream
from icm.errors import BitstreamError

CASES_PER_CODEC = int(os.environ.get("ICM_FUZZ_CASES", "100"))
REGRESSIONS = Path(__file__).parent / "regressions" / "bitstreams"


@pytest.fixture(scope="module")
def worker():
    # the decoders' own defences, whatever this machine's free memory: without ICM_MEMORY_CHECK=off a
    # header claiming tens of megapixels would be refused first by the learned codecs' memory check
    # (tests/test_memory_check.py), with a message that depends on the machine
    w = fuzzing.Worker(env={"ICM_FUZZ_RLIMIT_AS": str(8 << 30), "ICM_MEMORY_CHECK": "off"})
    yield w
    w.close()


def base():
    return Bitstream("bmshj2018-hyperprior", "cai1.2", bytes(8), 64, 48, {"quality": 3},
                     {"main": bytes(range(200)), "hyper": b"\x07" * 40})


def test_serialise_is_to_bytes_when_nothing_is_overridden():
    assert fuzzing.serialise(base()) == base().to_bytes()


def test_every_mutation_kind_yields_a_container_with_a_valid_checksum():
    rng = random.Random(1)
    seen, unchanged = {}, 0
    for kind in fuzzing.KINDS:
        for _ in range(30):
            detail, data = fuzzing.mutate(base(), kind, rng, [b"donor" * 10])
            unchanged += data == base().to_bytes()  # e.g. a size swap of a square image
            try:
                Bitstream.from_bytes(data)
                seen[kind] = seen.get(kind, 0) + 1
            except BitstreamError as exc:  # refused by the container, but never for its checksum
                assert "checksum" not in str(exc), (kind, detail)
    assert unchanged < 0.05 * 30 * len(fuzzing.KINDS)
    # payload and size mutations make parseable containers: they test the decoders, not the CRC
    assert {k for k in fuzzing.KINDS if k.startswith("payload.") or k in ("width", "size", "rate.value")} <= set(seen)


def test_worker_records_a_crash_and_a_hang_and_carries_on():
    w = fuzzing.Worker(timeout=3)
    try:
        assert w.request({"op": "selftest-crash"})["outcome"] == "crash"
        assert w.request({"op": "selftest-hang"})["outcome"] == "hang"
        assert w.restarts == 2
        data = Bitstream("jpeg", "1", b"", 8, 8, {"quality": "abc"}, {"main": b""}).to_bytes()
        answer = w.request({"op": "decode", "codec": fuzzing.spec("jpeg"), "data": base64.b64encode(data).decode()})
        assert answer["outcome"] == "refused" and "invalid rate" in answer["message"], answer
    finally:
        w.close()
    report = fuzzing.Report()
    case = {"kind": "width", "detail": "width=8192", "data": b"x"}
    assert report.add("c", case, {"outcome": "crash", "message": "worker exit status -11"}) == "crash"
    assert report.add("c", case, {"outcome": "refused", "message": "m", "seconds": 2.0, "peak_kb": 0}) == "slow"
    # memory is what the decode added to the worker: a 1 GB baseline plus 1 GB is within the target
    assert report.add("c", case, {"outcome": "decoded", "message": "", "seconds": 0.1, "peak_kb": 2 << 20,
                                  "rss_before_kb": 1 << 20}) == "decoded"
    assert report.add("c", case, {"outcome": "decoded", "message": "", "seconds": 0.1, "peak_kb": 3 << 20,
                                  "rss_before_kb": 1 << 20}) == "memory"
    assert [f["verdict"] for f in report.failures] == ["crash", "slow", "memory"]
    assert report.failures[0]["data"] == b"x" and "| width | 1 | 0 | 1 | 0 | 0 | 1 | 1 | 4 |" in report.outcome_table()


def test_fuzz_every_available_codec(worker, tmp_path):
    names = worker.request({"op": "available"}, timeout=600)["available"]
    assert {"jpeg", "icm-omni", "icm-hyperprior-mse", "bmshj2018-factorized", "mbt2018", "cheng2020-attn"} <= set(names)
    report = fuzzing.run(names, CASES_PER_CODEC, seed=int(os.environ.get("ICM_FUZZ_SEED", "0")), rates_per_codec=1,
                         worker=worker)
    print("\n" + report.outcome_table() + "\n\n" + report.outcome_table(report.codecs, label="codec"))
    for i, f in enumerate(report.failures):
        (tmp_path / f"{f['codec']}-{i}.icm").write_bytes(f["data"])
    assert report.count == len(names) * CASES_PER_CODEC
    assert not report.failures, f"{len(report.failures)} failures (cases in {tmp_path}): " + "\n".join(
        f"{f['verdict']} {f['codec']} {f['kind']} {f['detail']}: {f['message'][:300]}" for f in report.failures[:10])
    for name in names:  # the mutations reach the decoders: some files still decode, some are refused
        assert report.codecs[name]["refused"] > 0
    decoded_kinds = {k for k, c in report.table.items() if c["decoded"]}
    assert {"payload.flip", "payload.zero"} & decoded_kinds


def regression_cases():
    return json.loads((REGRESSIONS / "cases.json").read_text())


@pytest.mark.parametrize("case", regression_cases(), ids=lambda c: c["file"])
def test_every_crash_ever_found_stays_refused(worker, case):
    data = (REGRESSIONS / case["file"]).read_bytes()
    answer = worker.request({"op": "decode", "codec": fuzzing.spec(case["codec"]), "restamp": case.get("restamp", True),
                             "max_pixels": case.get("max_pixels"), "data": base64.b64encode(data).decode()})
    assert answer["outcome"] == "refused", answer
    assert case["refusal"] in answer["message"], answer["message"]
    assert fuzzing.classify(answer) == "refused", answer  # under 1 s, under 1 GB
