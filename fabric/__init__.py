"""ChronoFabric: lock-free shared-memory messaging for real-time Python pipelines.

The public API, re-exported here (one concept per module behind it):

- ``attach(name)`` → ``FabricClient`` with ``publisher(topic)``, ``subscribe(topic)``,
  ``stats()`` and ``close()`` — talk to a running fabric from any process.
- ``Supervisor``, ``TopologyConfig``, ``load_config``, ``default_topology`` — run one.
- ``Ring``, ``RingConfig``, ``RingWriter``, ``RingReader`` — the shared-memory rings.
- ``PhasePacket``, ``PacketCodec`` — the message and its codec.
- The exception tree (``FabricError`` and below).

The library logs through loguru and is silent by default: ``logger.enable("fabric")``
(the ``chronofabric`` CLI and worker processes do) turns its messages on.
"""

from loguru import logger as _logger

from fabric.errors import (
    AttachError as AttachError,
    BrokenResourceError as BrokenResourceError,
    CapacityError as CapacityError,
    CausalityViolation as CausalityViolation,
    ClosedResourceError as ClosedResourceError,
    CodecError as CodecError,
    ConfigError as ConfigError,
    FabricAlreadyRunningError as FabricAlreadyRunningError,
    FabricError as FabricError,
    FabricNotRunningError as FabricNotRunningError,
    LayoutError as LayoutError,
    RecordTooLargeError as RecordTooLargeError,
    SubscriberDroppedError as SubscriberDroppedError,
    UnknownTopicError as UnknownTopicError,
    VersionMismatchError as VersionMismatchError,
    WouldBlock as WouldBlock,
)
from fabric.packet import PacketCodec as PacketCodec, PhasePacket as PhasePacket
from fabric.ring import Ring as Ring, RingConfig as RingConfig, RingReader as RingReader, RingWriter as RingWriter

_logger.disable("fabric")
_logger.disable("workers")

__all__ = [
    "attach",
    "FabricClient",
    "Supervisor",
    "TopologyConfig",
    "load_config",
    "default_topology",
    "Ring",
    "RingConfig",
    "RingReader",
    "RingWriter",
    "PhasePacket",
    "PacketCodec",
    "AttachError",
    "BrokenResourceError",
    "CapacityError",
    "CausalityViolation",
    "ClosedResourceError",
    "CodecError",
    "ConfigError",
    "FabricAlreadyRunningError",
    "FabricError",
    "FabricNotRunningError",
    "LayoutError",
    "RecordTooLargeError",
    "SubscriberDroppedError",
    "UnknownTopicError",
    "VersionMismatchError",
    "WouldBlock",
]


def __getattr__(name: str):
    # The client, supervisor and config pull in more modules: import them on first use.
    if name in ("attach", "FabricClient"):
        from fabric import client

        return getattr(client, name)
    if name == "Supervisor":
        from fabric.supervisor import Supervisor

        return Supervisor
    if name in ("TopologyConfig", "load_config", "default_topology"):
        from fabric import config

        return getattr(config, name)
    raise AttributeError(f"module 'fabric' has no attribute {name!r}")
