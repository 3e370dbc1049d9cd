"""The blob arena: one copy in, zero copies out, holds per inbox, exact reclamation."""

from __future__ import annotations

import numpy as np
import pytest

from fabric.arena import BlobArena
from fabric.errors import BrokenResourceError, CapacityError
from shm_layouts.arena import IN_FLIGHT


@pytest.fixture
def arena(prefix):
    a = BlobArena.create(f"{prefix}-arena", 1 << 20, slots=8)
    yield a
    a.destroy()


class TestPutAndView:
    def test_a_view_shows_the_array_read_only_without_a_copy(self, arena):
        src = np.arange(12.0).reshape(3, 4)
        ref = arena.put(src, owner=40)
        v = arena.view(ref)
        assert v.shape == (3, 4) and v.dtype == src.dtype
        assert np.array_equal(v, src)
        assert not v.flags.writeable
        assert np.shares_memory(v, arena.view(ref)), "two views must alias the same shared memory"
        del v

    @pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64, np.complex128])
    def test_dtypes_and_shapes_round_trip(self, arena, dtype):
        src = (np.arange(60) % 7).astype(dtype).reshape(3, 4, 5)
        ref = arena.put(src, owner=1)
        assert np.array_equal(arena.view(ref), src)

    def test_a_new_blob_is_held_in_flight_by_its_publisher(self, arena):
        ref = arena.put(np.zeros(4), owner=3)
        assert arena.holders(ref) == IN_FLIGHT


class TestHolds:
    def test_the_last_release_frees_the_space(self, arena):
        ref = arena.put(np.zeros(1000), owner=33)
        # the router's job, done by hand: two inboxes take holds, then the in-flight hold drops
        from fabric import _ring_kernels as K
        from shm_layouts.arena import B_HOLDERS

        addr = arena._slot_addr((ref & 0xFFFFF) - 1) + B_HOLDERS * 8
        K.add_word(addr, (1 << 2) | (1 << 5))
        arena.release_in_flight(ref)
        assert arena.statistics().blobs == 1
        arena.release(ref, inbox=2)
        assert arena.statistics().blobs == 1
        arena.release(ref, inbox=5)
        st = arena.statistics()
        assert st.blobs == 0 and st.bytes_in_use == 0 and st.frees == 1

    def test_a_stale_reference_is_refused_once_the_slot_is_reused(self, arena):
        ref = arena.put(np.zeros(8), owner=1)
        arena.release_in_flight(ref)
        ref2 = arena.put(np.ones(8), owner=1)
        assert (ref2 & 0xFFFFF) == (ref & 0xFFFFF), "the freed slot is reused"
        with pytest.raises(BrokenResourceError, match="stale"):
            arena.view(ref)
        assert np.array_equal(arena.view(ref2), np.ones(8))

    def test_a_dead_clients_holds_and_unrouted_blobs_are_released(self, arena):
        from fabric import _ring_kernels as K
        from shm_layouts.arena import B_HOLDERS

        held = arena.put(np.zeros(8), owner=1)
        K.add_word(arena._slot_addr((held & 0xFFFFF) - 1) + B_HOLDERS * 8, 1 << 7)
        arena.release_in_flight(held)  # routed to inbox 7 only
        unrouted = arena.put(np.zeros(8), owner=40)  # the dead client's, never published
        other = arena.put(np.zeros(8), owner=41)
        n = arena.release_client(40, 1 << 7)
        assert n == 2
        assert arena.statistics().blobs == 1
        assert arena.holders(other) == IN_FLIGHT


class TestRoom:
    def test_no_room_is_a_clear_error_and_released_space_is_reused(self, arena):
        refs = [arena.put(np.zeros(200_000, np.uint8), owner=1) for _ in range(4)]
        with pytest.raises(CapacityError, match="no room"):
            arena.put(np.zeros(300_000, np.uint8), owner=1)
        assert arena.statistics().failures == 1
        for r in refs[:2]:
            arena.release_in_flight(r)
        ref = arena.put(np.zeros(300_000, np.uint8), owner=1)  # fits in the gap the first two left
        assert arena.view(ref).nbytes == 300_000

    def test_running_out_of_slots_is_a_clear_error(self, arena):
        for _ in range(8):
            arena.put(np.zeros(4), owner=1)
        with pytest.raises(CapacityError, match="slots"):
            arena.put(np.zeros(4), owner=1)

    def test_object_arrays_are_refused(self, arena):
        with pytest.raises(TypeError):
            arena.put(np.array([object()]), owner=1)
