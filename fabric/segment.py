"""Named POSIX shared-memory segments: create, attach, close, unlink.

One ``Segment`` object owns one mapping. The creator (``Segment.create``) owns the
name and is the only one that unlinks it; attachers (``Segment.attach``) map it and
never unlink. Segments are created with mode 0600 (only this user may map them).

Ready handshake (Aeron ``signalCncReady``)::

    creator                                   attacher
    -------                                   --------
    shm_open(O_CREAT|O_EXCL, 0600)            shm_open(existing)
    ftruncate(size); mmap                     wait (with a deadline) for size >= header
    write magic, version, size, kind, pid     mmap; wait (deadline) for ready == READY
    ... initialise the body ...               SYNC POINT: acquire-load of ready
    SYNC POINT: release-store ready = READY   check magic, major version, kind, size

The multiprocessing resource tracker is never involved (it unlinks segments that
other processes still use: cpython#82300).
"""

from __future__ import annotations

import mmap
import os
import re
import stat

import numpy as np
import posix_ipc
from loguru import logger

from fabric import timesource
from fabric._process import self_identity
from fabric.errors import (
    ClosedResourceError,
    InvalidNameError,
    LayoutError,
    NotReadyError,
    SegmentExistsError,
    SegmentNotFoundError,
    SizeMismatchError,
    VersionMismatchError,
)
from shm_layouts.header import (
    CREATOR_PID_WORD,
    CREATOR_START_WORD,
    KIND_WORD,
    LAYOUT_VERSION,
    LAYOUT_VERSION_MAJOR,
    MAGIC,
    MAGIC_WORD,
    READY_VALUE,
    READY_WORD,
    SEGMENT_HEADER_BYTES,
    SIZE_WORD,
    VERSION_WORD,
    SegmentKind,
    version_string,
)

__all__ = ["Segment", "validate_name", "list_segments", "unlink_segment", "peek_creator", "SHM_DIR"]

SHM_DIR = "/dev/shm"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_ATTACH_POLL_S = 0.001


