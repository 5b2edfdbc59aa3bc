"""Several CompressAI entropy models coded back to back in one rANS string.

Why: every rANS string ends with a 64-bit flush and is padded to whole 32-bit words, and every
container stream costs its name and length. A second string for ``icm-omni``'s hyper-latent cost
11-15 bytes an image (measured on shapes val), 1.9 % of a 128 px file at the lowest rate. CompressAI's
``BufferedRansEncoder`` and ``RansDecoder.decode_stream`` already code groups of symbols in sequence
(its autoregressive models use them so); the decoder reads the first group (z), computes the second
group's CDF indexes from it, then reads the second (y). Only the glue is ours.

The decoder side keeps ``entropy_guard``'s three checks: whole words, a budget check before each
group is read, and two decodes of the string padded with different fills that must agree.
"""

from __future__ import annotations

import numpy as np
import torch

from icm.codecs.entropy_guard import PADDINGS, check_agree, check_budget, check_words, cheapest_bits, padded


def _tables(model) -> tuple[list, list, list]:
    return (model._quantized_cdf.tolist(), model._cdf_length.reshape(-1).int().tolist(),
            model._offset.reshape(-1).int().tolist())


def encode(groups) -> bytes:
    """``groups``: (entropy model, symbols, CDF indexes) in decoding order -> one rANS string."""
    from compressai.ans import BufferedRansEncoder

    encoder = BufferedRansEncoder()
    for model, symbols, indexes in groups:
        encoder.encode_with_indexes(symbols.reshape(-1).int().tolist(), indexes.reshape(-1).int().tolist(),
                                    *_tables(model))
    return encoder.flush()


class Reader:
    """Reads the groups of one string in order. ``symbols``: how many the whole string holds (the
    header's size fixes it), so that the padding covers every read the decoder can make."""

    def __init__(self, string, symbols: int, what: str):
        from compressai.ans import RansDecoder

        self.string, self.what = check_words(string, what), what
        self._decoders = []
        for fill in PADDINGS:
            decoder = RansDecoder()
            decoder.set_stream(padded(self.string, symbols, fill))  # set_stream keeps its own copy
            self._decoders.append(decoder)
        self._bits, self._symbols = 0.0, 0

    def read(self, model, indexes: torch.Tensor) -> torch.Tensor:
        """The next group's symbols, shaped like ``indexes`` (int32)."""
        idx = indexes.reshape(-1).to(torch.int64).cpu().numpy()
        self._bits += cheapest_bits(model, idx, self.what)
        self._symbols += int(idx.size)
        check_budget(self.string, self._bits, self._symbols, self.what)
        tables = _tables(model)
        values = check_agree(*(d.decode_stream(idx.tolist(), *tables) for d in self._decoders),
                             self.string, self._symbols, self.what)
        return torch.tensor(np.asarray(values, dtype=np.int32)).reshape(indexes.shape).to(indexes.device)
