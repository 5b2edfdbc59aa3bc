"""Errors the CLI turns into a one-line message (no traceback): exit code 2 for the user's errors,
1 for faults of the run itself (:class:`RunFault`)."""


class IcmError(Exception):
    """Base class of every error icm raises on purpose."""


class UserError(IcmError):
    """Bad input from the user: unknown names, unreadable files, out-of-range rates, corrupt bitstreams."""


class BitstreamError(UserError):
    """A bitstream that is corrupt, truncated, or made by another codec or other weights."""


class CodecUnavailable(UserError):
    """A registered codec whose backend is missing on this machine (e.g. vvencapp not on PATH)."""


class RunFault(IcmError):
    """The run itself failed, not its input: a damaged checkpoint, a worker that died. Exit code 1."""


class PeerStopped(IcmError):
    """Another worker process of the same run stopped (its own error says why); this rank cannot go on.

    Under ``icm evaluate --workers`` the launcher prints the failing rank's error, so a rank that only
    lost its peer stays silent (exit code :data:`PEER_STOPPED_EXIT`) and the user reads one line."""


PEER_STOPPED_EXIT = 3