def validate_name(name: str) -> str:
    """Check a segment name and return it without a leading slash.

    Names are 1–201 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit.
    A leading ``/`` is accepted and dropped; any other slash is refused.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"segment name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if "/" in bare:
        raise InvalidNameError(f"segment name {name!r} contains a slash; use letters, digits, '.', '_' and '-'")
    if not _NAME_RE.match(bare):
        raise InvalidNameError(
            f"segment name {name!r} is invalid: use 1-201 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return bare


def _fd_size(fd: int) -> int:
    return os.fstat(fd).st_size


class Segment:
    """One mapping of a named shared-memory segment.

    Use ``Segment.create`` (new, exclusive, caller owns and unlinks) or
    ``Segment.attach`` (existing; never unlinks). ``close()`` is idempotent and
    is what ``with`` calls; an owner's ``close()`` does not unlink — call
    ``unlink()`` (or use ``destroy()``) when the segment should disappear.
    """

    __slots__ = ("name", "size_bytes", "kind", "is_owner", "_mmap", "_u8", "_words", "_closed", "address")

    def __init__(self, name: str, mm: mmap.mmap, size_bytes: int, kind: int, is_owner: bool) -> None:
        self.name = name
        self.size_bytes = size_bytes
        self.kind = kind
        self.is_owner = is_owner
        self._mmap = mm
        self._u8 = np.frombuffer(mm, dtype=np.uint8, count=size_bytes)
        self._words = self._u8.view(np.int64)
        self._closed = False
        self.address = int(self._u8.ctypes.data)

    # --- factories ------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, size_bytes: int, kind: SegmentKind | int, *, mark_ready: bool = True) -> "Segment":
        """Create a new segment (exclusive, mode 0600) and fill its header.

        Parameters
        ----------
        name:
            Segment name (see ``validate_name``).
        size_bytes:
            Total size including the 128-byte header; rounded up to a multiple of 4096.
        kind:
            What the segment holds (``SegmentKind``).
        mark_ready:
            Mark the segment ready at once. Pass ``False`` when the body must be
            initialised first, then call ``mark_ready()``.

        Raises
        ------
        SegmentExistsError
            A segment of that name exists (another fabric, or a stale one: see
            ``chronofabric doctor``).
        """
        bare = validate_name(name)
        if size_bytes < SEGMENT_HEADER_BYTES:
            raise ValueError(f"size_bytes must be at least {SEGMENT_HEADER_BYTES}, got {size_bytes}")
        size_bytes = (int(size_bytes) + 4095) & ~4095
        try:
            shm = posix_ipc.SharedMemory("/" + bare, flags=posix_ipc.O_CREX, mode=0o600, size=size_bytes)
        except posix_ipc.ExistentialError as exc:
            raise SegmentExistsError(
                f"shared-memory segment {bare!r} already exists; if no fabric uses it, "
                f"remove it with `chronofabric doctor --clean` (or unlink /dev/shm/{bare})"
            ) from exc
        try:
            mm = mmap.mmap(shm.fd, size_bytes)
        except OSError:
            shm.close_fd()
            posix_ipc.unlink_shared_memory("/" + bare)
            raise
        shm.close_fd()
        seg = cls(bare, mm, size_bytes, int(kind), True)
        words = seg._words
        pid, start_ms = self_identity()
        words[MAGIC_WORD] = MAGIC
        words[VERSION_WORD] = LAYOUT_VERSION
        words[SIZE_WORD] = size_bytes
        words[KIND_WORD] = int(kind)
        words[CREATOR_PID_WORD] = pid
        words[CREATOR_START_WORD] = start_ms
        if mark_ready:
            seg.mark_ready()
        logger.trace("created segment {} ({} bytes, kind {})", bare, size_bytes, int(kind))
        return seg

    def mark_ready(self) -> None:
        """Publish the segment: attachers waiting for it proceed. Owner only, once the body is initialised."""
        from fabric._ring_kernels import publish_word

        # SYNC POINT: pairs with the attacher's acquire-load of the ready word.
        publish_word(self.address + READY_WORD * 8, READY_VALUE)

    @classmethod
    def attach(
        cls,
        name: str,
        kind: SegmentKind | int | None = None,
        *,
        timeout_ns: int = 5_000_000_000,
    ) -> "Segment":
        """Map an existing segment, waiting up to ``timeout_ns`` for it to be ready.

        Raises
        ------
        SegmentNotFoundError
            No segment of that name exists.
        NotReadyError
            It exists but was not marked ready before the deadline.
        VersionMismatchError, SizeMismatchError, LayoutError
            It speaks another layout, has the wrong size, or is of another kind.
        """
        bare = validate_name(name)
        try:
            shm = posix_ipc.SharedMemory("/" + bare)
        except posix_ipc.ExistentialError as exc:
            raise SegmentNotFoundError(f"no shared-memory segment named {bare!r} (is the fabric running?)") from exc
        clock = timesource.get_time_source()
        deadline = clock.monotonic_ns() + timeout_ns
        try:
            size = _fd_size(shm.fd)
            while size < SEGMENT_HEADER_BYTES:
                if clock.monotonic_ns() >= deadline:
                    raise NotReadyError(f"segment {bare!r} was never sized by its creator (size {size})")
                _sleep_s(_ATTACH_POLL_S)
                size = _fd_size(shm.fd)
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        seg = cls(bare, mm, size, int(kind) if kind is not None else 0, False)
        try:
            seg._wait_ready(deadline, clock)
            seg._check_header(kind)
        except BaseException:
            seg.close()
            raise
        seg.kind = int(seg._words[KIND_WORD])
        logger.trace("attached segment {} ({} bytes)", bare, size)
        return seg

    def _wait_ready(self, deadline: int, clock) -> None:
        from fabric._ring_kernels import read_word

        while read_word(self.address + READY_WORD * 8) != READY_VALUE:
            if clock.monotonic_ns() >= deadline:
                raise NotReadyError(
                    f"segment {self.name!r} exists but its creator never marked it ready; it may be "
                    "stale from a crash: `chronofabric doctor --clean` removes stale segments"
                )
            _sleep_s(_ATTACH_POLL_S)

    def _check_header(self, kind: SegmentKind | int | None) -> None:
        words = self._words
        magic = int(words[MAGIC_WORD])
        if magic != MAGIC:
            raise LayoutError(f"segment {self.name!r} is not a ChronoFabric segment (magic {magic:#x})")
        version = int(words[VERSION_WORD])
        if version >> 16 != LAYOUT_VERSION_MAJOR:
            raise VersionMismatchError(
                f"segment {self.name!r} has layout version {version_string(version)} but this ChronoFabric "
                f"speaks {version_string(LAYOUT_VERSION)}: run the same chronofabric version on both sides, "
                "or restart the fabric with this version (`chronofabric down`, then `chronofabric up`)"
            )
        declared = int(words[SIZE_WORD])
        if declared != self.size_bytes:
            raise SizeMismatchError(
                f"segment {self.name!r} declares {declared} bytes but maps {self.size_bytes}; it is damaged: "
                "restart the fabric"
            )
        if kind is not None and int(words[KIND_WORD]) != int(kind):
            raise LayoutError(
                f"segment {self.name!r} holds kind {int(words[KIND_WORD])}, expected {int(kind)} "
                f"({SegmentKind(int(kind)).name if int(kind) in SegmentKind._value2member_map_ else kind})"
            )

    # --- access ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def u8(self) -> np.ndarray:
        """The whole segment as ``uint8`` (a view, no copy)."""
        self._check_open()
        return self._u8

    @property
    def words(self) -> np.ndarray:
        """The whole segment as ``int64`` cells (a view, no copy)."""
        self._check_open()
        return self._words

    @property
    def creator_pid(self) -> int:
        return int(self._words[CREATOR_PID_WORD])

    @property
    def creator_start_ms(self) -> int:
        return int(self._words[CREATOR_START_WORD])

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"segment {self.name!r} is closed")

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap this process's view (idempotent). Views handed out must be dropped first."""
        if self._closed:
            return
        self._closed = True
        self.address = 0
        self._u8 = None  # type: ignore[assignment]
        self._words = None  # type: ignore[assignment]
        try:
            self._mmap.close()
        except BufferError:
            # Someone still holds a view into the mapping: unmapping now would turn their
            # next read into a segfault. Keep the mapping alive until process exit instead.
            _LEAKED_MAPPINGS.append(self._mmap)
            logger.warning("segment {} closed while views into it are alive; mapping kept until exit", self.name)

    def unlink(self) -> None:
        """Remove the name (owner only). Mappings stay valid until each process closes them."""
        if not self.is_owner:
            raise PermissionError(f"segment {self.name!r} was attached, not created: attachers never unlink")
        unlink_segment(self.name)

    def destroy(self) -> None:
        """``close()`` then ``unlink()`` (owner only)."""
        self.close()
        self.unlink()

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_owner:
            self.destroy()
        else:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size_bytes} bytes"
        return f"<Segment {self.name!r} {state}{' owner' if self.is_owner else ''}>"


