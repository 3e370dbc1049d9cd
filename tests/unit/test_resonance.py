"""DRPP core: Goertzel bank, ResonanceDetector, transfer entropy (known answers)."""

from __future__ import annotations

import math
from collections import Counter

import msgspec
import numpy as np
import pytest

from workers._resonance import (
    PatternEvent,
    ResonanceDetector,
    goertzel_bank,
    hann_window,
    transfer_entropy,
)

FS = 1000.0
N = 1024
BIN = FS / N


def _sine(f_hz: float, n: int, *, amplitude: float = 1.0, phase: float = 0.0, fs: float = FS) -> np.ndarray:
    return amplitude * np.cos(2 * np.pi * f_hz * np.arange(n) / fs + phase)


class TestGoertzelBank:
    def test_integer_bins_equal_the_fft_of_the_windowed_block(self):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(3, 256))
        k = np.array([1, 7, 64, 127])
        got = goertzel_bank(x, k * FS / 256, FS)
        w = hann_window(256)
        ref = np.fft.fft((x - x.mean(axis=1, keepdims=True)) * w, axis=1)[:, k]
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)

    def test_non_integer_frequencies_equal_the_direct_dtft_sum(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=200)
        f = np.array([3.3, 47.77, 251.5])
        got = goertzel_bank(x, f, FS)[0]
        n = np.arange(200)
        xw = (x - x.mean()) * hann_window(200)
        ref = np.array([np.sum(xw * np.exp(-2j * np.pi * fi * n / FS)) for fi in f])
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)

    def test_block_variance_is_written_to_out_var(self):
        x = np.random.default_rng(3).normal(size=(2, 64))
        var = np.empty(2)
        goertzel_bank(x, [10.0], FS, out_var=var)
        np.testing.assert_allclose(var, x.var(axis=1))

    @pytest.mark.parametrize(
        "kwargs, error",
        [
            (dict(blocks=np.zeros((2, 8)), frequencies_hz=[], sample_rate_hz=FS), ValueError),
            (dict(blocks=np.zeros((2, 8)), frequencies_hz=[1.0], sample_rate_hz=0.0), ValueError),
            (dict(blocks=np.zeros((2, 2, 2)), frequencies_hz=[1.0], sample_rate_hz=FS), ValueError),
            (dict(blocks=np.array(["a", "b"]), frequencies_hz=[1.0], sample_rate_hz=FS), TypeError),
            (
                dict(blocks=np.zeros((2, 8)), frequencies_hz=[1.0], sample_rate_hz=FS, out=np.zeros((2, 1))),
                TypeError,
            ),
        ],
    )
    def test_bad_arguments_raise(self, kwargs, error):
        with pytest.raises(error):
            goertzel_bank(**kwargs)


