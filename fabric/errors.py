"""The whole ChronoFabric exception tree.

``FabricError`` is the root. Each subclass has one meaning:

- ``AttachError`` family: a named resource could not be opened or created.
- ``LayoutError`` family: a segment exists but speaks another binary layout.
- ``ClosedResourceError``: *this* process closed the handle and then used it.
- ``BrokenResourceError``: the other side failed (a peer died, the fabric was
  marked broken, this subscriber was dropped); the cause is in ``__cause__``.
- ``WouldBlock``: a ``*_nowait`` call could not complete at once.
- ``CodecError``: a record's bytes are not a valid PhasePacket (also a ``ValueError``).

Hot paths never raise for back pressure: they return codes (see ``fabric.ring``).
Blocking calls that run out of time raise the builtin ``TimeoutError``.
Every exception here takes plain ``str`` arguments, so it pickles and can cross
a process boundary as text.
"""

from __future__ import annotations

__all__ = [
    "FabricError",
    "AttachError",
    "SegmentNotFoundError",
    "SegmentExistsError",
    "NotReadyError",
    "InvalidNameError",
    "LayoutError",
    "VersionMismatchError",
    "SizeMismatchError",
    "ClosedResourceError",
    "BrokenResourceError",
    "SubscriberDroppedError",
    "WouldBlock",
    "CodecError",
    "RecordTooLargeError",
    "CapacityError",
    "ConfigError",
    "CausalityViolation",
    "FabricNotRunningError",
    "FabricAlreadyRunningError",
    "UnknownTopicError",
    "ClaimPendingError",
]


class FabricError(Exception):
    """Root of every error ChronoFabric raises on purpose."""


class AttachError(FabricError):
    """A named shared-memory resource could not be created or opened."""


class SegmentNotFoundError(AttachError):
    """No segment by that name exists (is the fabric running?)."""


class SegmentExistsError(AttachError):
    """A segment by that name already exists (another fabric, or a stale one)."""


class NotReadyError(AttachError):
    """The segment exists but its creator never marked it ready before the deadline."""


class InvalidNameError(AttachError, ValueError):
    """A resource name breaks the naming rules (length, characters, slashes)."""


class LayoutError(FabricError):
    """A segment exists but its binary layout is not the one this library speaks."""


class VersionMismatchError(LayoutError):
    """The segment was written by another layout version of ChronoFabric."""


class SizeMismatchError(LayoutError):
    """The segment is smaller or larger than its header says."""


class ClosedResourceError(FabricError):
    """This process closed the handle and then used it."""


class BrokenResourceError(FabricError):
    """The other side failed: a peer died or the fabric was marked broken."""


class SubscriberDroppedError(BrokenResourceError):
    """The ring's producers dropped this subscriber because it fell too far behind."""


class WouldBlock(FabricError):
    """A non-blocking (``*_nowait``) call could not complete at once."""


class CodecError(FabricError, ValueError):
    """A record's bytes are not a valid PhasePacket."""


class RecordTooLargeError(FabricError, ValueError):
    """A record is larger than the ring's maximum record size."""


class CapacityError(FabricError):
    """A fixed-size table (producers, subscribers, workers, topics) is full."""


class ConfigError(FabricError, ValueError):
    """A topology or option is invalid; the message names the field and the reason."""


class CausalityViolation(FabricError):
    """A remote clock stamp is too far ahead of the local physical clock."""


class FabricNotRunningError(AttachError):
    """No fabric of that name is running."""


class FabricAlreadyRunningError(AttachError):
    """A live fabric of that name is already running."""


class ClaimPendingError(FabricError):
    """This writer holds an open claim: commit or abort it before offering or claiming again."""


class UnknownTopicError(FabricError, KeyError):
    """No topic of that name exists in the fabric."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message as written.
        return str(self.args[0]) if self.args else ""
