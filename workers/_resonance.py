"""DRPP core: periodic components in sample streams, and information flow between streams.

Two published techniques, both small and exact about what they estimate:

1. **Goertzel filter bank** (G. Goertzel, "An algorithmic method for the
   evaluation of finite trigonometric series", Amer. Math. Monthly 65(1), 1958),
   in its generalised form for non-integer frequencies (P. Sysel and P. Rajmic,
   "Goertzel algorithm generalized to non-integer multiples of fundamental
   frequency", EURASIP J. Adv. Signal Process. 2012:56). Each bin is one
   second-order recurrence over the block, so a bank of K bins costs N*K
   multiply-adds per block of N samples: cheaper than an FFT while
   K < ~2*log2(N), and the bins may sit at any frequency, not only k*fs/N.
   The bins are computed in the inner loop so that LLVM vectorises across
   bins (the recurrences are independent): 16x faster than bin-outer loops on
   a 64-bin bank (101 vs 6.3 Msamples/s, measured while writing this module).

2. **Transfer entropy** (T. Schreiber, "Measuring information transfer",
   Phys. Rev. Lett. 85(2):461, 2000) with history length 1, estimated by
   plug-in counting over binned samples (histogram estimator)::

       T(X->Y) = sum p(y[t+1], y[t], x[t]) * log2( p(y[t+1] | y[t], x[t]) / p(y[t+1] | y[t]) )

Detection pipeline of ``ResonanceDetector`` (one block of N samples)::

    samples --> [buffer; every hop samples a block] --> remove block mean --> Hann window
        --> Goertzel bank at the candidate bins --> strength = |X|^2 / (var * sum(w^2))
        --> local maxima with strength > threshold / sensitivity_scale
        --> refine each peak: Goertzel at f-df, f, f+df (df = fs/N), Grandke's Hann
            interpolation, repeated while the peak moves by more than half a bin
        --> Goertzel at the refined frequency: amplitude, phase, strength --> PatternEvent

*Strength* is the periodogram normalised by the block's own noise floor: for
white noise it is exponentially distributed with mean 1, so a threshold ``t``
gives a false-alarm probability of about ``exp(-t)`` per bin (default 16:
about 1e-7). A pure sine saturates it at about N/3 (the Hann window's
processing gain).

*Frequency error.* Grandke's two-point formula (T. Grandke, "Interpolation
algorithms for discrete Fourier transforms of weighted signals", IEEE Trans.
Instrum. Meas. 32(2):350-355, 1983) is exact for one sine under a Hann window
apart from leakage from the negative-frequency image. Measured for N = 1024
without noise: below 3e-4 bins (bin = fs/N) anywhere more than 4 bins from 0
and fs/2, about 1e-6 bins mid-band. In white noise the error is set by the
noise: at 0 dB (``A**2 / (2 sigma**2) = 1``) and N = 1024 its standard
deviation is 0.032 bins (300 seeded trials), 1.8 times the Cramér-Rao bound
``sqrt(12 / (snr * N)) / (2*pi)`` bins (the Hann window's price; the bound
shrinks as N**-1/2 in bins). Log-parabolic interpolation would add a bias of up
to 0.016 bins under the same window, hence Grandke.
"""

from __future__ import annotations

import math
from typing import Sequence

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fabric._jit import jit

__all__ = [
    "PatternEvent",
    "ResonanceDetector",
    "DetectorStatistics",
    "goertzel_bank",
    "hann_window",
    "transfer_entropy",
]

_TWO_PI = 2.0 * math.pi
_MAX_REFINE_STEPS = 4


class PatternEvent(msgspec.Struct, frozen=True, gc=False):
    """A periodic component found in one block of a stream.

    ``phase_rad`` is the phase of the cosine ``amplitude * cos(2*pi*f*t + phase)``
    at the block's last sample, the instant ``block_end_ns``, in (-pi, pi]. It is
    extrapolated from the block's centre, so its error is about
    ``pi * (frequency error in bins)`` rad. ``strength`` is the component's power
    over the block's noise floor (white noise: mean 1).
    """

    stream: str
    frequency_hz: float
    amplitude: float
    phase_rad: float
    strength: float
    block_end_ns: int


