"""Named shared-memory segments: create, attach, close, unlink, the ready handshake, refusals."""

from __future__ import annotations

import os
import stat
import threading
import time

import numpy as np
import posix_ipc
import pytest

from fabric.errors import (
    AttachError,
    ClosedResourceError,
    InvalidNameError,
    LayoutError,
    NotReadyError,
    SegmentExistsError,
    SegmentNotFoundError,
    SizeMismatchError,
    VersionMismatchError,
)
from fabric.segment import Segment, list_segments, unlink_segment, validate_name
from shm_layouts.header import (
    CREATOR_PID_WORD,
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
)

SHORT_NS = 150_000_000  # how long a test waits for something that must not happen


def _shm_path(name: str) -> str:
    return os.path.join("/dev/shm", name)


class TestCreate:
    def test_create_fills_the_header_and_marks_ready(self, prefix):
        with Segment.create(f"{prefix}-a", 5000, SegmentKind.TEST) as seg:
            assert seg.is_owner and not seg.closed
            assert seg.size_bytes == 8192  # rounded up to whole pages
            w = seg.words
            assert int(w[MAGIC_WORD]) == MAGIC
            assert int(w[VERSION_WORD]) == LAYOUT_VERSION
            assert int(w[SIZE_WORD]) == 8192
            assert int(w[KIND_WORD]) == SegmentKind.TEST
            assert int(w[CREATOR_PID_WORD]) == os.getpid() == seg.creator_pid
            assert seg.creator_start_ms > 0
            assert int(w[READY_WORD]) == READY_VALUE
            assert len(seg.u8) == 8192 and seg.u8.dtype == np.uint8
            assert not seg.u8[SEGMENT_HEADER_BYTES:].any()  # the body starts zeroed

    def test_created_with_mode_0600(self, prefix):
        with Segment.create(f"{prefix}-mode", 4096, SegmentKind.TEST) as seg:
            st = os.stat(_shm_path(seg.name))
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.getuid()
            assert st.st_size == 4096

    def test_too_small_is_refused(self, prefix):
        with pytest.raises(ValueError):
            Segment.create(f"{prefix}-tiny", SEGMENT_HEADER_BYTES - 1, SegmentKind.TEST)
        assert list_segments(prefix) == []

    def test_second_create_of_a_name_is_refused_and_leaves_the_first_intact(self, prefix):
        with Segment.create(f"{prefix}-dup", 4096, SegmentKind.TEST) as first:
            first.words[20] = 1234
            with pytest.raises(SegmentExistsError) as info:
                Segment.create(f"{prefix}-dup", 4096, SegmentKind.TEST)
            assert "already exists" in str(info.value)
            assert isinstance(info.value, AttachError)
            assert int(first.words[20]) == 1234
            with Segment.attach(f"{prefix}-dup") as again:
                assert int(again.words[20]) == 1234

    def test_leading_slash_is_accepted_and_dropped(self, prefix):
        with Segment.create(f"/{prefix}-slash", 4096, SegmentKind.TEST) as seg:
            assert seg.name == f"{prefix}-slash"
            with Segment.attach(f"{prefix}-slash") as att:
                assert att.name == seg.name


class TestNames:
    @pytest.mark.parametrize(
        "bad",
        ["a/b", "/a/b", "dir/", "", "/", ".hidden", "-dash", "sp ace", "x" * 202, "tab\t", "é"],
    )
    def test_invalid_names_are_refused(self, bad):
        with pytest.raises(InvalidNameError):
            validate_name(bad)
        with pytest.raises(InvalidNameError):
            Segment.create(bad, 4096, SegmentKind.TEST)
        with pytest.raises(InvalidNameError):
            Segment.attach(bad, timeout_ns=1)

    def test_a_slash_inside_the_name_is_explained(self):
        with pytest.raises(InvalidNameError, match="slash"):
            Segment.create("ring/one", 4096, SegmentKind.TEST)

    def test_invalid_name_is_also_a_value_error(self):
        with pytest.raises(ValueError):
            validate_name("a/b")

    def test_non_string_name_is_refused(self):
        with pytest.raises(InvalidNameError):
            validate_name(b"bytes-name")  # type: ignore[arg-type]

    @pytest.mark.parametrize("good", ["a", "A9", "ring-1.data_x", "9" * 201])
    def test_valid_names(self, good):
        assert validate_name(good) == good
        assert validate_name("/" + good) == good


