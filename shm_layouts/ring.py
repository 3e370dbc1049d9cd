"""The ring segment: a byte ring of variable-length records, several producers, several subscribers.

::

    byte 0      +---------------------------------------------------------------+
                | segment header (128)            shm_layouts.header            |
    128         +---------------------------------------------------------------+
                | CONFIG line: capacity, max_record, max_producers,             |
                |   max_subscribers, multi_producer, slow_policy, offsets...    |  written once
    256         +---------------------------------------------------------------+
                | TAIL line: tail position (claims)                             |  producers
    384         +---------------------------------------------------------------+
                | WAKE line: waiters (sleeping subscribers), doorbell (futex)   |  rarely written
    512         +---------------------------------------------------------------+
                | STATS line: recovered claims/bytes, dropped and reclaimed     |  cold counters
    640         +---------------------------------------------------------------+
                | PRODUCER entry 0 (128): state pid start claim_pos claim_len   |
                |   records bytes back_pressured not_connected min_cache ...    |  one writer each
                | PRODUCER entry 1 ...                                          |
                +---------------------------------------------------------------+
                | SUBSCRIBER entry 0 (256):                                     |
                |   line A: position records bytes            (per batch)       |  one writer each
                |   line B: state pid start joined_at dropped ...               |  rarely written
                | SUBSCRIBER entry 1 ...                                        |
    data_offset +---------------------------------------------------------------+
                | data: capacity bytes (power of two) of records                |
                |   [hdr 16][payload][pad to 8] [hdr][payload] ... [PADDING]    |
                +---------------------------------------------------------------+

Positions are int64 byte counts that only grow and never wrap; the slot of a
position is ``position & (capacity - 1)``. Every hot cell sits on its own
128-byte line so no two writers share a line (Aeron ``RingBufferDescriptor``).
"""

from __future__ import annotations

from shm_layouts.header import CACHE_LINE_BYTES, SEGMENT_HEADER_BYTES

__all__ = [
    "CONFIG_OFFSET",
    "TAIL_OFFSET",
    "WAKE_OFFSET",
    "STATS_OFFSET",
    "PRODUCERS_OFFSET",
    "PRODUCER_ENTRY_BYTES",
    "SUBSCRIBER_ENTRY_BYTES",
    "CFG_CAPACITY",
    "CFG_MAX_RECORD",
    "CFG_MAX_PRODUCERS",
    "CFG_MAX_SUBSCRIBERS",
    "CFG_MULTI_PRODUCER",
    "CFG_SLOW_POLICY",
    "CFG_DATA_OFFSET",
    "CFG_SUBSCRIBERS_OFFSET",
    "CFG_SALT",
    "WAKE_WAITERS",
    "WAKE_DOORBELL",
    "STAT_RECOVERED_CLAIMS",
    "STAT_RECOVERED_BYTES",
    "STAT_DROPPED_SUBSCRIBERS",
    "STAT_RECLAIMED_PRODUCERS",
    "STAT_RECLAIMED_SUBSCRIBERS",
    "P_STATE",
    "P_PID",
    "P_START_MS",
    "P_CLAIM_POS",
    "P_CLAIM_LEN",
    "P_RECORDS",
    "P_BYTES",
    "P_BACK_PRESSURED",
    "P_NOT_CONNECTED",
    "P_MIN_CACHE",
    "S_POSITION",
    "S_RECORDS",
    "S_BYTES",
    "S_STATE",
    "S_PID",
    "S_START_MS",
    "S_DROPPED",
    "S_DURABLE",
    "S_PARKED",
    "STATE_FREE",
    "STATE_ACTIVE",
    "STATE_JOINING",
    "STATE_DROPPED",
    "SlowSubscriberPolicy",
    "ring_segment_bytes",
    "data_offset",
    "subscribers_offset",
    "MIN_CAPACITY",
    "MAX_PRODUCERS_LIMIT",
    "MAX_SUBSCRIBERS_LIMIT",
]

