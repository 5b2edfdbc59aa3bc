"""Decode bitstreams in fresh processes at several torch thread counts.

What must be exact is the entropy decoding: if the hyper-decoder picked a different CDF in
another process, the symbols would come out as garbage. The synthesis transform is float
convolution, and oneDNN may sum in another order with another thread count, so the pixels are
only required to agree within one grey level (measured: 1-2 pixels of ~11k differ by 1).
"""

import json
import subprocess
import sys

import numpy as np

from icm.bitstream import Bitstream

# Records the integer symbols every CompressAI entropy model decodes (before dequantisation).
SCRIPT = """
import hashlib, json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
import numpy as np
from compressai.entropy_models import EntropyModel
from icm.bitstream import Bitstream
from icm.codecs import open_codec

symbols = []
_dequantize = EntropyModel.dequantize
def record(inputs, means=None, dtype=torch.float):
    symbols.append(inputs.to(torch.int64).numpy().tobytes())
    return _dequantize(inputs, means, dtype)
EntropyModel.dequantize = staticmethod(record)

out = []
for job in json.loads(sys.argv[2]):
    symbols.clear()
    bs = Bitstream.load(job["path"])
    pixels = open_codec(bs.codec, **job["options"]).from_bitstream(bs)
    np.save(job["path"] + f".{sys.argv[1]}.npy", pixels)
    out.append(hashlib.sha256(b"".join(symbols)).hexdigest())
print(json.dumps(out))
"""


def assert_same_decode(jobs: list[dict], threads=(1, 2, 3)) -> None:
    """jobs: [{"path": saved bitstream, "options": open_codec kwargs, "pixels": decoded here}]."""
    args = json.dumps([{"path": j["path"], "options": j["options"]} for j in jobs])
    digests = set()
    for n in threads:
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT, str(n), args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.add(proc.stdout.strip())
        for job in jobs:
            there = np.load(job["path"] + f".{n}.npy").astype(int)
            here = job["pixels"].astype(int)
            assert there.shape == here.shape
            diff = np.abs(there - here)
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (job["path"], n, diff.max(), (diff > 0).sum())
    assert len(digests) == 1, digests  # same symbols at every thread count


def save_job(codec, bs: Bitstream, path, **options) -> dict:
    bs.save(path)
    return {"path": str(path), "options": options, "pixels": codec.from_bitstream(bs)}