class TestResonanceDetector:
    def test_sine_in_noise_is_found_within_a_tenth_of_a_bin(self):
        rng = np.random.default_rng(7)
        f0 = 123.37  # between bins: 126.33 bins
        x = _sine(f0, N, phase=0.4) + rng.normal(0.0, math.sqrt(0.5), N)  # 0 dB: A^2/2 == sigma^2
        events = ResonanceDetector("s", FS, block_size=N).push(x, now_ns=5_000_000_000)
        assert len(events) == 1
        assert abs(events[0].frequency_hz - f0) < 0.1 * BIN
        assert events[0].amplitude == pytest.approx(1.0, rel=0.1)

    def test_frequency_error_in_noise_has_the_spread_stated_in_the_module_docstring(self):
        # Stated: std 0.032 bins at 0 dB, N = 1024. 40 seeded trials; allow for sampling spread.
        rng = np.random.default_rng(11)
        errors = []
        for _ in range(40):
            f0 = rng.uniform(20.0, 480.0)
            x = _sine(f0, N, phase=rng.uniform(-np.pi, np.pi)) + rng.normal(0.0, math.sqrt(0.5), N)
            events = ResonanceDetector("s", FS, block_size=N).push(x, now_ns=0)
            best = max(events, key=lambda e: e.strength)
            errors.append((best.frequency_hz - f0) / BIN)
        rms = float(np.sqrt(np.mean(np.square(errors))))
        assert rms < 0.05

    def test_noise_free_sine_gives_frequency_amplitude_and_phase_almost_exactly(self):
        f0, amp, phase = 201.23, 2.5, -1.1
        x = _sine(f0, N, amplitude=amp, phase=phase) + 3.0  # a DC offset is removed first
        (ev,) = ResonanceDetector("s", FS, block_size=N).push(x, now_ns=0)
        assert abs(ev.frequency_hz - f0) < 1e-4 * BIN
        assert ev.amplitude == pytest.approx(amp, rel=1e-4)
        phase_at_end = 2 * np.pi * f0 * (N - 1) / FS + phase
        assert abs(math.remainder(ev.phase_rad - phase_at_end, 2 * math.pi)) < 1e-3
        assert -math.pi < ev.phase_rad <= math.pi
        assert ev.strength == pytest.approx(N / 3, rel=0.01)  # Hann processing gain

    def test_white_noise_alone_produces_no_events_at_the_default_threshold(self):
        det = ResonanceDetector("s", FS, block_size=N)
        events = det.push(np.random.default_rng(5).normal(size=100 * N), now_ns=0)
        assert events == []
        assert det.statistics().blocks == 100

    def test_chunk_sizes_do_not_change_the_events(self):
        rng = np.random.default_rng(8)
        x = _sine(77.7, 6 * N) + 0.5 * rng.normal(size=6 * N)
        period_ns = 1e9 / FS
        whole = ResonanceDetector("s", FS, block_size=N, hop_size=N // 2).push(x, now_ns=10**12)
        det = ResonanceDetector("s", FS, block_size=N, hop_size=N // 2)
        pieces = []
        start = 0
        while start < x.size:
            stop = min(x.size, start + int(rng.integers(1, 700)))
            last_ns = 10**12 - round((x.size - stop) * period_ns)
            pieces.extend(det.push(x[start:stop], now_ns=last_ns))
            start = stop
        assert len(whole) == 11
        assert pieces == whole

    def test_overlapping_blocks_are_analysed_once_per_hop(self):
        det = ResonanceDetector("s", FS, block_size=256, hop_size=64)
        det.push(np.zeros(1000), now_ns=0)
        assert det.statistics().blocks == (1000 - 256) // 64 + 1

    def test_block_end_ns_is_the_time_of_the_blocks_last_sample(self):
        det = ResonanceDetector("s", FS, block_size=256)
        x = _sine(100.0, 600)
        events = det.push(x, now_ns=1_000_000_000)  # sample 599 at 1 s, 1 ms apart
        assert [e.block_end_ns for e in events] == [1_000_000_000 - (599 - 255) * 1_000_000] + [
            1_000_000_000 - (599 - 511) * 1_000_000
        ]

    def test_sensitivity_scale_moves_the_threshold_at_run_time(self):
        rng = np.random.default_rng(9)
        noise = rng.normal(size=N)

        def near_line(events):
            return [e for e in events if abs(e.frequency_hz - 150.2) < 0.5 * BIN]

        medium = _sine(150.2, N, amplitude=0.5) + noise  # strength ~ N*A^2 / (6*(A^2/2 + 1)) ~ 38
        weak = _sine(150.2, N, amplitude=0.2) + noise  # ~ 6.6
        det = ResonanceDetector("s", FS, block_size=N, threshold=16.0)
        assert near_line(det.push(medium, now_ns=0))
        assert not near_line(det.push(weak, now_ns=0))
        det.set_sensitivity_scale(8.0)  # EMS: calm, be more sensitive -> threshold 2
        assert det.effective_threshold == pytest.approx(2.0)
        assert near_line(det.push(weak, now_ns=0))
        det.set_sensitivity_scale(0.25)  # EMS: stressed -> threshold 64
        assert not near_line(det.push(medium, now_ns=0))
        with pytest.raises(ValueError):
            det.set_sensitivity_scale(0.0)

    def test_two_sines_are_reported_separately_strongest_first(self):
        x = _sine(60.0, N, amplitude=1.0) + _sine(250.4, N, amplitude=2.0)
        x += np.random.default_rng(3).normal(0.0, 0.1, N)
        events = ResonanceDetector("s", FS, block_size=N).push(x, now_ns=0)
        assert [round(e.frequency_hz) for e in events] == [250, 60]
        assert events[0].amplitude == pytest.approx(2.0, rel=0.02)

    def test_candidate_frequencies_refine_to_the_true_frequency(self):
        det = ResonanceDetector("s", FS, block_size=N, frequencies_hz=[100.0, 200.0, 300.0])
        (ev,) = det.push(_sine(200.3, N), now_ns=0)
        assert abs(ev.frequency_hz - 200.3) < 1e-3 * BIN

    def test_event_is_a_frozen_struct_that_round_trips_through_msgpack(self):
        ev = PatternEvent("s", 1.0, 2.0, 0.5, 30.0, 123)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(ev), type=PatternEvent) == ev
        with pytest.raises(AttributeError):
            ev.amplitude = 3.0  # type: ignore[misc]

    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(sample_rate_hz=0.0),
            dict(block_size=8),
            dict(hop_size=0),
            dict(threshold=-1.0),
            dict(frequencies_hz=[600.0]),
            dict(min_frequency_hz=300.0, max_frequency_hz=200.0),
        ],
    )
    def test_bad_configuration_raises_value_error(self, kwargs):
        args = dict(sample_rate_hz=FS, block_size=N) | kwargs
        with pytest.raises(ValueError):
            ResonanceDetector("s", **args)

    def test_bad_chunks_raise(self):
        det = ResonanceDetector("s", FS, block_size=64)
        with pytest.raises(ValueError):
            det.push(np.zeros((2, 2)), now_ns=0)
        with pytest.raises(ValueError):
            det.push(np.array([np.nan]), now_ns=0)
        with pytest.raises(TypeError):
            det.push(np.zeros(3), now_ns=1.5)  # type: ignore[arg-type]
        assert det.push(np.zeros(0), now_ns=0) == []