class DetectorStatistics(msgspec.Struct, frozen=True, gc=False):
    """Counters of one ``ResonanceDetector``."""

    samples: int
    blocks: int
    events: int


# ----------------------------------------------------------------------------- kernels


@jit(["void(float64[:, :], float64[:], float64[:], float64[:, :], complex128[:, :], float64[:])"])
def _goertzel_kernel(blocks, window, omegas, work, out, out_var):  # pragma: no cover - compiled
    """DTFT of each mean-removed, windowed block at each ``omega`` (rad/sample).

    ``out[b, j] = sum_n (blocks[b, n] - mean_b) * window[n] * exp(-1j * omegas[j] * n)``;
    ``out_var[b]`` is the block's variance. ``work`` is (3, K) scratch.
    """
    n_blocks, n = blocks.shape
    k = omegas.size
    for j in range(k):
        work[0, j] = 2.0 * math.cos(omegas[j])
    for b in range(n_blocks):
        mean = 0.0
        for i in range(n):
            mean += blocks[b, i]
        mean /= n
        var = 0.0
        for i in range(n):
            d = blocks[b, i] - mean
            var += d * d
        out_var[b] = var / n
        for j in range(k):
            work[1, j] = 0.0
            work[2, j] = 0.0
        for i in range(n):
            v = (blocks[b, i] - mean) * window[i]
            # Independent recurrences, one per bin: LLVM vectorises this loop.
            for j in range(k):
                s0 = v + work[0, j] * work[1, j] - work[2, j]
                work[2, j] = work[1, j]
                work[1, j] = s0
        for j in range(k):
            w = omegas[j]
            # y = s[N-1] - exp(-jw) s[N-2] = exp(jw(N-1)) X(w)   (Sysel & Rajmic 2012, eq. 7)
            s1 = work[1, j]
            s2 = work[2, j]
            yr = s1 - math.cos(w) * s2
            yi = math.sin(w) * s2
            c = math.cos(w * (n - 1))
            s = -math.sin(w * (n - 1))
            out[b, j] = complex(yr * c - yi * s, yr * s + yi * c)


@jit(["void(int64[:, :], int64[:, :], int64[:, :, :], int64[:, :, :], int64[:], float64[:])"])
def _transfer_entropy_kernel(xs, ys, counts3, counts2, counts1, out):  # pragma: no cover - compiled
    """Plug-in T(x_r -> y_r) in bits for each row r of pre-binned symbols.

    ``counts3`` is (B, B, B) scratch for (y[t+1], y[t], x[t]); ``counts2`` is
    (2, B, B) for (y[t], x[t]) and (y[t+1], y[t]); ``counts1`` is (B,) for y[t].
    """
    n_rows, n = xs.shape
    nb = counts1.size
    inv_ln2 = 1.0 / math.log(2.0)
    for r in range(n_rows):
        counts3[:, :, :] = 0
        counts2[:, :, :] = 0
        counts1[:] = 0
        for t in range(n - 1):
            y1 = ys[r, t + 1]
            y0 = ys[r, t]
            x0 = xs[r, t]
            counts3[y1, y0, x0] += 1
            counts2[0, y0, x0] += 1
            counts2[1, y1, y0] += 1
            counts1[y0] += 1
        te = 0.0
        for y1 in range(nb):
            for y0 in range(nb):
                for x0 in range(nb):
                    c = counts3[y1, y0, x0]
                    if c > 0:
                        # p(y1|y0,x0)/p(y1|y0) = c * n(y0) / (n(y0,x0) * n(y1,y0))
                        ratio = (c * counts1[y0]) / (counts2[0, y0, x0] * counts2[1, y1, y0])
                        te += c * math.log(ratio)
        out[r] = te * inv_ln2 / (n - 1)


# ----------------------------------------------------------------------------- wrappers