LINE = CACHE_LINE_BYTES
CONFIG_OFFSET = SEGMENT_HEADER_BYTES  # 128
TAIL_OFFSET = CONFIG_OFFSET + LINE  # 256
WAKE_OFFSET = TAIL_OFFSET + LINE  # 384
STATS_OFFSET = WAKE_OFFSET + LINE  # 512
PRODUCERS_OFFSET = STATS_OFFSET + LINE  # 640
PRODUCER_ENTRY_BYTES = LINE
SUBSCRIBER_ENTRY_BYTES = 2 * LINE

MIN_CAPACITY = 4096
MAX_PRODUCERS_LIMIT = 256
MAX_SUBSCRIBERS_LIMIT = 64

# CONFIG line: int64 word index within the line.
CFG_CAPACITY = 0
CFG_MAX_RECORD = 1
CFG_MAX_PRODUCERS = 2
CFG_MAX_SUBSCRIBERS = 3
CFG_MULTI_PRODUCER = 4
CFG_SLOW_POLICY = 5
CFG_DATA_OFFSET = 6
CFG_SUBSCRIBERS_OFFSET = 7
CFG_SALT = 8  # commit words are `position ^ salt`: bit 62 set, bit 63 clear, the rest random per ring

# WAKE line.
WAKE_WAITERS = 0  # how many subscribers are parked (or about to park)
WAKE_DOORBELL = 1  # futex word: bumped by a producer that saw waiters > 0

# STATS line (fetch-add counters, cold).
STAT_RECOVERED_CLAIMS = 0
STAT_RECOVERED_BYTES = 1
STAT_DROPPED_SUBSCRIBERS = 2
STAT_RECLAIMED_PRODUCERS = 3
STAT_RECLAIMED_SUBSCRIBERS = 4

# PRODUCER entry words.
P_STATE = 0
P_PID = 1
P_START_MS = 2
P_CLAIM_POS = 3  # start of this producer's latest claim (written before the claim CAS)
P_CLAIM_LEN = 4  # bytes of that claim, wrap padding included
P_RECORDS = 5
P_BYTES = 6
P_BACK_PRESSURED = 7
P_NOT_CONNECTED = 8
P_MIN_CACHE = 9  # this producer's cached minimum subscriber position

# SUBSCRIBER entry words: line A (hot) then line B (cold, word 16+).
S_POSITION = 0
S_RECORDS = 1
S_BYTES = 2
S_STATE = 16
S_PID = 17
S_START_MS = 18
S_DROPPED = 19  # position at which producers dropped this subscriber
S_DURABLE = 20  # 1: a supervised worker's slot; reclaim_dead leaves it for the restarted worker
S_PARKED = 21  # 1 while this subscriber is counted in `waiters` (so a dead parked one can be uncounted)

STATE_FREE = 0
STATE_ACTIVE = 1
STATE_JOINING = 2
STATE_DROPPED = 3


class SlowSubscriberPolicy:
    """What producers do when the slowest subscriber leaves no room."""

    BLOCK = 0  # back-pressure producers (default): nothing is lost, producers wait
    DROP = 1  # drop the laggard (it gets SubscriberDroppedError), producers go on; counted


def subscribers_offset(max_producers: int) -> int:
    return PRODUCERS_OFFSET + max_producers * PRODUCER_ENTRY_BYTES


def data_offset(max_producers: int, max_subscribers: int) -> int:
    end = subscribers_offset(max_producers) + max_subscribers * SUBSCRIBER_ENTRY_BYTES
    return (end + 4095) & ~4095  # page-aligned data: memcpy and the hardware prefer it


def ring_segment_bytes(capacity: int, max_producers: int, max_subscribers: int) -> int:
    """Total segment size for a ring of ``capacity`` data bytes."""
    return data_offset(max_producers, max_subscribers) + capacity