def _plugin_te_bits(x: list[int], y: list[int]) -> float:
    """T(X->Y), history 1, by direct counting (the definition, no shortcuts)."""
    triples = Counter(zip(y[1:], y[:-1], x[:-1]))
    pairs_yx = Counter(zip(y[:-1], x[:-1]))
    pairs_yy = Counter(zip(y[1:], y[:-1]))
    singles = Counter(y[:-1])
    n = len(y) - 1
    total = 0.0
    for (y1, y0, x0), c in triples.items():
        p_cond_full = c / pairs_yx[(y0, x0)]
        p_cond_y = pairs_yy[(y1, y0)] / singles[y0]
        total += c / n * math.log2(p_cond_full / p_cond_y)
    return total


class TestTransferEntropy:
    def test_x_driving_y_gives_clearly_more_transfer_from_x_to_y_than_back(self):
        rng = np.random.default_rng(4)
        x = rng.normal(size=5000)
        y = np.zeros_like(x)
        y[1:] = np.tanh(2.0 * x[:-1]) + 0.3 * rng.normal(size=4999)
        forward = transfer_entropy(x, y)[0]
        backward = transfer_entropy(y, x)[0]
        assert forward > 0.5
        assert backward < 0.1
        assert forward > 5 * backward

    def test_copying_a_fair_coin_transfers_one_bit(self):
        rng = np.random.default_rng(6)
        x = rng.integers(0, 2, 20000).astype(np.float64)
        y = np.roll(x, 1)
        assert transfer_entropy(x, y, n_bins=2)[0] == pytest.approx(1.0, abs=0.01)
        assert transfer_entropy(y, x, n_bins=2)[0] == pytest.approx(0.0, abs=0.01)

    def test_equals_a_direct_plug_in_count_on_a_small_series(self):
        rng = np.random.default_rng(10)
        x = rng.integers(0, 3, 60)
        y = (np.roll(x, 1) + rng.integers(0, 2, 60)) % 3
        got = transfer_entropy(x.astype(float), y.astype(float), n_bins=3)[0]
        assert got == pytest.approx(_plugin_te_bits(x.tolist(), y.tolist()), abs=1e-12)

    def test_rows_of_a_batch_are_independent_pairs(self):
        rng = np.random.default_rng(12)
        x = rng.normal(size=(3, 800))
        y = rng.normal(size=(3, 800))
        batch = transfer_entropy(x, y, binning="quantile")
        singles = [transfer_entropy(x[i], y[i], binning="quantile")[0] for i in range(3)]
        np.testing.assert_allclose(batch, singles)

    def test_independent_series_show_only_the_estimator_bias(self):
        rng = np.random.default_rng(13)
        x, y = rng.normal(size=(2, 20000))
        bias = (4 - 1) ** 2 * 4 / (2 * 20000 * math.log(2))  # Miller-Madow, 4 bins
        assert transfer_entropy(x, y, n_bins=4, binning="quantile")[0] < 3 * bias

    @pytest.mark.parametrize(
        "x, y, kwargs",
        [
            (np.zeros(10), np.zeros(11), {}),
            (np.zeros(2), np.zeros(2), {}),
            (np.zeros(10), np.zeros(10), dict(n_bins=1)),
            (np.zeros(10), np.zeros(10), dict(binning="bogus")),
            (np.full(10, np.inf), np.zeros(10), {}),
        ],
    )
    def test_bad_arguments_raise_value_error(self, x, y, kwargs):
        with pytest.raises(ValueError):
            transfer_entropy(x, y, **kwargs)