def hann_window(n: int) -> NDArray[np.float64]:
    """Periodic ("DFT-even") Hann window of length ``n`` (F. J. Harris, Proc. IEEE 66(1), 1978)."""
    if n < 2:
        raise ValueError(f"window length must be >= 2, got {n}")
    return 0.5 - 0.5 * np.cos(_TWO_PI * np.arange(n, dtype=np.float64) / n)


def _as_2d_f64(name: str, a: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (one row per block), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def goertzel_bank(
    blocks: ArrayLike,
    frequencies_hz: ArrayLike,
    sample_rate_hz: float,
    *,
    window: ArrayLike | None = None,
    out: NDArray[np.complex128] | None = None,
    out_var: NDArray[np.float64] | None = None,
) -> NDArray[np.complex128]:
    """Evaluate the windowed DTFT of each block at each frequency (generalised Goertzel).

    Parameters
    ----------
    blocks : array_like, shape (n_blocks, n) or (n,)
        Real samples, one block per row. The block mean is removed first.
    frequencies_hz : array_like, shape (k,)
        Bin frequencies; any real values (not restricted to multiples of fs/n).
    sample_rate_hz : float
        Sampling rate of the blocks.
    window : array_like, shape (n,), optional
        Window applied after mean removal; default: periodic Hann.
    out : ndarray of complex128, shape (n_blocks, k), optional
        Destination; allocated when omitted.
    out_var : ndarray of float64, shape (n_blocks,), optional
        Receives each block's variance (the noise floor used for strength).

    Returns
    -------
    ndarray of complex128, shape (n_blocks, k)
        ``sum_n (x[n] - mean) * w[n] * exp(-2j*pi*f*n/fs)``: phase is referenced to
        the block's first sample; a sine of amplitude A gives ``|X| ~ A * sum(w) / 2``.

    Raises
    ------
    ValueError
        On a non-positive sample rate, empty inputs or mismatched shapes.
    TypeError
        On non-numeric inputs or ``out``/``out_var`` of the wrong dtype.
    """
    if not (sample_rate_hz > 0.0 and math.isfinite(sample_rate_hz)):
        raise ValueError(f"sample_rate_hz must be positive and finite, got {sample_rate_hz}")
    x = _as_2d_f64("blocks", blocks)
    n_blocks, n = x.shape
    if n < 2:
        raise ValueError(f"blocks must hold at least 2 samples each, got {n}")
    freqs = np.ascontiguousarray(np.asarray(frequencies_hz, dtype=np.float64).ravel())
    if freqs.size == 0:
        raise ValueError("frequencies_hz must not be empty")
    if not np.all(np.isfinite(freqs)):
        raise ValueError("frequencies_hz must be finite")
    w = hann_window(n) if window is None else np.ascontiguousarray(window, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"window must have shape ({n},), got {w.shape}")
    if out is None:
        out = np.empty((n_blocks, freqs.size), dtype=np.complex128)
    elif out.dtype != np.complex128 or out.shape != (n_blocks, freqs.size):
        raise TypeError(f"out must be complex128 of shape {(n_blocks, freqs.size)}, got {out.dtype} {out.shape}")
    if out_var is None:
        out_var = np.empty(n_blocks, dtype=np.float64)
    elif out_var.dtype != np.float64 or out_var.shape != (n_blocks,):
        raise TypeError(f"out_var must be float64 of shape ({n_blocks},), got {out_var.dtype} {out_var.shape}")
    omegas = freqs * (_TWO_PI / sample_rate_hz)
    work = np.empty((3, freqs.size), dtype=np.float64)
    _goertzel_kernel(x, w, omegas, work, out, out_var)
    return out


def _bin_symbols(a: NDArray[np.float64], n_bins: int, binning: str) -> NDArray[np.int64]:
    """Map each row to symbols 0..n_bins-1: equal-width bins, or equal-count (rank) bins."""
    if binning == "equal_width":
        lo = a.min(axis=1, keepdims=True)
        span = a.max(axis=1, keepdims=True) - lo
        span[span == 0.0] = 1.0  # a constant row: every sample in bin 0
        sym = np.floor((a - lo) / span * n_bins).astype(np.int64)
        np.clip(sym, 0, n_bins - 1, out=sym)
        return np.ascontiguousarray(sym)
    if binning == "quantile":
        ranks = np.argsort(np.argsort(a, axis=1, kind="stable"), axis=1, kind="stable")
        return np.ascontiguousarray((ranks * n_bins) // a.shape[1], dtype=np.int64)
    raise ValueError(f"binning must be 'equal_width' or 'quantile', got {binning!r}")


def transfer_entropy(
    source: ArrayLike,
    target: ArrayLike,
    *,
    n_bins: int = 8,
    binning: str = "equal_width",
    out: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Transfer entropy T(source -> target) in bits, history length 1 (Schreiber 2000).

    Parameters
    ----------
    source, target : array_like, shape (n_pairs, n) or (n,)
        Paired series, one pair per row, sampled at the same instants.
    n_bins : int
        Symbols per series. The plug-in estimator is biased upwards by about
        ``(n_bins - 1)**2 * n_bins / (2 * n * ln 2)`` bits for independent
        series (Miller-Madow), so keep ``n_bins**3`` well below ``n``.
    binning : {"equal_width", "quantile"}
        Equal-width bins over each row's range, or equal-count bins by rank
        (robust to outliers and heavy tails).
    out : ndarray of float64, shape (n_pairs,), optional
        Destination; allocated when omitted.

    Returns
    -------
    ndarray of float64, shape (n_pairs,)
        One value per pair; ``T(X->Y) != T(Y->X)`` in general, which is the point.

    Raises
    ------
    ValueError
        On mismatched shapes, fewer than 3 samples, ``n_bins`` outside 2..64,
        non-finite samples or an unknown binning.
    """
    x = _as_2d_f64("source", source)
    y = _as_2d_f64("target", target)
    if x.shape != y.shape:
        raise ValueError(f"source and target must have the same shape, got {x.shape} and {y.shape}")
    if x.shape[1] < 3:
        raise ValueError(f"need at least 3 samples per series, got {x.shape[1]}")
    if not (2 <= n_bins <= 64):
        raise ValueError(f"n_bins must be in 2..64, got {n_bins}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("source and target must be finite")
    if out is None:
        out = np.empty(x.shape[0], dtype=np.float64)
    elif out.dtype != np.float64 or out.shape != (x.shape[0],):
        raise TypeError(f"out must be float64 of shape ({x.shape[0]},), got {out.dtype} {out.shape}")
    xs = _bin_symbols(x, n_bins, binning)
    ys = _bin_symbols(y, n_bins, binning)
    counts3 = np.empty((n_bins, n_bins, n_bins), dtype=np.int64)
    counts2 = np.empty((2, n_bins, n_bins), dtype=np.int64)
    counts1 = np.empty(n_bins, dtype=np.int64)
    _transfer_entropy_kernel(xs, ys, counts3, counts2, counts1, out)
    return out


def _grandke_offset(m_lo: float, m_mid: float, m_hi: float) -> float:
    """Offset in bins of a Hann-windowed sine from the middle of three bins one bin apart.

    Grandke (1983): with ``alpha`` the larger neighbour's magnitude over the middle
    one, ``delta = (2*alpha - 1) / (alpha + 1)`` towards that neighbour.
    """
    if m_mid <= 0.0:
        return 0.0
    if m_hi >= m_lo:
        alpha = m_hi / m_mid
        return (2.0 * alpha - 1.0) / (alpha + 1.0)
    alpha = m_lo / m_mid
    return -(2.0 * alpha - 1.0) / (alpha + 1.0)


def _wrap_phase(phi: float) -> float:
    """Wrap an angle into (-pi, pi]."""
    wrapped = math.remainder(phi, _TWO_PI)
    return math.pi if wrapped == -math.pi else wrapped


class ResonanceDetector:
    """Find periodic components in a stream of samples, one block at a time.

    Accepts chunks of any size; every ``hop_size`` samples, once ``block_size``
    samples are buffered, the newest block is analysed (blocks overlap when
    ``hop_size < block_size``). See the module docstring for the pipeline and
    its error bounds.

    Parameters
    ----------
    stream : str
        Name copied into every event.
    sample_rate_hz : float
        Sampling rate of the stream.
    block_size : int
        Samples per analysed block (frequency resolution ``fs / block_size``).
    hop_size : int, optional
        Samples between consecutive blocks; default ``block_size`` (no overlap).
    frequencies_hz : array_like, optional
        Candidate bin frequencies. Default: the DFT grid ``k * fs / block_size``
        within ``[min_frequency_hz, max_frequency_hz]``. Spacing candidates more
        than one bin apart loses components that fall between them.
    min_frequency_hz, max_frequency_hz : float, optional
        Range of the default grid; default: one bin above 0 up to one bin below fs/2.
    threshold : float
        Base strength a peak must exceed (white-noise false-alarm rate per bin
        is about ``exp(-threshold)``).
    max_events_per_block : int
        Strongest peaks reported per block; bounds the refinement work.

    Examples
    --------
    >>> det = ResonanceDetector("pump.vibration", 1000.0, block_size=512)
    >>> events = det.push(samples, now_ns=t_last_sample_ns)  # doctest: +SKIP
    """

    def __init__(
        self,
        stream: str,
        sample_rate_hz: float,
        *,
        block_size: int = 1024,
        hop_size: int | None = None,
        frequencies_hz: ArrayLike | None = None,
        min_frequency_hz: float | None = None,
        max_frequency_hz: float | None = None,
        threshold: float = 16.0,
        max_events_per_block: int = 8,
    ) -> None:
        if not isinstance(stream, str):
            raise TypeError(f"stream must be a str, got {type(stream).__name__}")
        if not (sample_rate_hz > 0.0 and math.isfinite(sample_rate_hz)):
            raise ValueError(f"sample_rate_hz must be positive and finite, got {sample_rate_hz}")
        if block_size < 16:
            raise ValueError(f"block_size must be >= 16, got {block_size}")
        hop = block_size if hop_size is None else int(hop_size)
        if hop < 1:
            raise ValueError(f"hop_size must be >= 1, got {hop_size}")
        if max_events_per_block < 1:
            raise ValueError(f"max_events_per_block must be >= 1, got {max_events_per_block}")
        self._stream = stream
        self._fs = float(sample_rate_hz)
        self._n = int(block_size)
        self._hop = hop
        self._bin_hz = self._fs / self._n
        if frequencies_hz is None:
            lo = self._bin_hz if min_frequency_hz is None else float(min_frequency_hz)
            hi = self._fs / 2.0 - self._bin_hz if max_frequency_hz is None else float(max_frequency_hz)
            k = np.arange(math.ceil(lo / self._bin_hz - 1e-9), math.floor(hi / self._bin_hz + 1e-9) + 1)
            freqs = k.astype(np.float64) * self._bin_hz
        else:
            freqs = np.sort(np.asarray(frequencies_hz, dtype=np.float64).ravel())
        if freqs.size == 0:
            raise ValueError("no candidate frequencies (check the frequency range)")
        if not (np.all(np.isfinite(freqs)) and freqs[0] > 0.0 and freqs[-1] < self._fs / 2.0):
            raise ValueError(f"candidate frequencies must lie in (0, {self._fs / 2.0}) Hz (Nyquist)")
        self._freqs = np.ascontiguousarray(freqs)
        self._omegas = self._freqs * (_TWO_PI / self._fs)
        self._window = hann_window(self._n)
        self._window_sum = float(self._window.sum())
        self._window_energy = float(np.dot(self._window, self._window))
        self._max_events = int(max_events_per_block)
        self._threshold = 0.0
        self.threshold = threshold
        self._sensitivity_scale = 1.0
        self._tail = np.empty(0, dtype=np.float64)
        self._seen = 0  # samples pushed so far
        self._next_end = self._n - 1  # global index of the next block's last sample
        self._blocks = 0
        self._events = 0
        # Scratch for the 3-point refinement and the final evaluation (one block each).
        self._ref_out = np.empty((1, 3), dtype=np.complex128)
        self._ref_work = np.empty((3, 3), dtype=np.float64)
        self._one_out = np.empty((1, 1), dtype=np.complex128)
        self._one_work = np.empty((3, 1), dtype=np.float64)
        self._one_var = np.empty(1, dtype=np.float64)

    # -- configuration ---------------------------------------------------------------

    @property
    def stream(self) -> str:
        """Stream name copied into events."""
        return self._stream

    @property
    def frequencies_hz(self) -> NDArray[np.float64]:
        """Candidate bin frequencies (a copy)."""
        return self._freqs.copy()

    @property
    def bin_hz(self) -> float:
        """Frequency resolution ``fs / block_size``."""
        return self._bin_hz

    @property
    def threshold(self) -> float:
        """Base strength threshold (before the sensitivity scale)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not (value > 0.0 and math.isfinite(value)):
            raise ValueError(f"threshold must be positive and finite, got {value}")
        self._threshold = float(value)

    @property
    def sensitivity_scale(self) -> float:
        """Run-time sensitivity: > 1 detects weaker components, < 1 only stronger ones."""
        return self._sensitivity_scale

    def set_sensitivity_scale(self, scale: float) -> None:
        """Set the sensitivity scale (EMS ``Modulation.sensitivity_scale``).

        The effective threshold is ``threshold / scale``.

        Raises
        ------
        ValueError
            If ``scale`` is not positive and finite.
        """
        if not (scale > 0.0 and math.isfinite(scale)):
            raise ValueError(f"sensitivity scale must be positive and finite, got {scale}")
        self._sensitivity_scale = float(scale)

    @property
    def effective_threshold(self) -> float:
        """Strength a peak must exceed now: ``threshold / sensitivity_scale``."""
        return self._threshold / self._sensitivity_scale

    def statistics(self) -> DetectorStatistics:
        """Samples, blocks and events seen so far."""
        return DetectorStatistics(samples=self._seen, blocks=self._blocks, events=self._events)

    def reset(self) -> None:
        """Forget buffered samples (e.g. after a gap in the stream); counters stay."""
        self._tail = np.empty(0, dtype=np.float64)
        self._next_end = self._seen + self._n - 1

    # -- streaming -------------------------------------------------------------------

    def push(self, samples: ArrayLike, now_ns: int) -> list[PatternEvent]:
        """Append samples; analyse every block they complete.

        Parameters
        ----------
        samples : array_like, shape (m,)
            New samples in time order, evenly spaced at ``1 / sample_rate_hz``.
        now_ns : int
            Timestamp of the chunk's last sample; earlier samples are placed
            ``1e9 / sample_rate_hz`` ns apart before it.

        Returns
        -------
        list of PatternEvent
            Events of every block completed by this chunk (possibly none, or
            several blocks), oldest block first, strongest first within a block;
            ``block_end_ns`` tells the blocks apart.

        Raises
        ------
        ValueError
            If samples are not 1-D or not finite.
        TypeError
            If ``now_ns`` is not an ``int``.
        """
        if not isinstance(now_ns, (int, np.integer)) or isinstance(now_ns, bool):
            raise TypeError(f"now_ns must be an int (nanoseconds), got {type(now_ns).__name__}")
        chunk = np.asarray(samples, dtype=np.float64)
        if chunk.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {chunk.shape}")
        m = chunk.size
        if m == 0:
            return []
        if not np.all(np.isfinite(chunk)):
            raise ValueError("samples must be finite")
        data = np.concatenate((self._tail, chunk)) if self._tail.size else chunk
        data_start = self._seen - self._tail.size  # global index of data[0]
        last = self._seen + m - 1  # global index of the chunk's last sample
        events: list[PatternEvent] = []
        if self._next_end <= last:
            ends = np.arange(self._next_end, last + 1, self._hop, dtype=np.int64)
            self._next_end = int(ends[-1]) + self._hop
            starts = ends - (self._n - 1) - data_start
            blocks = np.lib.stride_tricks.sliding_window_view(data, self._n)[starts]
            period_ns = 1e9 / self._fs
            end_ns = [int(now_ns) - round((last - int(e)) * period_ns) for e in ends]
            events = self._analyse(np.ascontiguousarray(blocks), end_ns)
        keep = min(self._n - 1, data.size)
        self._tail = data[data.size - keep :].copy()
        self._seen += m
        return events

    def _analyse(self, blocks: NDArray[np.float64], end_ns: Sequence[int]) -> list[PatternEvent]:
        n_blocks = blocks.shape[0]
        spec = np.empty((n_blocks, self._freqs.size), dtype=np.complex128)
        var = np.empty(n_blocks, dtype=np.float64)
        work = np.empty((3, self._freqs.size), dtype=np.float64)
        _goertzel_kernel(blocks, self._window, self._omegas, work, spec, var)
        self._blocks += n_blocks
        power = spec.real**2 + spec.imag**2
        floor = var * self._window_energy
        with np.errstate(divide="ignore", invalid="ignore"):
            strength = np.where(floor[:, None] > 0.0, power / floor[:, None], 0.0)
        thr = self.effective_threshold
        peak = strength > thr
        if self._freqs.size > 1:  # local maxima along the candidate axis
            peak[:, 1:] &= strength[:, 1:] >= strength[:, :-1]
            peak[:, :-1] &= strength[:, :-1] > strength[:, 1:]
        events: list[PatternEvent] = []
        for b in np.flatnonzero(peak.any(axis=1)):
            cols = np.flatnonzero(peak[b])
            cols = cols[np.argsort(-strength[b, cols], kind="stable")][: self._max_events]
            block = blocks[b : b + 1]
            found = []
            for j in cols:
                ev = self._refine(block, float(self._freqs[j]), float(floor[b]), int(end_ns[b]))
                if ev is not None and ev.strength > thr:
                    found.append(ev)
            found.sort(key=lambda e: -e.strength)
            kept: list[PatternEvent] = []
            for ev in found:  # two candidate peaks may refine onto one component
                if all(abs(ev.frequency_hz - k.frequency_hz) > self._bin_hz for k in kept):
                    kept.append(ev)
            events.extend(kept)
        self._events += len(events)
        return events

    def _refine(self, block: NDArray[np.float64], f_hz: float, floor: float, end_ns: int) -> PatternEvent | None:
        """Grandke refinement around ``f_hz``, then one exact evaluation at the estimate."""
        nyquist = self._fs / 2.0
        centre = f_hz
        df = self._bin_hz
        to_omega = _TWO_PI / self._fs
        for _ in range(_MAX_REFINE_STEPS):
            omegas = np.array([centre - df, centre, centre + df]) * to_omega
            _goertzel_kernel(block, self._window, omegas, self._ref_work, self._ref_out, self._one_var)
            mags = np.abs(self._ref_out[0])
            delta = _grandke_offset(float(mags[0]), float(mags[1]), float(mags[2]))
            if abs(delta) <= 0.5:
                break
            centre += math.copysign(df, delta)  # the peak is nearer a neighbour: move there
        f_hat = min(max(centre + delta * df, 0.0), nyquist)
        omega = f_hat * to_omega
        _goertzel_kernel(block, self._window, np.array([omega]), self._one_work, self._one_out, self._one_var)
        x = complex(self._one_out[0, 0])
        power = x.real * x.real + x.imag * x.imag
        if floor <= 0.0:
            return None
        phase_end = _wrap_phase(math.atan2(x.imag, x.real) + omega * (self._n - 1))
        return PatternEvent(
            stream=self._stream,
            frequency_hz=f_hat,
            amplitude=2.0 * math.sqrt(power) / self._window_sum,
            phase_rad=phase_end,
            strength=power / floor,
            block_end_ns=end_ns,
        )
