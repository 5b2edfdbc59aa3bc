"""Structure-aware fuzzing of icm bitstreams (issue 10), shared by tests/test_fuzz_bitstreams.py and
benchmarks/fuzz_bitstreams.py.

The CRC is no defence (anyone can write a valid one), so the mutator changes what an attacker would:
header fields (size, rate JSON, codec, version, weights hash, stream table) and payload bytes (flip,
truncate, extend, splice, zero), and re-serialises with a valid checksum through
``Bitstream.to_bytes()`` (or, for what a Bitstream cannot hold, such as raw JSON or a duplicate stream
name, through :func:`serialise`, checked against ``to_bytes``).

Decoding happens in a persistent worker process (``python tests/fuzzing.py worker``): importing
torch costs seconds, so one worker decodes many cases; a segfault or a hang kills only the worker,
which is restarted, and the case that killed it is recorded. Per case the worker reports the outcome,
the wall and CPU time and the peak RSS of that decode (the kernel's high-water mark is reset before
each decode through /proc/self/clear_refs).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import select
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

from icm.bitstream import FORMAT_VERSION, MAGIC, Bitstream, _put_bytes8, _put_str8, _put_varint

SIZES = (0, 1, 2, 3, 7, 31, 63, 65, 127, 129, 255, 1000, 4096, 8192, 9459, 9460, 16384, 20000, 60000,
         2**16 - 1, 2**20, 2**31 - 1, 2**32 + 1, 2**40, 2**62)
SIZE_PAIRS = ((8192, 8192), (20000, 20000), (60000, 60000), (9459, 9459), (9460, 9460), (4096, 4096),
              (1, 2**26), (2**26, 1), (2**32, 2**32), (1, 1))
RATE_VALUES = ("abc", "3", "", float("nan"), float("inf"), -float("inf"), -1, 0, 1, 2, 3.5, 0.5, 1.0,
               10**30, -(10**30), 1e308, True, False, None, [], [1], {}, {"quality": 1})
RAW_RATES = (b"NaN", b'{"quality":NaN}', b'{"rate":Infinity}', b"[1]", b'"x"', b"1", b"null", b"",
             b'{"quality":3,"quality":4}', b"[" * 5000 + b"]" * 5000, b'{"q":' * 3000 + b"1" + b"}" * 3000,
             b'{"quality":' + b"9" * 5000 + b"}", b'{"quality":1e999}', b"\xff\xfe", b'{"quality":' + b" " * 60000 + b"1}",
             b'{"rate":0.5,"quality":3}', b'{"scale":0.5}', b'{"qp":32,"scale":"0.5"}', b'{"quality":3,"scale":1}')
CODEC_NAMES = ("jpeg", "hevc", "icm-omni", "bmshj2018-hyperprior", "mbt2018", "nope", "", "x" * 255)
KINDS = ("width", "height", "size", "rate.value", "rate.keys", "rate.raw", "codec", "version", "weights",
         "streams", "header.bytes", "payload.flip", "payload.truncate", "payload.extend", "payload.splice",
         "payload.zero", "payload.random", "combo")


# -- serialisation ------------------------------------------------------------------------------------
def serialise(bs: Bitstream, rate_raw: bytes | None = None, table: list[tuple[str, bytes]] | None = None) -> bytes:
    """Like ``Bitstream.to_bytes`` but with raw rate bytes and an arbitrary stream table (duplicates)."""
    out = bytearray(MAGIC)
    out.append(FORMAT_VERSION)
    _put_str8(out, bs.codec)
    _put_str8(out, bs.codec_version)
    _put_bytes8(out, bs.weights_hash)
    _put_varint(out, bs.width)
    _put_varint(out, bs.height)
    out.append(0 if bs.features is None else 1)
    if bs.features is not None:  # FEATURES: split point, rank, shape
        _put_str8(out, bs.features.split)
        out.append(len(bs.features.shape))
        for n in bs.features.shape:
            _put_varint(out, n)
    rate = json.dumps(bs.rate, separators=(",", ":"), sort_keys=True).encode() if rate_raw is None else rate_raw
    out += struct.pack(">H", len(rate)) + rate
    table = list(bs.streams.items()) if table is None else table
    out.append(len(table))
    for name, payload in table:
        _put_str8(out, name)
        _put_varint(out, len(payload))
    for _, payload in table:
        out += payload
    return with_crc(bytes(out))


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def header_length(bs: Bitstream) -> int:
    return len(bs.to_bytes()) - 4 - sum(map(len, bs.streams.values()))


# -- the mutator ---------------------------------------------------------------------------------------
def mutate(bs: Bitstream, kind: str, rng: random.Random, pool: list[bytes]) -> tuple[str, bytes]:
    """One mutation of ``kind`` of a real bitstream -> (what was done, bytes with a valid CRC)."""
    bs = dataclasses.replace(bs, rate=dict(bs.rate), streams=dict(bs.streams))
    if kind == "width":
        bs.width = rng.choice(SIZES + (bs.width * rng.randint(2, 300),))
        return f"width={bs.width}", bs.to_bytes()
    if kind == "height":
        bs.height = rng.choice(SIZES + (bs.height * rng.randint(2, 300),))
        return f"height={bs.height}", bs.to_bytes()
    if kind == "size":
        bs.width, bs.height = rng.choice(SIZE_PAIRS + ((bs.height, bs.width), (bs.width * 2, bs.height * 2),
                                                         (bs.width * 64, bs.height * 64)))
        return f"size={bs.width}x{bs.height}", bs.to_bytes()
    if kind == "rate.value":
        key = rng.choice(sorted(bs.rate) + ["scale"])
        bs.rate[key] = rng.choice(RATE_VALUES)
        return f"rate[{key}]={bs.rate[key]!r}", bs.to_bytes()
    if kind == "rate.keys":
        op = rng.choice(("drop", "unknown", "rename", "rate", "quality", "empty", "many"))
        if op == "drop" and bs.rate:
            bs.rate.pop(rng.choice(sorted(bs.rate)))
        elif op == "unknown":
            bs.rate[rng.choice(("x", "self", "quality ", "", "\n"))] = 1
        elif op == "rename" and bs.rate:
            bs.rate = {k + "_": v for k, v in bs.rate.items()}
        elif op in ("rate", "quality"):
            bs.rate[op] = 0.5 if op == "rate" else 3
        elif op == "many":
            bs.rate.update({f"k{i}": i for i in range(2000)})
        else:
            bs.rate = {}
        return f"rate keys {op}: {json.dumps(bs.rate)[:60]}", bs.to_bytes()
    if kind == "rate.raw":
        raw = rng.choice(RAW_RATES)
        return f"rate raw {raw[:40]!r}", serialise(bs, rate_raw=raw)
    if kind == "codec":
        bs.codec = rng.choice(CODEC_NAMES)
        return f"codec={bs.codec[:20]!r}", bs.to_bytes()
    if kind == "version":
        bs.codec_version = rng.choice(("", "0", bs.codec_version + "x", "9" * 255, "1\n2", bs.codec_version[:-1]))
        return f"version={bs.codec_version[:20]!r}", bs.to_bytes()
    if kind == "weights":
        h = bytearray(bs.weights_hash or b"\0")
        h[rng.randrange(len(h))] ^= 1 << rng.randrange(8)
        bs.weights_hash = rng.choice((b"", bytes(h), bytes(8), bytes(255), os.urandom(8)))
        return f"weights={bs.weights_hash.hex()[:20]}", bs.to_bytes()
    if kind == "streams":
        return _mutate_streams(bs, rng)
    if kind == "header.bytes":
        data = bytearray(bs.to_bytes()[:-4])
        i = rng.randrange(4, header_length(bs))  # after magic and format version
        data[i] = rng.choice((data[i] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)))
        return f"header byte {i}={data[i]:#04x}", with_crc(bytes(data))
    if kind.startswith("payload."):
        name = rng.choice(sorted(bs.streams))
        detail, bs.streams[name] = _mutate_payload(kind[8:], bs.streams[name], rng, pool)
        return f"{name}: {detail}", bs.to_bytes()
    if kind == "combo":  # a larger size together with a payload change
        k = rng.choice((2, 3, 4, 8, 16, 64, 128))
        bs.width, bs.height = bs.width * k, bs.height * rng.choice((1, k))
        name = rng.choice(sorted(bs.streams))
        op = rng.choice([k[8:] for k in KINDS if k.startswith("payload.")])
        detail, bs.streams[name] = _mutate_payload(op, bs.streams[name], rng, pool)
        return f"size={bs.width}x{bs.height} + {name}: {detail}", bs.to_bytes()
    raise ValueError(f"unknown mutation kind {kind!r}")


def _mutate_streams(bs: Bitstream, rng: random.Random) -> tuple[str, bytes]:
    names = sorted(bs.streams)
    op = rng.choice(("drop", "rename", "add", "swap", "duplicate", "many", "empty", "only"))
    if op == "drop":
        bs.streams.pop(rng.choice(names))
    elif op == "rename":
        n = rng.choice(names)
        bs.streams[rng.choice(("mian", "aux", "hyper", "main", "", "x" * 255))] = bs.streams.pop(n)
    elif op == "add":
        bs.streams[rng.choice(("aux", "extra", "hyper", ""))] = os.urandom(rng.choice((0, 8, 100)))
    elif op == "swap" and len(names) > 1:
        a, b = rng.sample(names, 2)
        bs.streams[a], bs.streams[b] = bs.streams[b], bs.streams[a]
    elif op == "duplicate":
        n = rng.choice(names)
        return f"streams duplicate {n!r}", serialise(bs, table=list(bs.streams.items()) + [(n, bs.streams[n])])
    elif op == "many":
        bs.streams.update({f"s{i}": b"" for i in range(255 - len(names))})
    elif op == "empty":
        bs.streams = {n: b"" for n in names}
    else:
        bs.streams = {}
    return f"streams {op}: {sorted(bs.streams)[:4]}", bs.to_bytes()


def _mutate_payload(op: str, payload: bytes, rng: random.Random, pool: list[bytes]) -> tuple[str, bytes]:
    data = bytearray(payload)
    n = len(data)
    if op == "flip" and n:
        flips = rng.randint(1, 8)
        for _ in range(flips):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        return f"{flips} bit flips", bytes(data)
    if op == "truncate":
        keep = rng.choice(sorted({0, 1, 4, 7, max(0, n - 1), max(0, n - 4), n // 2, rng.randint(0, n)}))
        return f"truncated to {keep} of {n}", bytes(data[:keep])
    if op == "extend":
        extra = rng.choice((os.urandom(rng.randint(1, 64)), bytes(rng.choice((4, 64, 4096))), bytes(data) * 3, b"\xff" * 64))
        return f"{len(extra)} bytes appended", bytes(data) + extra
    if op == "splice":
        donor = rng.choice(pool) if pool else bytes(data)
        a = rng.randint(0, n)
        b = rng.randint(a, n)
        c = rng.randint(0, len(donor))
        d = rng.randint(c, min(len(donor), c + 4096))
        return f"[{a}:{b}] <- donor[{c}:{d}]", bytes(data[:a]) + donor[c:d] + bytes(data[b:])
    if op == "zero" and n:
        a = rng.randrange(n)
        b = rng.randint(a + 1, n)
        data[a:b] = bytes(b - a)
        return f"zeroed [{a}:{b}]", bytes(data)
    if op == "random":
        size = rng.choice((n, rng.randint(0, 4 * n + 8)))
        return f"{size} random bytes", os.urandom(size) if rng.random() < 0.5 else rng.randbytes(size)
    return f"{op} (empty payload, unchanged)", bytes(data)


def cases(bases: list[Bitstream], n: int, seed: int, kinds=KINDS):
    """``n`` mutations spread over ``kinds`` and ``bases`` (reproducible for a seed)."""
    rng = random.Random(seed)
    pool = [p for b in bases for p in b.streams.values()]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        base = rng.randrange(len(bases))
        detail, data = mutate(bases[base], kind, rng, pool)
        yield {"kind": kind, "detail": f"base {base}: {detail}", "data": data}


# -- the worker (child process) --------------------------------------------------------------------------
def _worker() -> None:
    """Reads JSON lines from stdin, answers one JSON line per request on stdout."""
    import resource
    import traceback

    import numpy as np

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a library prints may corrupt the protocol
    if os.environ.get("ICM_FUZZ_RLIMIT_AS"):  # a safety net for the machine, far above the 1 GB target
        limit = int(os.environ["ICM_FUZZ_RLIMIT_AS"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    codecs: dict[str, object] = {}

    def codec_for(spec):
        key = json.dumps(spec, sort_keys=True)
        if key not in codecs:
            from icm.codecs import open_codec

            codecs[key] = open_codec(spec["name"], **spec.get("options", {}))
            if "torch" in sys.modules:  # many small decodes: one thread, so CPU time is the decode's
                sys.modules["torch"].set_num_threads(1)
        return codecs[key]

    def status_kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: the lifetime peak

    def peak_rss_kb(reset: bool) -> int:
        if reset:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets the RSS high-water mark (VmHWM)
            except OSError:
                pass
        return status_kb("VmHWM")

    def rss_kb() -> int:
        return status_kb("VmRSS")

    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "selftest-crash":
            os.kill(os.getpid(), 11)
        if req["op"] == "selftest-hang":
            time.sleep(3600)
        if req["op"] == "available":
            from icm.codecs import open_codec
            from icm.plugins import get_plugins

            names = []
            for name in get_plugins().codecs.names():
                try:
                    if open_codec(name, **_options(name)).unavailable_reason() is None:
                        names.append(name)
                except Exception:
                    pass
            out.write(json.dumps({"available": names}) + "\n")
            out.flush()
            continue
        if req["op"] == "bases":
            codec = codec_for(req["codec"])
            image = _test_image(req["size"])
            streams = []
            for rate in base_rates(codec, req["rates"]):
                bs = codec.to_bitstream(image, **rate)
                _decode(codec, bs, {})  # builds the model now, so the first case is timed fairly
                streams.append(base64.b64encode(bs.to_bytes()).decode())
            out.write(json.dumps({"bases": streams}) + "\n")
            out.flush()
            continue
        codec = codec_for(req["codec"])
        data = base64.b64decode(req["data"])
        from icm.errors import BitstreamError

        if req.get("restamp"):
            data = _restamp(codec, data)
        before = rss_kb()
        peak_rss_kb(reset=True)
        t0, c0 = time.perf_counter(), time.process_time()
        answer = {}
        try:
            limit = {"max_pixels": req["max_pixels"]} if req.get("max_pixels") else {}
            image = _decode(codec, Bitstream.from_bytes(data), limit)
            ok = image is None or (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3)
            answer = {"outcome": "decoded" if ok else "error", "message": f"shape {getattr(image, 'shape', None)}"}
        except BitstreamError as exc:
            msg = str(exc)
            bad = "\n" in msg or "MemoryError" in msg  # a bomb stopped only by RLIMIT_AS is no refusal
            answer = {"outcome": "error" if bad else "refused", "message": msg[:300]}
        except Exception:  # anything else is a traceback the CLI would show
            answer = {"outcome": "error", "message": traceback.format_exc(limit=-4)[-1500:]}
        answer.update(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0,
                      rss_before_kb=before, peak_kb=peak_rss_kb(reset=False))
        out.write(json.dumps(answer) + "\n")
        out.flush()


def _decode(codec, bs: Bitstream, limit: dict):
    """What icm evaluate decodes: pixels, or for a feature codec the tensor and then its picture (None
    for a codec without an image decoder)."""
    if getattr(codec, "kind", "") == "features":
        return codec.decode_all(bs, **limit)[1]
    return codec.from_bitstream(bs, **limit)


def _restamp(codec, data: bytes) -> bytes:
    """A regression file with the current codec version and weights hash, so it keeps reaching the
    decoder after the weights are retrained (a stale hash would be refused before the decoder runs)."""
    from icm.errors import BitstreamError

    try:
        bs = Bitstream.from_bytes(data)
        bs.codec_version = codec.version
        bs.weights_hash = codec.weights_hash(codec._header_rate(bs.rate, "regression"))
        return bs.to_bytes()
    except BitstreamError:
        return data


def _test_image(size: int):
    """A natural-image crop (scikit-image's astronaut) of size x size, so payloads look like real ones."""
    import numpy as np
    from skimage import data

    image = data.astronaut()[60:60 + 4 * size:4, 180:180 + 4 * size:4]
    return np.ascontiguousarray(image[:size, :size])


# -- the parent side -------------------------------------------------------------------------------------
class Worker:
    """A persistent decoding child; restarted after a crash or a hang."""

    def __init__(self, env: dict | None = None, timeout: float = 30.0):
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.proc = None
        self.restarts = 0
        self.warmup: dict | None = None  # the last "bases" request: replayed after a restart

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore", __file__, "worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env, text=True)

    def request(self, req: dict, timeout: float | None = None) -> dict:
        """The worker's answer, or {"outcome": "crash"/"hang", ...} when it died or did not answer.
        A restarted worker first rebuilds its models (the last "bases" request), so a case's time
        limit never includes the restart."""
        if req.get("op") == "bases":
            self.warmup = req
        elif (self.proc is None or self.proc.poll() is not None) and self.warmup:
            self.request(self.warmup, timeout=600)
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout or self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        hung = not ready
        if hung:
            self.proc.kill()
        code = self.proc.wait()
        self.proc, self.restarts = None, self.restarts + 1
        return {"outcome": "hang" if hung else "crash", "message": f"worker exit status {code}",
                "seconds": time.perf_counter() - t0, "cpu": 0.0, "peak_kb": 0, "rss_before_kb": 0}

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def base_rates(codec, count: int) -> list[dict]:
    """Rates to make real bitstreams at: the lowest and highest default points, plus scale 0.5 when the
    codec has the resolution knob."""
    rates = codec.default_rates()
    picked = [rates[0], rates[-1]][:count]
    if count > 2 and 0.5 in codec.rate_control.scales:
        picked.append({**rates[len(rates) // 2], "scale": 0.5})
    return picked


def _options(name: str) -> dict:
    from icm.codecs.architectures import ARCHITECTURES

    return {"weights": "random"} if name in ARCHITECTURES else {}


def spec(name: str) -> dict:
    return {"name": name, "options": _options(name)}


SLOW_REFUSAL_S = 1.0
MEMORY_LIMIT_KB = 1024 * 1024


def classify(answer: dict) -> str:
    """The verdict on one answer. Memory counts what the decode itself added to the worker's resident
    set at its peak: the worker's own baseline (torch, the models, plugins) is not the decode's."""
    outcome = answer["outcome"]
    if outcome in ("decoded", "refused") and answer.get("peak_kb", 0) - answer.get("rss_before_kb", 0) > MEMORY_LIMIT_KB:
        return "memory"
    if outcome == "refused" and answer.get("seconds", 0) > SLOW_REFUSAL_S:
        return "slow"
    return outcome


class Report:
    """Counts per codec and mutation kind, failures with their cases, slowest refusal, peak memory."""

    FAILURES = ("crash", "hang", "error", "slow", "memory")

    def __init__(self):
        self.table: dict[str, Counter] = defaultdict(Counter)
        self.codecs: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[dict] = []
        self.slowest = {"seconds": 0.0}
        self.peak_kb = 0
        self.peak_growth_kb = 0
        self.baseline_kb = 0  # the worker's resident set before a decode: torch, plugins, the codec's models
        self.count = 0

    def add(self, codec: str, case: dict, answer: dict) -> str:
        verdict = classify(answer)
        self.count += 1
        self.table[case["kind"]][verdict] += 1
        self.codecs[codec][verdict] += 1
        self.peak_kb = max(self.peak_kb, answer.get("peak_kb", 0))
        self.peak_growth_kb = max(self.peak_growth_kb, answer.get("peak_kb", 0) - answer.get("rss_before_kb", 0))
        self.baseline_kb = max(self.baseline_kb, answer.get("rss_before_kb", 0))
        if answer["outcome"] == "refused" and answer["seconds"] > self.slowest["seconds"]:
            self.slowest = {"seconds": answer["seconds"], "codec": codec, "kind": case["kind"],
                            "detail": case["detail"], "message": answer["message"][:160]}
        if verdict in self.FAILURES:
            self.failures.append({"codec": codec, "kind": case["kind"], "detail": case["detail"], "verdict": verdict,
                                  "message": answer.get("message", "")[:600], "data": case["data"]})
        return verdict

    def outcome_table(self, rows: dict[str, Counter] | None = None, label: str = "mutation kind") -> str:
        rows = self.table if rows is None else rows
        cols = ["decoded", "refused", *self.FAILURES]
        lines = [f"| {label} | " + " | ".join(cols) + " | total |", "|---" * (len(cols) + 2) + "|"]
        for key in sorted(rows):
            c = rows[key]
            lines.append(f"| {key} | " + " | ".join(str(c[x]) for x in cols) + f" | {sum(c.values())} |")
        total = Counter()
        for c in rows.values():
            total.update(c)
        lines.append("| **all** | " + " | ".join(str(total[x]) for x in cols) + f" | {sum(total.values())} |")
        return "\n".join(lines)


def run(codec_names: list[str], per_codec: int, seed: int = 0, image_size: int = 64, rates_per_codec: int = 2,
        worker: Worker | None = None, report: Report | None = None, progress=None) -> Report:
    """Fuzz each codec with ``per_codec`` cases in one worker (restarted only when a case kills it)."""
    worker = worker or Worker()
    report = report or Report()
    for name in codec_names:
        answer = worker.request({"op": "bases", "codec": spec(name), "size": image_size,
                                 "rates": rates_per_codec}, timeout=600)
        if "bases" not in answer:
            raise RuntimeError(f"cannot make {name} bitstreams to fuzz: {answer}")
        bases = [Bitstream.from_bytes(base64.b64decode(b)) for b in answer["bases"]]
        for case in cases(bases, per_codec, seed=zlib.crc32(f"{seed}:{name}".encode())):
            answer = worker.request({"op": "decode", "codec": spec(name),
                                     "data": base64.b64encode(case["data"]).decode()})
            report.add(name, case, answer)
            if progress:
                progress(name, report)
    return report


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    _worker()