class TestAttach:
    def test_attacher_sees_the_creators_writes_and_vice_versa(self, prefix):
        with Segment.create(f"{prefix}-sh", 4096, SegmentKind.TEST) as seg:
            with Segment.attach(seg.name, SegmentKind.TEST) as att:
                assert not att.is_owner
                assert att.size_bytes == seg.size_bytes
                assert att.kind == SegmentKind.TEST
                assert att.creator_pid == os.getpid()
                seg.words[100] = 0x5EED
                assert int(att.words[100]) == 0x5EED
                att.u8[2000:2004] = [1, 2, 3, 4]
                assert list(seg.u8[2000:2004]) == [1, 2, 3, 4]

    def test_attach_without_kind_reports_the_segments_kind(self, prefix):
        with Segment.create(f"{prefix}-k", 4096, SegmentKind.ARENA):
            with Segment.attach(f"{prefix}-k") as att:
                assert att.kind == SegmentKind.ARENA

    def test_missing_segment(self, prefix):
        with pytest.raises(SegmentNotFoundError, match="no shared-memory segment"):
            Segment.attach(f"{prefix}-missing", timeout_ns=SHORT_NS)

    def test_wrong_kind_is_a_layout_error(self, prefix):
        with Segment.create(f"{prefix}-kind", 4096, SegmentKind.CONTROL):
            with pytest.raises(LayoutError, match="kind") as info:
                Segment.attach(f"{prefix}-kind", SegmentKind.RING, timeout_ns=SHORT_NS)
            assert not isinstance(info.value, VersionMismatchError)

    def test_other_major_version_is_refused_with_advice(self, prefix):
        seg = Segment.create(f"{prefix}-ver", 4096, SegmentKind.TEST, mark_ready=False)
        try:
            other = ((LAYOUT_VERSION_MAJOR + 1) << 16) | 3
            seg.words[VERSION_WORD] = other
            seg.mark_ready()
            with pytest.raises(VersionMismatchError) as info:
                Segment.attach(seg.name, SegmentKind.TEST, timeout_ns=SHORT_NS)
            msg = str(info.value)
            assert f"{LAYOUT_VERSION_MAJOR + 1}.3" in msg  # what it found
            assert f"{LAYOUT_VERSION_MAJOR}.{LAYOUT_VERSION & 0xFFFF}" in msg  # what we speak
            assert "same chronofabric version" in msg and "restart" in msg  # what to do
            assert isinstance(info.value, LayoutError)
        finally:
            seg.destroy()

    def test_other_minor_version_is_accepted(self, prefix):
        seg = Segment.create(f"{prefix}-minor", 4096, SegmentKind.TEST, mark_ready=False)
        try:
            seg.words[VERSION_WORD] = (LAYOUT_VERSION_MAJOR << 16) | 0x7FFF
            seg.mark_ready()
            with Segment.attach(seg.name, SegmentKind.TEST, timeout_ns=SHORT_NS) as att:
                assert att.size_bytes == 4096
        finally:
            seg.destroy()

    def test_wrong_magic_is_a_layout_error(self, prefix):
        seg = Segment.create(f"{prefix}-magic", 4096, SegmentKind.TEST, mark_ready=False)
        try:
            seg.words[MAGIC_WORD] = 0x1234
            seg.mark_ready()
            with pytest.raises(LayoutError, match="not a ChronoFabric segment"):
                Segment.attach(seg.name, timeout_ns=SHORT_NS)
        finally:
            seg.destroy()

    def test_declared_size_disagreeing_with_the_mapping_is_refused(self, prefix):
        seg = Segment.create(f"{prefix}-size", 4096, SegmentKind.TEST, mark_ready=False)
        try:
            seg.words[SIZE_WORD] = 8192
            seg.mark_ready()
            with pytest.raises(SizeMismatchError):
                Segment.attach(seg.name, timeout_ns=SHORT_NS)
        finally:
            seg.destroy()

    def test_foreign_segment_never_sized_times_out_as_not_ready(self, prefix):
        name = f"{prefix}-unsized"
        shm = posix_ipc.SharedMemory("/" + name, flags=posix_ipc.O_CREX, mode=0o600, size=0)
        shm.close_fd()
        try:
            with pytest.raises(NotReadyError, match="never sized"):
                Segment.attach(name, timeout_ns=SHORT_NS)
        finally:
            assert unlink_segment(name)


