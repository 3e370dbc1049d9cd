"""Binary layouts of every ChronoFabric shared-memory segment: pure data, no behaviour.

Each module describes one layout as numpy dtypes and byte offsets, with an
ASCII diagram in its docstring. ``LAYOUT_VERSION`` changes whenever any layout
here changes; a process that attaches to a segment of another version is refused.
"""

from shm_layouts.header import (
    CACHE_LINE_BYTES as CACHE_LINE_BYTES,
    LAYOUT_VERSION as LAYOUT_VERSION,
    LAYOUT_VERSION_MAJOR as LAYOUT_VERSION_MAJOR,
    LAYOUT_VERSION_MINOR as LAYOUT_VERSION_MINOR,
    MAGIC as MAGIC,
    SEGMENT_HEADER_BYTES as SEGMENT_HEADER_BYTES,
    SegmentKind as SegmentKind,
)

__all__ = [
    "CACHE_LINE_BYTES",
    "LAYOUT_VERSION",
    "LAYOUT_VERSION_MAJOR",
    "LAYOUT_VERSION_MINOR",
    "MAGIC",
    "SEGMENT_HEADER_BYTES",
    "SegmentKind",
]
