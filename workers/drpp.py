"""The DRPP worker: periodic components in sensor streams, and information flow between streams.

Inputs (its inbox)::

    sensor          {"stream": str, "rate_hz": float, "t0_ns": int, "samples": float64 ndarray}
    ems.modulation  {"sensitivity_scale": float, ...}: scales every detector's threshold

Outputs on ``drpp.patterns``::

    {"kind": "pattern", "stream", "frequency_hz", "amplitude", "phase_rad", "strength", "block_end_ns"}
    {"kind": "transfer_entropy", "source": str, "target": str, "bits": float, "at_ns": int}

One ``ResonanceDetector`` per stream (``workers._resonance``: Goertzel bank, Grandke
refinement; its docstring states the error bounds). ``t0_ns`` is the time of a chunk's
first sample; the detector is given the time of its last, so ``block_end_ns`` is in the
sensor's time base. A chunk that does not start one sample period after the previous one
ended (a gap, an overlap, or a new rate) resets that stream's detector and history.

Every ``te_interval_ms`` the worker estimates transfer entropy (Schreiber 2000, history
length 1, plug-in estimator over ``te_bins`` quantile bins) in both directions between
every pair of streams with the same rate, at least ``te_min_samples`` overlapping samples
and new samples since the previous round; the series are aligned on sample times (the
newest ``te_window`` samples up to the earlier of the two streams' newest samples).
``at_ns`` is the time of the last sample of the window. The estimator's bias for
independent series is about ``(bins-1)**2 * bins / (2 n ln 2)`` bits (0.13 bits for 6 bins
over 2048 samples): compare values with each other, not with zero.

Counters (its row's ``c``): ``c[0]`` samples, ``c[1]`` blocks analysed, ``c[2]`` pattern
events, ``c[3]`` transfer-entropy values, ``c[4]`` streams tracked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from loguru import logger

from fabric.packet import PhasePacket
from fabric.wait import Parker
from workers._resonance import ResonanceDetector, transfer_entropy
from workers.base import Worker, WorkerContext

__all__ = ["DrppWorker"]

SENSOR_TOPIC = "sensor"
MODULATION_TOPIC = "ems.modulation"
PATTERNS_TOPIC = "drpp.patterns"

_C_SAMPLES, _C_BLOCKS, _C_EVENTS, _C_TE, _C_STREAMS = range(5)


class _Stream:
    """One sensor stream: its detector and the recent samples kept for transfer entropy."""

    __slots__ = ("name", "rate_hz", "detector", "history", "count", "end_ns", "seen", "te_seen")

    def __init__(self, name: str, rate_hz: float, detector: ResonanceDetector, window: int) -> None:
        self.name = name
        self.rate_hz = rate_hz
        self.detector = detector
        self.history = np.empty(window, dtype=np.float64)  # the newest `count` samples, oldest first
        self.count = 0
        self.end_ns: int | None = None  # time of the newest sample
        self.seen = 0  # samples received
        self.te_seen = -1  # `seen` at the last transfer-entropy round

    def append(self, samples: np.ndarray) -> None:
        w = self.history.size
        m = samples.size
        if m >= w:
            self.history[:] = samples[m - w :]
            self.count = w
            return
        keep = min(self.count, w - m)
        if keep:
            self.history[:keep] = self.history[self.count - keep : self.count]
        self.history[keep : keep + m] = samples
        self.count = keep + m

    def reset(self) -> None:
        self.detector.reset()
        self.count = 0
        self.end_ns = None


class DrppWorker(Worker):
    """Resonance detection per stream and transfer entropy between streams (see the module docstring).

    Options
    -------
    block_size : int
        Samples per analysed block (default 1024): resolution ``rate_hz / block_size``.
    hop_size : int, optional
        Samples between blocks (default ``block_size // 2``: half-overlapping blocks).
    threshold : float
        Detection threshold on normalised strength (default 16: ~1e-7 false alarms per bin in white noise).
    max_events_per_block : int
        Strongest peaks reported per block (default 8).
    min_frequency_hz, max_frequency_hz : float, optional
        Search band (default: the whole band between 0 and Nyquist).
    te_interval_ms : float
        Period of the transfer-entropy round (default 1000; 0 disables it).
    te_window, te_min_samples, te_bins : int
        Samples per estimate (2048), fewest overlapping samples to estimate (512), quantile bins (6).
    max_streams : int
        Streams tracked at most (default 32); samples of further streams are counted as dropped.
    max_te_pairs : int
        Stream pairs estimated per round at most (default 32; two values each).
    poll_batch : int
        Packets taken from the inbox per step (default 64).
    priority : int
        Priority of the packets it publishes (default 0).
    """

    kind = "drpp"

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        block_size: int = 1024,
        hop_size: int | None = None,
        threshold: float = 16.0,
        max_events_per_block: int = 8,
        min_frequency_hz: float | None = None,
        max_frequency_hz: float | None = None,
        te_interval_ms: float = 1000.0,
        te_window: int = 2048,
        te_min_samples: int = 512,
        te_bins: int = 6,
        max_streams: int = 32,
        max_te_pairs: int = 32,
        poll_batch: int = 64,
        priority: int = 0,
    ) -> None:
        super().__init__(ctx)
        if int(block_size) < 16:
            raise ValueError(f"drpp: block_size must be >= 16, got {block_size}")
        if not (threshold > 0 and math.isfinite(threshold)):
            raise ValueError(f"drpp: threshold must be positive, got {threshold}")
        if not 2 <= int(te_bins) <= 64:
            raise ValueError(f"drpp: te_bins must be in 2..64, got {te_bins}")
        if int(te_min_samples) < 3 or int(te_window) < int(te_min_samples):
            raise ValueError("drpp: need 3 <= te_min_samples <= te_window")
        self.block_size = int(block_size)
        self.hop_size = int(hop_size) if hop_size is not None else max(1, self.block_size // 2)
        self.threshold = float(threshold)
        self.max_events_per_block = int(max_events_per_block)
        self.min_frequency_hz = min_frequency_hz
        self.max_frequency_hz = max_frequency_hz
        self.te_interval_ns = int(float(te_interval_ms) * 1e6)
        self.te_window = int(te_window)
        self.te_min_samples = int(te_min_samples)
        self.te_bins = int(te_bins)
        self.max_streams = int(max_streams)
        self.max_te_pairs = int(max_te_pairs)
        self.poll_batch = int(poll_batch)
        self.priority = int(priority)
        self.sensitivity_scale = 1.0
        self.streams: dict[str, _Stream] = {}
        self.inbox = ctx.inbox_reader()
        self.writer = ctx.publisher()
        self._next_te = 0
        self._errors_logged = 0

    # --- step -------------------------------------------------------------------------------

    def step(self, now_ns: int) -> int:
        work = 0
        if self.inbox is not None:
            pkts = self.inbox.receive_batch(self.poll_batch)
            if pkts:
                self.ctx.counters["received"] += len(pkts)
                work += len(pkts)
                for pkt in pkts:
                    try:
                        if pkt.topic == SENSOR_TOPIC:
                            self._on_sensor(pkt)
                        elif pkt.topic == MODULATION_TOPIC:
                            self._on_modulation(pkt)
                    except Exception as exc:  # noqa: BLE001 - a bad packet must not stop the worker
                        self._log_error(f"packet on {pkt.topic!r} from {pkt.source}: {type(exc).__name__}: {exc}")
        if self.te_interval_ns and now_ns >= self._next_te:
            self._next_te = now_ns + self.te_interval_ns
            work += self._transfer_entropy_round()
        return work

    def _on_sensor(self, pkt: PhasePacket) -> None:
        p = pkt.payload
        if not isinstance(p, dict):
            raise TypeError(f"sensor payload must be a dict, got {type(p).__name__}")
        name = str(p["stream"])
        rate = float(p["rate_hz"])
        t0 = int(p["t0_ns"])
        samples = np.ascontiguousarray(p["samples"], dtype=np.float64).ravel()
        if samples.size == 0:
            return
        if not (rate > 0.0 and math.isfinite(rate)):
            raise ValueError(f"stream {name!r}: rate_hz must be positive, got {rate}")
        if not np.all(np.isfinite(samples)):
            raise ValueError(f"stream {name!r}: samples must be finite")
        st = self.streams.get(name)
        if st is None or st.rate_hz != rate:
            st = self._new_stream(name, rate)
            if st is None:
                self.ctx.counters["dropped"] += 1
                return
        period = 1e9 / rate
        if st.end_ns is not None and abs(t0 - (st.end_ns + period)) > 0.5 * period:
            st.reset()  # a gap or an overlap: blocks must not straddle it
        end_ns = t0 + int(round((samples.size - 1) * period))
        blocks_before = st.detector.statistics().blocks
        events = st.detector.push(samples, end_ns)
        st.append(samples)
        st.end_ns = end_ns
        st.seen += samples.size
        c = self.ctx.counters["c"]
        c[_C_SAMPLES] += samples.size
        c[_C_BLOCKS] += st.detector.statistics().blocks - blocks_before
        for ev in events:
            self._publish(
                {
                    "kind": "pattern",
                    "stream": ev.stream,
                    "frequency_hz": ev.frequency_hz,
                    "amplitude": ev.amplitude,
                    "phase_rad": ev.phase_rad,
                    "strength": ev.strength,
                    "block_end_ns": ev.block_end_ns,
                }
            )
        c[_C_EVENTS] += len(events)

    def _new_stream(self, name: str, rate: float) -> _Stream | None:
        if name not in self.streams and len(self.streams) >= self.max_streams:
            self._log_error(f"stream {name!r} ignored: already tracking max_streams={self.max_streams} streams")
            return None
        nyquist = rate / 2.0
        bin_hz = rate / self.block_size
        lo = self.min_frequency_hz if self.min_frequency_hz is not None else None
        hi = self.max_frequency_hz
        if hi is not None:
            hi = min(float(hi), nyquist - bin_hz)
        det = ResonanceDetector(
            name,
            rate,
            block_size=self.block_size,
            hop_size=self.hop_size,
            min_frequency_hz=lo,
            max_frequency_hz=hi,
            threshold=self.threshold,
            max_events_per_block=self.max_events_per_block,
        )
        det.set_sensitivity_scale(self.sensitivity_scale)
        st = _Stream(name, rate, det, self.te_window)
        self.streams[name] = st
        self.ctx.counters["c"][_C_STREAMS] = len(self.streams)
        logger.info("drpp: tracking stream {!r} at {} Hz ({} bins of {:.4g} Hz)", name, rate,
                    det.frequencies_hz.size, det.bin_hz)
        return st

    def _on_modulation(self, pkt: PhasePacket) -> None:
        scale = float(pkt.payload["sensitivity_scale"])
        if not (scale > 0.0 and math.isfinite(scale)):
            raise ValueError(f"sensitivity_scale must be positive and finite, got {scale}")
        self.sensitivity_scale = scale
        for st in self.streams.values():
            st.detector.set_sensitivity_scale(scale)

    # --- transfer entropy -------------------------------------------------------------------

    def _transfer_entropy_round(self) -> int:
        ready = [s for s in self.streams.values() if s.count >= self.te_min_samples and s.end_ns is not None]
        pairs = []
        for i, a in enumerate(ready):
            for b in ready[i + 1 :]:
                if a.rate_hz != b.rate_hz or (a.seen == a.te_seen and b.seen == b.te_seen):
                    continue
                pairs.append((a, b))
        pairs = pairs[: self.max_te_pairs]
        if not pairs:
            return 0
        src, tgt, meta = [], [], []
        n = self.te_window
        windows = []
        for a, b in pairs:
            period = 1e9 / a.rate_hz
            end = min(a.end_ns, b.end_ns)
            off_a = int(round((a.end_ns - end) / period))
            off_b = int(round((b.end_ns - end) / period))
            m = min(a.count - off_a, b.count - off_b, self.te_window)
            if m < self.te_min_samples:
                continue
            xa = a.history[a.count - off_a - m : a.count - off_a]
            xb = b.history[b.count - off_b - m : b.count - off_b]
            windows.append((a, b, xa, xb, end, m))
            n = min(n, m)
        if not windows:
            return 0
        # One batched call: every row has the same length (the shortest window's newest samples).
        for a, b, xa, xb, end, _m in windows:
            src += [xa[-n:], xb[-n:]]
            tgt += [xb[-n:], xa[-n:]]
            meta += [(a.name, b.name, end), (b.name, a.name, end)]
        bits = transfer_entropy(np.vstack(src), np.vstack(tgt), n_bins=self.te_bins, binning="quantile")
        for (s, t, end), v in zip(meta, bits.tolist()):
            self._publish({"kind": "transfer_entropy", "source": s, "target": t, "bits": v, "at_ns": int(end)})
        for a, b, *_ in windows:
            a.te_seen, b.te_seen = a.seen, b.seen
        self.ctx.counters["c"][_C_TE] += len(meta)
        return len(meta)

    # --- emission ---------------------------------------------------------------------------

    def _publish(self, payload: dict[str, Any]) -> None:
        self.emit(self.writer, PATTERNS_TOPIC, payload, priority=self.priority)

    def _log_error(self, message: str) -> None:
        self.ctx.counters["errors"] += 1
        self._errors_logged += 1
        if self._errors_logged <= 10 or self._errors_logged % 1000 == 0:
            logger.warning("drpp {}: {}", self.ctx.spec.name, message)

    # --- lifecycle ---------------------------------------------------------------------------

    def parker(self) -> Parker | None:
        return None if self.inbox is None else self.inbox.reader._parker

    def drain(self, now_ns: int) -> int:
        if self.inbox is None:
            return 0
        n = 0
        pkts = self.inbox.receive_batch(self.poll_batch)
        for pkt in pkts:
            try:
                if pkt.topic == SENSOR_TOPIC:
                    self._on_sensor(pkt)
            except Exception as exc:  # noqa: BLE001
                self._log_error(f"{type(exc).__name__}: {exc}")
            n += 1
        return n

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
        self.writer.close()
