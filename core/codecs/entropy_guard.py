"""Checks that keep a crafted payload away from CompressAI's native rANS decoder.

The decoder (compressai.ans) trusts its input: asked for more symbols than a string holds, it reads
past the end of the buffer, and a header that claims a large image asks for exactly that (an
``icm-hyperprior-mse`` file of 432 bytes claiming 8192x8192 died with SIGSEGV). Every decode that
reaches native code therefore goes through three checks:

1. shape: rANS writes whole 32-bit words and flushes two, so a string is a multiple of 4 bytes and at
   least 8 bytes long;
2. budget: a symbol coded with a CDF of 16-bit precision costs at least ``-log2(max frequency /
   2**16)`` bits, and rANS output is never shorter than the sum of its symbols' costs, so the string
   must hold at least the cheapest possible coding of the latent the header implies;
3. padding: the string is decoded twice, padded with zero words and with 0x11 words (one word per
   symbol, the most the decoder reads outside the rare bypass mode). A payload that holds its
   symbols never reads the padding, so both decodes agree; if they differ, the payload is too short
   for its latent and is refused. The padding means no read leaves memory icm allocated.

``guard(net)`` puts the checks in front of every entropy model of a network; ``check_budget`` lets a
codec refuse a hopeless file from its header alone, before the decoder allocates the latent.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from icm.errors import BitstreamError

WORD = 4
PADDINGS = (b"\x00", b"\x11")  # 0x11: no nibble is 15, so a bypass read in the padding ends at once


def min_bits(model) -> np.ndarray:
    """Per CDF index of an updated CompressAI entropy model: the fewest bits any symbol can cost."""
    cdf = model._quantized_cdf.detach().cpu().to(torch.int64)
    lengths = model._cdf_length.detach().cpu().to(torch.int64)
    freqs = cdf[:, 1:] - cdf[:, :-1]
    valid = torch.arange(freqs.shape[1])[None, :] < (lengths[:, None] - 1)
    top = torch.where(valid, freqs, torch.zeros_like(freqs)).max(dim=1).values.clamp(min=1)
    precision = int(getattr(model, "entropy_coder_precision", 16))
    return (precision - torch.log2(top.to(torch.float64))).numpy()


def check_words(string, what: str) -> bytes:
    if not isinstance(string, (bytes, bytearray)):
        raise BitstreamError(f"{what}: not a byte string")
    if len(string) < 2 * WORD or len(string) % WORD:
        raise BitstreamError(f"{what}: {len(string)} bytes is not an entropy-coded stream (whole 32-bit words, at least 2)")
    return bytes(string)


def check_budget(string: bytes, bits_needed: float, symbols: int, what: str) -> None:
    if bits_needed > 8 * len(string) + 1e-6 * bits_needed + 1:  # the tolerance covers float summation only
        raise BitstreamError(f"{what}: {len(string)} bytes cannot hold the {symbols:,} symbols the header's size "
                             f"implies (they need at least {math.ceil(bits_needed / 8):,} bytes)")


def cheapest_bits(model, idx: np.ndarray, what: str) -> float:
    """The fewest bits the symbols at CDF indexes ``idx`` (int64) can cost; an index outside the
    model's tables is refused."""
    table = min_bits(model)
    if idx.size and (idx.min() < 0 or idx.max() >= len(table)):
        raise BitstreamError(f"{what}: CDF index out of range")
    return float(table[idx].sum())


def check_agree(first: list, second: list, string: bytes, symbols: int, what: str) -> list:
    """The two padded decodes of ``string`` must agree, else it ends before its ``symbols``."""
    if first != second:
        raise BitstreamError(f"{what}: {len(string)} bytes end before the {symbols:,} symbols the header's size "
                             f"implies")
    return first


def check_bottleneck(model, string: bytes, spatial: tuple[int, int], what: str) -> None:
    """Before decoding: an EntropyBottleneck stream of ``spatial`` positions (one CDF per channel)."""
    string = check_words(string, what)
    positions = spatial[0] * spatial[1]
    check_budget(string, float(min_bits(model).sum()) * positions, positions * len(model._cdf_length), what)


def padded(string: bytes, symbols: int, fill: bytes = b"\x00") -> bytes:
    """``string`` followed by one word per symbol (and a little more) of ``fill``."""
    return string + fill * (WORD * (symbols + 64))


class GuardedCoder:
    """Stands in for an entropy model's ``entropy_coder``: encoding passes through, decoding is checked."""

    def __init__(self, coder, model, what: str):
        self._coder, self._model, self.what = coder, model, what
        self.name = coder.name  # EntropyModel.__getstate__ reads it

    def encode_with_indexes(self, *args, **kwargs):
        return self._coder.encode_with_indexes(*args, **kwargs)

    def decode_with_indexes(self, string, indexes, *tables):
        string = check_words(string, self.what)
        idx = np.asarray(indexes, dtype=np.int64)
        check_budget(string, cheapest_bits(self._model, idx, self.what), int(idx.size), self.what)
        first, second = (self._coder.decode_with_indexes(padded(string, idx.size, fill), indexes, *tables)
                         for fill in PADDINGS)
        return check_agree(first, second, string, int(idx.size), self.what)


def guard(net: torch.nn.Module, streams: dict[str, str]) -> torch.nn.Module:
    """Route every entropy model of ``net`` through :class:`GuardedCoder` (idempotent). ``streams``
    maps module names to the icm stream each one decodes, for the messages."""
    from compressai.entropy_models import EntropyModel

    for name, module in net.named_modules():
        if isinstance(module, EntropyModel) and not isinstance(module.entropy_coder, GuardedCoder):
            what = f"stream {streams[name]!r}" if name in streams else f"{name} stream"
            module.entropy_coder = GuardedCoder(module.entropy_coder, module, what)
    return net