_LEAKED_MAPPINGS: list[mmap.mmap] = []


def _sleep_s(seconds: float) -> None:
    # A bounded sleep is not a clock read; it only parks the thread.
    import time

    time.sleep(seconds)


def unlink_segment(name: str) -> bool:
    """Remove a segment's name; True if it existed."""
    bare = validate_name(name)
    try:
        posix_ipc.unlink_shared_memory("/" + bare)
        logger.trace("unlinked segment {}", bare)
        return True
    except posix_ipc.ExistentialError:
        return False


def peek_creator(name: str) -> tuple[int, int] | None:
    """``(creator pid, creator start ms)`` from a segment's header, or None if it has none yet.

    Maps only the header, waits for nothing and checks nothing else: for tools that
    decide whether a segment is stale (its creator is dead).
    """
    bare = validate_name(name)
    try:
        shm = posix_ipc.SharedMemory("/" + bare)
    except posix_ipc.ExistentialError:
        return None
    try:
        if _fd_size(shm.fd) < SEGMENT_HEADER_BYTES:
            return None
        mm = mmap.mmap(shm.fd, SEGMENT_HEADER_BYTES, prot=mmap.PROT_READ)
    finally:
        shm.close_fd()
    try:
        words = np.frombuffer(mm, dtype=np.int64, count=SEGMENT_HEADER_BYTES // 8)
        if int(words[MAGIC_WORD]) != MAGIC:
            del words
            return None
        out = int(words[CREATOR_PID_WORD]), int(words[CREATOR_START_WORD])
        del words
        return out
    finally:
        mm.close()


def list_segments(prefix: str) -> list[str]:
    """Names of existing segments that start with ``prefix`` (from /dev/shm)."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.startswith(prefix):
            try:
                if stat.S_ISREG(os.stat(os.path.join(SHM_DIR, n)).st_mode):
                    out.append(n)
            except FileNotFoundError:
                continue
    return sorted(out)
