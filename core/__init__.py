"""icm: image coding for machines.

The core holds the registries, the bitstream container, the hook specifications and the pipelines;
everything else (codecs included) arrives through pluggy hooks.
"""

__version__ = "0.2.0"

from icm.errors import IcmError, UserError  # noqa: E402,F401
from icm.hookspecs import hookimpl  # noqa: E402,F401
