"""Properties of the C-LOGIC cores and kernels, checked on generated inputs (hypothesis)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import _kernels as K
from workers._dispatch import JseqDispatcher, RoundRobinDispatcher, simulate_dispatch
from workers._governance import (
    Always,
    And,
    Atom,
    Eventually,
    Not,
    Or,
    TokenBucketLimiter,
    Until,
    format_formula,
    parse_formula,
    robustness,
)
from workers._resonance import ResonanceDetector, goertzel_bank, hann_window, transfer_entropy

MS = 1_000_000

# ----------------------------------------------------------------------------- STL

SIGNALS = ("a", "b")
# Integer samples and half-integer constants: no atom is ever exactly 0, so every robustness
# value is non-zero and its sign must equal the boolean verdict exactly.
atoms = st.builds(
    Atom,
    st.sampled_from(SIGNALS),
    st.sampled_from(["<", ">", "<=", ">="]),
    st.integers(-4, 4).map(lambda k: k + 0.5),
)
intervals = st.tuples(st.integers(0, 4), st.integers(0, 4)).map(lambda p: (min(p) * 10 * MS, max(p) * 10 * MS))


def _extend(children):
    return st.one_of(
        st.builds(Not, children),
        st.builds(And, children, children),
        st.builds(Or, children, children),
        st.builds(lambda iv, f: Always(iv[0], iv[1], f), intervals, children),
        st.builds(lambda iv, f: Eventually(iv[0], iv[1], f), intervals, children),
        st.builds(lambda iv, f, g: Until(iv[0], iv[1], f, g), intervals, children, children),
    )


formulas = st.recursive(atoms, _extend, max_leaves=6)


@st.composite
def traces(draw):
    n = draw(st.integers(1, 25))
    gaps = draw(st.lists(st.integers(1, 15), min_size=n, max_size=n))
    times = np.cumsum(np.array(gaps, dtype=np.int64) * MS)
    values = {s: np.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), dtype=np.float64) for s in SIGNALS}
    return times, values


def _window(times, i, lo, hi):
    return [j for j in range(len(times)) if times[i] + lo <= times[j] <= times[i] + hi]


def _sat(f, times, v, i) -> bool:
    """Boolean semantics, straight from the definitions."""
    if isinstance(f, Atom):
        x = v[f.signal][i]
        return {"<": x < f.value, "<=": x <= f.value, ">": x > f.value, ">=": x >= f.value}[f.op]
    if isinstance(f, Not):
        return not _sat(f.arg, times, v, i)
    if isinstance(f, And):
        return _sat(f.left, times, v, i) and _sat(f.right, times, v, i)
    if isinstance(f, Or):
        return _sat(f.left, times, v, i) or _sat(f.right, times, v, i)
    if isinstance(f, Always):
        return all(_sat(f.arg, times, v, j) for j in _window(times, i, f.lo_ns, f.hi_ns))
    if isinstance(f, Eventually):
        return any(_sat(f.arg, times, v, j) for j in _window(times, i, f.lo_ns, f.hi_ns))
    return any(
        _sat(f.right, times, v, j) and all(_sat(f.left, times, v, k) for k in range(i, j + 1))
        for j in _window(times, i, f.lo_ns, f.hi_ns)
    )


def _rho(f, times, v, i) -> float:
    """Quantitative semantics, straight from the definitions (no sliding-window algorithm)."""
    if isinstance(f, Atom):
        x = v[f.signal][i]
        return f.value - x if f.op in ("<", "<=") else x - f.value
    if isinstance(f, Not):
        return -_rho(f.arg, times, v, i)
    if isinstance(f, And):
        return min(_rho(f.left, times, v, i), _rho(f.right, times, v, i))
    if isinstance(f, Or):
        return max(_rho(f.left, times, v, i), _rho(f.right, times, v, i))
    if isinstance(f, Always):
        return min((_rho(f.arg, times, v, j) for j in _window(times, i, f.lo_ns, f.hi_ns)), default=math.inf)
    if isinstance(f, Eventually):
        return max((_rho(f.arg, times, v, j) for j in _window(times, i, f.lo_ns, f.hi_ns)), default=-math.inf)
    return max(
        (
            min(_rho(f.right, times, v, j), min(_rho(f.left, times, v, k) for k in range(i, j + 1)))
            for j in _window(times, i, f.lo_ns, f.hi_ns)
        ),
        default=-math.inf,
    )


@settings(max_examples=150)
@given(formulas, traces())
def test_stl_robustness_sign_agrees_with_boolean_satisfaction(f, trace):
    times, values = trace
    rho = robustness(f, times, values)
    for i in range(len(times)):
        assert rho[i] != 0.0
        assert (rho[i] > 0.0) == _sat(f, times, values, i), (format_formula(f), i, rho[i])


@settings(max_examples=150)
@given(formulas, traces())
def test_stl_fast_robustness_equals_the_definition(f, trace):
    times, values = trace
    rho = robustness(f, times, values)
    assert rho.tolist() == [_rho(f, times, values, i) for i in range(len(times))]


@settings(max_examples=150)
@given(formulas)
def test_stl_text_form_round_trips(f):
    assert parse_formula(format_formula(f)) == f


# ----------------------------------------------------------------------------- token bucket

requests = st.lists(st.tuples(st.integers(0, 400 * MS), st.integers(1, 4)), min_size=1, max_size=60)


@settings(max_examples=150)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 7.25, 10.0, 100.0, 0.001]),
    burst=st.integers(1, 6),
    reqs=requests,
)
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(rate, burst, reqs):
    tb = TokenBucketLimiter(rate_per_s=rate, burst=burst)
    t = 0
    admitted: list[tuple[int, int]] = []  # (time, tokens)
    for gap, n in reqs:
        t += gap
        if tb.allow("k", n, t):
            admitted.append((t, n))
    exact_rate = Fraction(str(rate))
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            elapsed_s = Fraction(admitted[j][0] - admitted[i][0], 10**9)
            assert total <= burst + exact_rate * elapsed_s


@settings(max_examples=100)
@given(rate=st.integers(1, 50), burst=st.integers(1, 5), gaps=st.lists(st.integers(0, 200 * MS), max_size=40))
def test_token_bucket_admits_whenever_a_whole_token_has_accrued(rate, burst, gaps):
    # The bound above is tight the other way too: a request for 1 token is refused only if the
    # bucket really holds less than one token (checked against an exact reference).
    tb = TokenBucketLimiter(rate_per_s=rate, burst=burst)
    tokens = Fraction(burst)
    t = 0
    for gap in gaps:
        t += gap
        tokens = min(Fraction(burst), tokens + Fraction(rate * gap, 10**9))
        expected = tokens >= 1
        if expected:
            tokens -= 1
        assert tb.allow("k", 1, t) == expected


# ----------------------------------------------------------------------------- kernels


@settings(max_examples=60)
@given(log2n=st.integers(1, 11), rows=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_fft_rfft_and_power_spectrum_match_numpy(log2n, rows, seed):
    n = 2**log2n
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n)) * rng.uniform(0.1, 1e3)
    scale = np.abs(x).sum() + 1.0
    z = x + 1j * rng.normal(size=(rows, n))
    np.testing.assert_allclose(K.fft(z), np.fft.fft(z, axis=1), rtol=0, atol=1e-12 * (np.abs(z).sum() + 1))
    ref = np.fft.rfft(x, axis=1)
    np.testing.assert_allclose(K.rfft(x), ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(K.power_spectrum(x), np.abs(ref) ** 2, rtol=1e-9, atol=1e-12 * scale**2)


@settings(max_examples=60)
@given(n=st.integers(1, 200), m=st.integers(1, 40), rows=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_fir_matches_numpy_convolve(n, m, rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n))
    h = rng.normal(size=m)
    ref = np.stack([np.convolve(r, h)[:n] for r in x])
    np.testing.assert_allclose(K.fir(x, h), ref, rtol=1e-12, atol=1e-12 * m)


@settings(max_examples=60)
@given(p=st.integers(1, 20), q=st.integers(1, 50), b=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_matvec_matches_numpy(p, q, b, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, q))
    x = rng.normal(size=(b, q))
    np.testing.assert_allclose(K.matvec(a, x), x @ a.T, rtol=1e-12, atol=1e-12 * q)


# ----------------------------------------------------------------------------- resonance


@settings(max_examples=50)
@given(
    n=st.integers(2, 300),
    freqs=st.lists(st.floats(-400.0, 400.0, allow_nan=False), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_goertzel_equals_the_direct_dtft_sum(n, freqs, seed):
    x = np.random.default_rng(seed).normal(size=n)
    xw = (x - x.mean()) * hann_window(n)
    t = np.arange(n)
    ref = [np.sum(xw * np.exp(-2j * np.pi * f * t / 1000.0)) for f in freqs]
    np.testing.assert_allclose(goertzel_bank(x, freqs, 1000.0)[0], ref, rtol=1e-8, atol=1e-8 * n)


@settings(max_examples=40)
@given(
    cuts=st.lists(st.integers(1, 900), max_size=12),
    hop=st.sampled_from([32, 64, 100, 128, 200]),
    seed=st.integers(0, 2**32 - 1),
)
def test_detector_events_do_not_depend_on_how_the_stream_is_chunked(cuts, hop, seed):
    rng = np.random.default_rng(seed)
    n = 1500
    x = np.cos(2 * np.pi * 0.0731 * np.arange(n)) + 0.3 * rng.normal(size=n)
    whole = ResonanceDetector("s", 1000.0, block_size=128, hop_size=hop).push(x, now_ns=n * MS)
    det = ResonanceDetector("s", 1000.0, block_size=128, hop_size=hop)
    got = []
    bounds = sorted({c for c in np.cumsum(cuts) if c < n}) + [n]
    start = 0
    for stop in bounds:
        got.extend(det.push(x[start:stop], now_ns=stop * MS))
        start = stop
    assert got == whole


@settings(max_examples=50)
@given(
    n=st.integers(3, 400),
    bins=st.integers(2, 6),
    binning=st.sampled_from(["equal_width", "quantile"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_plug_in_transfer_entropy_is_never_negative(n, bins, binning, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(2, n))
    assert transfer_entropy(x, y, n_bins=bins, binning=binning)[0] >= -1e-12


# ----------------------------------------------------------------------------- dispatch


@settings(max_examples=40)
@given(
    n=st.integers(1, 120),
    workers=st.integers(1, 4),
    deaths=st.lists(st.tuples(st.integers(0, 50 * MS), st.integers(0, 3), st.sampled_from([0.0, 0.5, 1.0, 3.0]))),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_item_completes_once_after_it_arrives_while_a_worker_lives(n, workers, deaths, seed):
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.integers(0, 50 * MS, n))
    sizes = rng.integers(0, 2 * MS, n)
    changes = [(t, w % workers, s) for t, w, s in deaths] + [(60 * MS, w, 1.0) for w in range(workers)]
    for policy in (JseqDispatcher, RoundRobinDispatcher):
        d = policy(workers)
        done = simulate_dispatch(d, arrivals, sizes, [1.0] * workers, changes, seed=seed)
        assert np.all(done >= arrivals)  # everyone is revived at 60 ms, so everything completes
        assert d.statistics().completed == n
        assert d.statistics().outstanding == [0] * workers