class TestReadyHandshake:
    def test_attach_times_out_when_never_marked_ready(self, prefix):
        seg = Segment.create(f"{prefix}-nr", 4096, SegmentKind.TEST, mark_ready=False)
        try:
            with pytest.raises(NotReadyError) as info:
                Segment.attach(seg.name, SegmentKind.TEST, timeout_ns=SHORT_NS)
            assert "never marked it ready" in str(info.value)
            assert "doctor" in str(info.value)  # says how to clean a stale one
        finally:
            seg.destroy()

    def test_attacher_waits_for_ready_and_then_sees_the_initialised_body(self, prefix):
        seg = Segment.create(f"{prefix}-late", 4096, SegmentKind.TEST, mark_ready=False)

        def initialise_then_mark_ready():
            time.sleep(0.1)
            seg.words[64] = 4242
            seg.mark_ready()

        t = threading.Thread(target=initialise_then_mark_ready)
        t.start()
        try:
            with Segment.attach(seg.name, SegmentKind.TEST, timeout_ns=10_000_000_000) as att:
                assert int(att.words[READY_WORD]) == READY_VALUE
                assert int(att.words[64]) == 4242
        finally:
            t.join(timeout=10)
            seg.destroy()


class TestCloseAndUnlink:
    def test_close_is_idempotent_and_further_use_is_refused(self, prefix):
        seg = Segment.create(f"{prefix}-cl", 4096, SegmentKind.TEST)
        try:
            seg.close()
            seg.close()
            assert seg.closed
            with pytest.raises(ClosedResourceError):
                seg.words
            with pytest.raises(ClosedResourceError):
                seg.u8
            assert "closed" in repr(seg)
        finally:
            seg.unlink()

    def test_owner_close_does_not_unlink_but_unlink_does(self, prefix):
        seg = Segment.create(f"{prefix}-own", 4096, SegmentKind.TEST)
        seg.close()
        assert os.path.exists(_shm_path(seg.name))
        assert list_segments(prefix) == [seg.name]
        seg.unlink()
        assert not os.path.exists(_shm_path(seg.name))
        assert list_segments(prefix) == []
        with pytest.raises(SegmentNotFoundError):
            Segment.attach(seg.name, timeout_ns=SHORT_NS)

    def test_destroy_and_with_block_unlink_for_the_owner(self, prefix):
        seg = Segment.create(f"{prefix}-d", 4096, SegmentKind.TEST)
        seg.destroy()
        assert not os.path.exists(_shm_path(seg.name))
        with Segment.create(f"{prefix}-w", 4096, SegmentKind.TEST) as seg2:
            assert os.path.exists(_shm_path(seg2.name))
        assert not os.path.exists(_shm_path(seg2.name))

    def test_attachers_cannot_unlink(self, prefix):
        with Segment.create(f"{prefix}-att", 4096, SegmentKind.TEST) as seg:
            att = Segment.attach(seg.name)
            with pytest.raises(PermissionError, match="attachers never unlink"):
                att.unlink()
            with pytest.raises(PermissionError):
                att.destroy()
            assert att.closed  # destroy closed it before refusing to unlink
            assert os.path.exists(_shm_path(seg.name))
            with Segment.attach(seg.name) as att2:
                pass
            assert att2.closed
            assert os.path.exists(_shm_path(seg.name))  # an attacher's with-block never unlinks

    def test_mapping_stays_valid_for_others_after_unlink(self, prefix):
        seg = Segment.create(f"{prefix}-ul", 4096, SegmentKind.TEST)
        att = Segment.attach(seg.name)
        try:
            seg.unlink()
            att.words[30] = 77
            assert int(seg.words[30]) == 77
        finally:
            att.close()
            seg.close()

    def test_close_with_live_views_keeps_the_memory_mapped(self, prefix):
        with Segment.create(f"{prefix}-view", 4096, SegmentKind.TEST) as seg:
            view = seg.u8[200:208]
            view[:] = 9
            seg.close()  # must not unmap under the live view (that would segfault on use)
            assert seg.closed
            assert list(view) == [9] * 8
            view[0] = 1
            assert view[0] == 1
            del view

    def test_unlink_segment_reports_whether_it_existed(self, prefix):
        seg = Segment.create(f"{prefix}-u", 4096, SegmentKind.TEST)
        seg.close()
        assert unlink_segment(seg.name) is True
        assert unlink_segment(seg.name) is False
