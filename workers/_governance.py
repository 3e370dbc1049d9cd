"""EGC core: rate limits, admission control with hysteresis, and runtime STL monitors.

Three small mechanisms, each a published technique; all take time as an
``int`` nanoseconds argument and never read a clock.

1. **Token bucket** per key ``(source, topic)``: a bucket of ``burst`` tokens
   refilled at ``rate`` tokens/s; a request for ``n`` tokens passes if the bucket
   holds them (the metering of RFC 2697, "A Single Rate Three Color Marker",
   with one bucket). Arithmetic is exact integers: a rate given as a decimal
   ``p/q`` tokens/s refills ``p`` credits per ns with one token worth ``q * 1e9``
   credits, so over any interval of length t no key is ever granted more than
   ``burst + rate * t`` tokens (a property test checks it).

2. **Admission control with hysteresis**: a load signal (ring fill ratio,
   queue length over capacity) moves a three-level state ``allow -> throttle ->
   shed``; each level has an "on" threshold and a lower "off" threshold (a
   Schmitt trigger), and relaxing waits ``min_dwell_ns`` after the last change,
   so a load hovering around a threshold does not flap. In ``shed`` the lowest
   priorities are refused.

3. **Signal Temporal Logic monitors** (O. Maler and D. Nickovic, "Monitoring
   temporal properties of continuous signals", FORMATS/FTRTFT 2004) with
   quantitative robustness (G. Fainekos and G. Pappas, "Robustness of temporal
   logic specifications for continuous-time signals", Theor. Comput. Sci.
   410(42), 2009; A. Donzé and O. Maler, "Robust satisfaction of temporal logic
   over real-valued signals", FORMATS 2010). Over a trace of samples
   ``(t_i, values_i)``::

       rho(x < c, i)              = c - x_i          rho(x > c, i) = x_i - c
       rho(not f, i)              = -rho(f, i)
       rho(f and g, i)            = min(rho(f, i), rho(g, i))        (or: max)
       rho(always[a,b] f, i)      = min  { rho(f, j) : t_j in [t_i + a, t_i + b] }   (empty: +inf)
       rho(eventually[a,b] f, i)  = max  { rho(f, j) : t_j in [t_i + a, t_i + b] }   (empty: -inf)
       rho(f until[a,b] g, i)     = max over j with t_j in [t_i + a, t_i + b] of
                                        min(rho(g, j), min{rho(f, k) : i <= k <= j})

   ``rho > 0`` means satisfied and ``rho < 0`` violated; ``|rho|`` is how far the
   signal is from changing the verdict. Always/eventually windows use the
   streaming min/max filter of D. Lemire ("Streaming maximum-minimum filter
   using no more than three comparisons per element", Nordic J. Computing
   13(4), 2006), the same technique as Donzé, Ferrère and Maler, "Efficient
   robust monitoring for STL", CAV 2013: O(n) per window node.

Online evaluation (``StlMonitor``): a formula with future horizon H (the sum
of nested upper bounds) is decided at sample ``i`` once ``now >= t_i + H``. At
``now`` the monitor reports the newest such sample, so
``always[0,1s](p99_latency_us < 2000)`` judges the samples of the last second
(up to one sample period before ``now``): the price of future-time operators.

Text form (for topology files)::

    formula  := or_expr
    or_expr  := and_expr (("or" | "||" | "|") and_expr)*
    and_expr := until    (("and" | "&&" | "&") until)*
    until    := unary [("until" | "U") interval unary]
    unary    := ("not" | "!" | "~") unary
              | ("always" | "G" | "eventually" | "F") interval unary
              | "(" or_expr ")" | signal ("<" | "<=" | ">" | ">=") number
    interval := "[" duration "," duration "]"     duration: number + ns|us|ms|s|min, or a bare 0

e.g. ``always[0,1s](p99_latency_us < 2000)`` or
``(queue_fill < 0.9) until[0,500ms] (drained > 0)``.
"""

from __future__ import annotations

import enum
import math
import re
from fractions import Fraction
from typing import Hashable, Iterable, Literal, Mapping, Union

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fabric._jit import jit
from fabric.errors import CapacityError, ConfigError

__all__ = [
    "Decision",
    "DECISION_ACTIONS",
    "TokenBucketLimiter",
    "RateLimiterStatistics",
    "AdmissionLevel",
    "AdmissionController",
    "Atom",
    "Not",
    "And",
    "Or",
    "Always",
    "Eventually",
    "Until",
    "Formula",
    "StlParseError",
    "StlVerdict",
    "StlMonitor",
    "parse_formula",
    "format_formula",
    "formula_horizon_ns",
    "formula_signals",
    "robustness",
]

DECISION_ACTIONS = frozenset({"allow", "throttle", "shed", "alert"})


class Decision(msgspec.Struct, frozen=True, gc=False):
    """A governance decision published by EGC.

    ``robustness`` is the signed margin behind the decision: STL robustness for
    an alert, the distance of the load to the threshold it crossed for
    admission changes (negative: the limit was exceeded).
    """

    action: Literal["allow", "throttle", "shed", "alert"]
    target: str
    reason: str
    robustness: float
    at_ns: int

    def __post_init__(self) -> None:
        if self.action not in DECISION_ACTIONS:
            raise ValueError(f"action must be one of {sorted(DECISION_ACTIONS)}, got {self.action!r}")


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _exact(name: str, value: float | int) -> Fraction:
    """The decimal a user wrote (``0.1`` means 1/10, not the nearest binary float)."""
    try:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return Fraction(int(value))
        return Fraction(str(float(value)))
    except (ValueError, OverflowError, TypeError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None


# ----------------------------------------------------------------------------- token bucket


class RateLimiterStatistics(msgspec.Struct, frozen=True, gc=False):
    """Totals over all keys of a ``TokenBucketLimiter``."""

    keys: int
    allowed: int
    denied: int


class _Bucket:
    __slots__ = ("credits", "last_ns", "rate_p", "unit", "burst_credits", "allowed", "denied")

    def __init__(self, rate_p: int, unit: int, burst_credits: int, now_ns: int) -> None:
        self.rate_p = rate_p  # credits per ns
        self.unit = unit  # credits per token
        self.burst_credits = burst_credits
        self.credits = burst_credits  # a new key starts with a full bucket
        self.last_ns = now_ns
        self.allowed = 0
        self.denied = 0


class TokenBucketLimiter:
    """Token-bucket rate limits keyed by ``(source, topic)``.

    Parameters
    ----------
    rate_per_s : float
        Default refill rate in tokens per second (> 0), taken as the decimal written.
    burst : int
        Default bucket size in tokens (>= 1); a new key starts full.
    max_keys : int
        Bound on distinct keys (each costs ~200 bytes).

    Notes
    -----
    A key's clock never runs backwards: a ``now_ns`` older than the key's last
    update refills nothing.
    """

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 65536) -> None:
        self._default = self._limit(rate_per_s, burst)
        self._limits: dict[Hashable, tuple[int, int, int]] = {}
        self._buckets: dict[Hashable, _Bucket] = {}
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._max_keys = int(max_keys)

    @staticmethod
    def _limit(rate_per_s: float, burst: int) -> tuple[int, int, int]:
        rate = _exact("rate_per_s", rate_per_s)
        if rate <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        b = _check_int("burst", burst)
        if b < 1:
            raise ValueError(f"burst must be >= 1, got {b}")
        unit = rate.denominator * 1_000_000_000  # credits per token
        return rate.numerator, unit, b * unit

    def set_limit(self, key: Hashable, rate_per_s: float, burst: int) -> None:
        """Give ``key`` its own rate and burst (its bucket is refilled to the new burst)."""
        limit = self._limit(rate_per_s, burst)
        self._limits[key] = limit
        bucket = self._buckets.pop(key, None)
        if bucket is not None:  # keep its counters, restart it full under the new limit
            fresh = _Bucket(*limit, bucket.last_ns)
            fresh.allowed, fresh.denied = bucket.allowed, bucket.denied
            self._buckets[key] = fresh

    def _bucket(self, key: Hashable, now_ns: int) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                raise CapacityError(f"rate limiter holds {self._max_keys} keys already")
            bucket = _Bucket(*self._limits.get(key, self._default), now_ns)
            self._buckets[key] = bucket
        return bucket

    def allow(self, key: Hashable, n: int, now_ns: int) -> bool:
        """Take ``n`` tokens from ``key``'s bucket if it holds them.

        Parameters
        ----------
        key : hashable
            Usually ``(source, topic)``.
        n : int
            Tokens wanted (>= 1): messages, or bytes if the limit is in bytes.
        now_ns : int
            Current time.

        Returns
        -------
        bool
            True if admitted (tokens taken); False if not (nothing taken). A
            request larger than the burst is never admitted.
        """
        tokens = _check_int("n", n)
        now = _check_int("now_ns", now_ns)
        if tokens < 1:
            raise ValueError(f"n must be >= 1, got {tokens}")
        b = self._bucket(key, now)
        if now > b.last_ns:
            b.credits = min(b.burst_credits, b.credits + (now - b.last_ns) * b.rate_p)
            b.last_ns = now
        need = tokens * b.unit
        if b.credits >= need:
            b.credits -= need
            b.allowed += tokens
            return True
        b.denied += tokens
        return False

    def allow_many(self, keys: Iterable[Hashable], ns: Iterable[int], now_ns: Iterable[int]) -> NDArray[np.bool_]:
        """``allow`` for each (key, n, now_ns) in order; returns one bool per request."""
        return np.array([self.allow(k, n, t) for k, n, t in zip(keys, ns, now_ns, strict=True)], dtype=np.bool_)

    def tokens(self, key: Hashable, now_ns: int) -> float:
        """Tokens ``key`` would hold at ``now_ns`` (a full bucket for an unseen key)."""
        now = _check_int("now_ns", now_ns)
        b = self._buckets.get(key)
        if b is None:
            rate_p, unit, burst_credits = self._limits.get(key, self._default)
            return burst_credits / unit
        credits = b.credits
        if now > b.last_ns:
            credits = min(b.burst_credits, credits + (now - b.last_ns) * b.rate_p)
        return credits / b.unit

    def counters(self, key: Hashable) -> tuple[int, int]:
        """Tokens (allowed, denied) so far for ``key``."""
        b = self._buckets.get(key)
        return (0, 0) if b is None else (b.allowed, b.denied)

    def statistics(self) -> RateLimiterStatistics:
        """Totals over all keys."""
        return RateLimiterStatistics(
            keys=len(self._buckets),
            allowed=sum(b.allowed for b in self._buckets.values()),
            denied=sum(b.denied for b in self._buckets.values()),
        )


# ----------------------------------------------------------------------------- admission


class AdmissionLevel(enum.IntEnum):
    """Admission state, in increasing severity."""

    ALLOW = 0
    THROTTLE = 1
    SHED = 2


_LEVEL_ACTION = {AdmissionLevel.ALLOW: "allow", AdmissionLevel.THROTTLE: "throttle", AdmissionLevel.SHED: "shed"}


class AdmissionController:
    """Three-level admission control driven by a load signal, with hysteresis.

    Transitions, with ``L`` the load passed to ``update``::

        ALLOW    --L >= throttle_on-->  THROTTLE  --L >= shed_on-->  SHED
        ALLOW    <--L < throttle_off--  THROTTLE  <--L < shed_off--  SHED
        (ALLOW jumps straight to SHED if L >= shed_on; SHED straight to ALLOW if L < throttle_off)

    Escalation is immediate; relaxing waits until ``min_dwell_ns`` after the
    last change.

    Parameters
    ----------
    throttle_on, throttle_off, shed_on, shed_off : float
        Thresholds with ``throttle_off < throttle_on``, ``shed_off < shed_on``,
        ``throttle_on <= shed_on`` and ``throttle_off <= shed_off``.
    shed_below_priority : int
        In SHED, items with a priority below this are refused (larger = more important).
    throttle_rate_scale : float
        ``rate_scale`` in THROTTLE and SHED: what producers' rate limits should be scaled by.
    min_dwell_ns : int
        Minimum time in a level before relaxing to a lower one.
    target : str
        Copied into the ``Decision`` of each transition.
    """

    def __init__(
        self,
        *,
        throttle_on: float = 0.75,
        throttle_off: float = 0.60,
        shed_on: float = 0.90,
        shed_off: float = 0.80,
        shed_below_priority: int = 1,
        throttle_rate_scale: float = 0.5,
        min_dwell_ns: int = 0,
        target: str = "fabric",
    ) -> None:
        values = (throttle_on, throttle_off, shed_on, shed_off)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("admission thresholds must be finite")
        if not (throttle_off < throttle_on and shed_off < shed_on):
            raise ValueError("each 'off' threshold must be below its 'on' threshold (hysteresis)")
        if not (throttle_on <= shed_on and throttle_off <= shed_off):
            raise ValueError("throttle thresholds must not exceed the shed thresholds")
        if not (0.0 < throttle_rate_scale <= 1.0):
            raise ValueError(f"throttle_rate_scale must be in (0, 1], got {throttle_rate_scale}")
        self._throttle_on = float(throttle_on)
        self._throttle_off = float(throttle_off)
        self._shed_on = float(shed_on)
        self._shed_off = float(shed_off)
        self._shed_below = _check_int("shed_below_priority", shed_below_priority)
        self._throttle_rate_scale = float(throttle_rate_scale)
        self._min_dwell_ns = _check_int("min_dwell_ns", min_dwell_ns)
        if self._min_dwell_ns < 0:
            raise ValueError(f"min_dwell_ns must be >= 0, got {min_dwell_ns}")
        self._target = target
        self._level = AdmissionLevel.ALLOW
        self._changed_ns: int | None = None
        self._load = 0.0
        self._transitions = 0

    @property
    def level(self) -> AdmissionLevel:
        """Current level."""
        return self._level

    @property
    def load(self) -> float:
        """Last load passed to ``update``."""
        return self._load

    @property
    def transitions(self) -> int:
        """Number of level changes so far."""
        return self._transitions

    @property
    def rate_scale(self) -> float:
        """Factor for producers' rate limits: 1.0 in ALLOW, ``throttle_rate_scale`` otherwise."""
        return 1.0 if self._level == AdmissionLevel.ALLOW else self._throttle_rate_scale

    def admit(self, priority: int) -> bool:
        """Whether an item of ``priority`` may enter now (refused only in SHED, below the floor)."""
        return self._level != AdmissionLevel.SHED or priority >= self._shed_below

    def update(self, load: float, now_ns: int) -> Decision | None:
        """Feed the load signal; return a ``Decision`` if the level changed, else None.

        Raises
        ------
        ValueError
            If ``load`` is NaN.
        """
        now = _check_int("now_ns", now_ns)
        if math.isnan(load):
            raise ValueError("load must not be NaN")
        self._load = float(load)
        old = self._level
        new = old
        threshold = 0.0
        if load >= self._shed_on:
            new, threshold = AdmissionLevel.SHED, self._shed_on
        elif load >= self._throttle_on and old == AdmissionLevel.ALLOW:
            new, threshold = AdmissionLevel.THROTTLE, self._throttle_on
        elif old == AdmissionLevel.SHED and load < self._shed_off:
            if load < self._throttle_off:
                new, threshold = AdmissionLevel.ALLOW, self._throttle_off
            else:
                new, threshold = AdmissionLevel.THROTTLE, self._shed_off
        elif old == AdmissionLevel.THROTTLE and load < self._throttle_off:
            new, threshold = AdmissionLevel.ALLOW, self._throttle_off
        if new == old:
            return None
        if new < old and self._changed_ns is not None and now - self._changed_ns < self._min_dwell_ns:
            return None  # relaxing too soon after the last change
        self._level = new
        self._changed_ns = now
        self._transitions += 1
        direction = ">=" if new > old else "<"
        return Decision(
            action=_LEVEL_ACTION[new],
            target=self._target,
            reason=f"load {load:.4g} {direction} {threshold:.4g}: {old.name.lower()} -> {new.name.lower()}",
            robustness=threshold - float(load),
            at_ns=now,
        )


# ----------------------------------------------------------------------------- STL formulas


class Atom(msgspec.Struct, frozen=True):
    """``signal op value``; robustness ``value - x`` for ``<``/``<=``, ``x - value`` for ``>``/``>=``."""

    signal: str
    op: Literal["<", "<=", ">", ">="]
    value: float


class Not(msgspec.Struct, frozen=True):
    """Negation: robustness ``-rho(arg)``."""

    arg: "Formula"


class And(msgspec.Struct, frozen=True):
    """Conjunction: robustness ``min``."""

    left: "Formula"
    right: "Formula"


class Or(msgspec.Struct, frozen=True):
    """Disjunction: robustness ``max``."""

    left: "Formula"
    right: "Formula"


class Always(msgspec.Struct, frozen=True):
    """``always[lo,hi] arg``: robustness ``min`` over samples in ``[t + lo, t + hi]``."""

    lo_ns: int
    hi_ns: int
    arg: "Formula"


class Eventually(msgspec.Struct, frozen=True):
    """``eventually[lo,hi] arg``: robustness ``max`` over samples in ``[t + lo, t + hi]``."""

    lo_ns: int
    hi_ns: int
    arg: "Formula"


class Until(msgspec.Struct, frozen=True):
    """``left until[lo,hi] right``: ``right`` holds at some t' in the window and ``left`` on ``[t, t']``."""

    lo_ns: int
    hi_ns: int
    left: "Formula"
    right: "Formula"


Formula = Union[Atom, Not, And, Or, Always, Eventually, Until]

_ATOM_OPS = ("<", "<=", ">", ">=")


def _check_formula(f: object) -> None:
    """Validate a hand-built formula (the parser only builds valid ones)."""
    if isinstance(f, Atom):
        if f.op not in _ATOM_OPS:
            raise ValueError(f"atom operator must be one of {_ATOM_OPS}, got {f.op!r}")
        if not math.isfinite(f.value):
            raise ValueError(f"atom constant must be finite, got {f.value}")
    elif isinstance(f, Not):
        _check_formula(f.arg)
    elif isinstance(f, (And, Or)):
        _check_formula(f.left)
        _check_formula(f.right)
    elif isinstance(f, (Always, Eventually, Until)):
        if not (0 <= f.lo_ns <= f.hi_ns):
            raise ValueError(f"interval must satisfy 0 <= lo <= hi, got [{f.lo_ns}, {f.hi_ns}] ns")
        if isinstance(f, Until):
            _check_formula(f.left)
            _check_formula(f.right)
        else:
            _check_formula(f.arg)
    else:
        raise TypeError(f"not an STL formula node: {type(f).__name__}")


def formula_horizon_ns(f: Formula) -> int:
    """How far into the future (ns) the formula looks: when its verdict at t is final."""
    if isinstance(f, Atom):
        return 0
    if isinstance(f, Not):
        return formula_horizon_ns(f.arg)
    if isinstance(f, (And, Or)):
        return max(formula_horizon_ns(f.left), formula_horizon_ns(f.right))
    if isinstance(f, (Always, Eventually)):
        return f.hi_ns + formula_horizon_ns(f.arg)
    if isinstance(f, Until):
        return f.hi_ns + max(formula_horizon_ns(f.left), formula_horizon_ns(f.right))
    raise TypeError(f"not an STL formula node: {type(f).__name__}")


def formula_signals(f: Formula) -> tuple[str, ...]:
    """Signal names the formula reads, sorted."""
    names: set[str] = set()
    stack: list[object] = [f]
    while stack:
        node = stack.pop()
        if isinstance(node, Atom):
            names.add(node.signal)
        elif isinstance(node, (Not, Always, Eventually)):
            stack.append(node.arg)
        elif isinstance(node, (And, Or, Until)):
            stack.extend((node.left, node.right))
    return tuple(sorted(names))


_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000}


def _format_duration(ns: int) -> str:
    if ns == 0:
        return "0"
    for unit in ("min", "s", "ms", "us"):
        if ns % _UNITS_NS[unit] == 0:
            return f"{ns // _UNITS_NS[unit]}{unit}"
    return f"{ns}ns"


def format_formula(f: Formula) -> str:
    """The text form of a formula; ``parse_formula(format_formula(f)) == f``."""
    if isinstance(f, Atom):
        return f"{f.signal} {f.op} {float(f.value)!r}"
    if isinstance(f, Not):
        return f"not ({format_formula(f.arg)})"
    if isinstance(f, And):
        return f"({format_formula(f.left)}) and ({format_formula(f.right)})"
    if isinstance(f, Or):
        return f"({format_formula(f.left)}) or ({format_formula(f.right)})"
    if isinstance(f, (Always, Eventually)):
        op = "always" if isinstance(f, Always) else "eventually"
        return f"{op}[{_format_duration(f.lo_ns)},{_format_duration(f.hi_ns)}]({format_formula(f.arg)})"
    if isinstance(f, Until):
        interval = f"[{_format_duration(f.lo_ns)},{_format_duration(f.hi_ns)}]"
        return f"({format_formula(f.left)}) until{interval} ({format_formula(f.right)})"
    raise TypeError(f"not an STL formula node: {type(f).__name__}")


# ----------------------------------------------------------------------------- parser


class StlParseError(ConfigError):
    """An STL formula's text is malformed; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message, position)
        self.position = position

    def __str__(self) -> str:
        return str(self.args[0])


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_µ][A-Za-z0-9_.]*)
  | (?P<op><=|>=|&&|\|\||[<>()\[\],!~&|])
    """,
    re.VERBOSE,
)

_KEYWORDS = {
    "always": "always",
    "G": "always",
    "eventually": "eventually",
    "F": "eventually",
    "until": "until",
    "U": "until",
    "not": "not",
    "and": "and",
    "or": "or",
}
_SYMBOLS = {"!": "not", "~": "not", "&&": "and", "&": "and", "||": "or", "|": "or"}


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, position)
        pos = 0
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                self.fail(f"unexpected character {text[pos]!r}", pos)
            kind = m.lastgroup or ""
            if kind != "ws":
                value = m.group()
                if kind == "ident" and value in _KEYWORDS:
                    kind, value = "kw", _KEYWORDS[value]
                elif kind == "op" and value in _SYMBOLS:
                    kind, value = "kw", _SYMBOLS[value]
                self.tokens.append((kind, value, pos))
            pos = m.end()
        self.tokens.append(("end", "", len(text)))
        self.i = 0

    def fail(self, message: str, position: int) -> None:
        raise StlParseError(f"{message} at position {position} in {self.text!r}", position)

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, value: str, what: str) -> tuple[str, str, int]:
        tok = self.peek()
        if tok[0] != kind or tok[1] != value:
            found = "end of input" if tok[0] == "end" else repr(tok[1])
            self.fail(f"expected {what}, found {found}", tok[2])
        return self.take()

    def parse(self) -> Formula:
        f = self.or_expr()
        tok = self.peek()
        if tok[0] != "end":
            self.fail(f"unexpected {tok[1]!r} after a complete formula", tok[2])
        return f

    def or_expr(self) -> Formula:
        f = self.and_expr()
        while self.peek()[:2] == ("kw", "or"):
            self.take()
            f = Or(f, self.and_expr())
        return f

    def and_expr(self) -> Formula:
        f = self.until_expr()
        while self.peek()[:2] == ("kw", "and"):
            self.take()
            f = And(f, self.until_expr())
        return f

    def until_expr(self) -> Formula:
        f = self.unary()
        if self.peek()[:2] == ("kw", "until"):
            self.take()
            lo, hi = self.interval()
            f = Until(lo, hi, f, self.unary())
        return f

    def unary(self) -> Formula:
        kind, value, pos = self.peek()
        if kind == "kw" and value == "not":
            self.take()
            return Not(self.unary())
        if kind == "kw" and value in ("always", "eventually"):
            self.take()
            lo, hi = self.interval()
            arg = self.unary()
            return Always(lo, hi, arg) if value == "always" else Eventually(lo, hi, arg)
        if kind == "op" and value == "(":
            self.take()
            f = self.or_expr()
            self.expect("op", ")", "')'")
            return f
        if kind == "ident":
            return self.atom()
        found = "end of input" if kind == "end" else repr(value)
        self.fail(f"expected a signal comparison, '(', 'not', 'always' or 'eventually', found {found}", pos)
        raise AssertionError("unreachable")  # pragma: no cover

    def atom(self) -> Atom:
        _, name, _ = self.take()
        kind, op, pos = self.peek()
        if kind != "op" or op not in _ATOM_OPS:
            found = "end of input" if kind == "end" else repr(op)
            self.fail(f"expected '<', '<=', '>' or '>=' after signal {name!r}, found {found}", pos)
        self.take()
        kind, num, pos = self.peek()
        if kind != "num":
            found = "end of input" if kind == "end" else repr(num)
            self.fail(f"expected a number after {name!r} {op}, found {found}", pos)
        self.take()
        value = float(num)
        if not math.isfinite(value):
            self.fail(f"constant {num!r} is not finite", pos)
        nxt = self.peek()
        if nxt[0] == "ident" and nxt[2] == pos + len(num):
            self.fail(f"a comparison constant takes no unit, found {nxt[1]!r}", nxt[2])
        return Atom(name, op, value)  # type: ignore[arg-type]

    def duration(self) -> int:
        kind, num, pos = self.peek()
        if kind != "num":
            found = "end of input" if kind == "end" else repr(num)
            self.fail(f"expected a duration such as 500ms, found {found}", pos)
        self.take()
        unit_tok = self.peek()
        if unit_tok[0] == "ident" and unit_tok[2] == pos + len(num):
            self.take()
            if unit_tok[1] not in _UNITS_NS:
                self.fail(f"unknown time unit {unit_tok[1]!r} (use ns, us, ms, s or min)", unit_tok[2])
            scale = _UNITS_NS[unit_tok[1]]
        else:
            if Fraction(num) != 0:
                self.fail(f"duration {num!r} needs a unit (ns, us, ms, s or min)", pos + len(num))
            scale = 1
        ns = Fraction(num) * scale
        if ns < 0:
            self.fail(f"duration {num!r} is negative", pos)
        if ns.denominator != 1:
            self.fail(f"duration {num}{unit_tok[1]} is not a whole number of nanoseconds", pos)
        return int(ns)

    def interval(self) -> tuple[int, int]:
        _, _, start = self.expect("op", "[", "'[' opening a time interval")
        lo = self.duration()
        self.expect("op", ",", "',' between the interval bounds")
        hi = self.duration()
        self.expect("op", "]", "']' closing the time interval")
        if lo > hi:
            self.fail(f"interval lower bound {lo} ns exceeds upper bound {hi} ns", start)
        return lo, hi


def parse_formula(text: str) -> Formula:
    """Parse the text form of an STL formula (grammar in the module docstring).

    Raises
    ------
    StlParseError
        A ``ConfigError`` (so also a ``ValueError``) naming the 0-based position
        of the problem in its message and its ``position`` attribute.
    """
    if not isinstance(text, str):
        raise TypeError(f"formula text must be a str, got {type(text).__name__}")
    return _Parser(text).parse()


# ----------------------------------------------------------------------------- robustness kernels


@jit(["void(int64[:], float64[:], int64, int64, boolean, int64[:], float64[:])"])
def _window_extreme_kernel(times, rho, lo_ns, hi_ns, is_max, dq, out):  # pragma: no cover - compiled
    """out[i] = min (or max) of rho[j] over t_j in [t_i + lo, t_i + hi]; +inf (-inf) if empty.

    Lemire's monotone wedge: ``dq`` (scratch, len(rho)) holds indices whose values
    are increasing (decreasing for max) from head to tail; each index enters and
    leaves once, so the whole pass is O(n).
    """
    n = times.size
    head = 0
    tail = 0  # dq[head:tail] is the wedge
    r = 0  # next index to enter the window
    empty = -np.inf if is_max else np.inf
    for i in range(n):
        hi_t = times[i] + hi_ns
        lo_t = times[i] + lo_ns
        while r < n and times[r] <= hi_t:
            v = rho[r]
            if is_max:
                while tail > head and rho[dq[tail - 1]] <= v:
                    tail -= 1
            else:
                while tail > head and rho[dq[tail - 1]] >= v:
                    tail -= 1
            dq[tail] = r
            tail += 1
            r += 1
        while tail > head and times[dq[head]] < lo_t:
            head += 1
        out[i] = rho[dq[head]] if tail > head else empty


@jit(["void(int64[:], float64[:], float64[:], int64, int64, float64[:])"])
def _until_kernel(times, phi, psi, lo_ns, hi_ns, out):  # pragma: no cover - compiled
    """out[i] = max over t_j in [t_i+lo, t_i+hi] of min(psi[j], min(phi[i..j])); -inf if empty."""
    n = times.size
    for i in range(n):
        lo_t = times[i] + lo_ns
        hi_t = times[i] + hi_ns
        best = -np.inf
        run = np.inf
        j = i
        while j < n and times[j] <= hi_t:
            if phi[j] < run:
                run = phi[j]
            if times[j] >= lo_t:
                v = psi[j] if psi[j] < run else run
                if v > best:
                    best = v
            j += 1
        out[i] = best


def _robustness_arrays(
    f: Formula, times: NDArray[np.int64], columns: Mapping[str, NDArray[np.float64]], dq: NDArray[np.int64]
) -> NDArray[np.float64]:
    if isinstance(f, Atom):
        x = columns[f.signal]
        return (f.value - x) if f.op in ("<", "<=") else (x - f.value)
    if isinstance(f, Not):
        return -_robustness_arrays(f.arg, times, columns, dq)
    if isinstance(f, And):
        return np.minimum(_robustness_arrays(f.left, times, columns, dq), _robustness_arrays(f.right, times, columns, dq))
    if isinstance(f, Or):
        return np.maximum(_robustness_arrays(f.left, times, columns, dq), _robustness_arrays(f.right, times, columns, dq))
    if isinstance(f, (Always, Eventually)):
        inner = np.ascontiguousarray(_robustness_arrays(f.arg, times, columns, dq), dtype=np.float64)
        out = np.empty_like(inner)
        _window_extreme_kernel(times, inner, f.lo_ns, f.hi_ns, isinstance(f, Eventually), dq, out)
        return out
    if isinstance(f, Until):
        phi = np.ascontiguousarray(_robustness_arrays(f.left, times, columns, dq), dtype=np.float64)
        psi = np.ascontiguousarray(_robustness_arrays(f.right, times, columns, dq), dtype=np.float64)
        out = np.empty_like(phi)
        _until_kernel(times, phi, psi, f.lo_ns, f.hi_ns, out)
        return out
    raise TypeError(f"not an STL formula node: {type(f).__name__}")


def robustness(
    formula: Formula | str, times_ns: ArrayLike, signals: Mapping[str, ArrayLike]
) -> NDArray[np.float64]:
    """Robustness of ``formula`` at every sample of a trace (offline, batch).

    Parameters
    ----------
    formula : Formula or str
        A formula, or its text form.
    times_ns : array_like of int, shape (n,)
        Sample times, strictly increasing (a trace is a function of time).
    signals : mapping of str to array_like, each shape (n,)
        Every signal the formula reads, sampled at ``times_ns``.

    Returns
    -------
    ndarray of float64, shape (n,)
        ``rho(formula, i)``. Entries with ``t_i + horizon > t_last`` are computed
        over the samples that exist (windows cut at the end of the trace).

    Raises
    ------
    ValueError
        On times not strictly increasing, a missing signal, wrong lengths or non-finite values.
    """
    f = parse_formula(formula) if isinstance(formula, str) else formula
    _check_formula(f)
    times = np.ascontiguousarray(np.asarray(times_ns, dtype=np.int64).ravel())
    if times.size and np.any(np.diff(times) <= 0):
        raise ValueError("times_ns must be strictly increasing")
    columns: dict[str, NDArray[np.float64]] = {}
    for name in formula_signals(f):
        if name not in signals:
            raise ValueError(f"signal {name!r} used by the formula is missing")
        col = np.ascontiguousarray(np.asarray(signals[name], dtype=np.float64).ravel())
        if col.shape != times.shape:
            raise ValueError(f"signal {name!r} has {col.size} samples, times_ns has {times.size}")
        if not np.all(np.isfinite(col)):
            raise ValueError(f"signal {name!r} has non-finite samples")
        columns[name] = col
    dq = np.empty(times.size, dtype=np.int64)
    return np.asarray(_robustness_arrays(f, times, columns, dq), dtype=np.float64)


# ----------------------------------------------------------------------------- online monitor


class StlVerdict(msgspec.Struct, frozen=True, gc=False):
    """Robustness of a monitored formula at the sample taken at ``sample_ns``."""

    sample_ns: int
    robustness: float


class StlMonitor:
    """Online robustness of one bounded STL formula over a stream of samples.

    Samples are pushed in time order; a sample may omit signals, which then hold
    their previous value (the first sample must carry every signal), and a
    sample at the same instant as the previous one updates it. Only the
    samples a future verdict can still need are kept: those at or after the
    last decided sample.

    Parameters
    ----------
    formula : Formula or str
        The specification, e.g. ``"always[0,1s](p99_latency_us < 2000)"``.
    name : str, optional
        Used in decisions' reasons; default: the formula's text.
    initial_capacity : int
        Samples buffered before the first reallocation.
    """

    def __init__(self, formula: Formula | str, *, name: str | None = None, initial_capacity: int = 256) -> None:
        f = parse_formula(formula) if isinstance(formula, str) else formula
        _check_formula(f)
        self._formula = f
        self._text = format_formula(f) if not isinstance(formula, str) else formula
        self._name = name if name is not None else self._text
        self._signals = formula_signals(f)
        self._index = {s: k for k, s in enumerate(self._signals)}
        self._horizon = formula_horizon_ns(f)
        cap = max(int(initial_capacity), 8)
        self._times = np.empty(cap, dtype=np.int64)
        self._values = np.empty((len(self._signals), cap), dtype=np.float64)
        self._lo = 0  # live samples are [lo, hi)
        self._hi = 0
        self._last = np.full(len(self._signals), np.nan)
        self._evaluations = 0

    @property
    def formula(self) -> Formula:
        """The monitored formula."""
        return self._formula

    @property
    def signals(self) -> tuple[str, ...]:
        """Signals the formula reads."""
        return self._signals

    @property
    def horizon_ns(self) -> int:
        """Delay between a sample and the earliest final verdict about it."""
        return self._horizon

    @property
    def buffered(self) -> int:
        """Samples held."""
        return self._hi - self._lo

    @property
    def evaluations(self) -> int:
        """Verdicts computed so far."""
        return self._evaluations

    def push(self, t_ns: int, values: Mapping[str, float]) -> None:
        """Append a sample taken at ``t_ns``.

        Raises
        ------
        ValueError
            If ``t_ns`` is older than the previous sample, a value is not finite,
            or the first sample lacks a signal the formula reads.
        """
        t = _check_int("t_ns", t_ns)
        same_instant = False
        if self._hi > self._lo:
            last_t = int(self._times[self._hi - 1])
            if t < last_t:
                raise ValueError(f"sample at {t} ns is older than the previous one at {last_t} ns")
            same_instant = t == last_t
        row = self._last.copy()
        for name, value in values.items():
            k = self._index.get(name)
            if k is None:
                continue  # other metrics in the same snapshot
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"signal {name!r} has non-finite value {value!r}")
            row[k] = v
        if np.isnan(row).any():
            missing = [s for s, v in zip(self._signals, row) if math.isnan(v)]
            raise ValueError(f"signals {missing} have no value yet")
        self._last = row
        if same_instant:
            self._values[:, self._hi - 1] = row
            return
        if self._hi == self._times.size:
            self._make_room()
        self._times[self._hi] = t
        self._values[:, self._hi] = row
        self._hi += 1

    def _make_room(self) -> None:
        live = self._hi - self._lo
        cap = self._times.size
        if live > cap // 2:
            cap *= 2
        times = np.empty(cap, dtype=np.int64)
        values = np.empty((self._values.shape[0], cap), dtype=np.float64)
        times[:live] = self._times[self._lo : self._hi]
        values[:, :live] = self._values[:, self._lo : self._hi]
        self._times, self._values = times, values
        self._lo, self._hi = 0, live

    def evaluate(self, now_ns: int) -> StlVerdict | None:
        """Robustness at the newest sample whose verdict is final at ``now_ns``.

        Returns
        -------
        StlVerdict or None
            None until some sample ``t_i`` satisfies ``t_i + horizon_ns <= now_ns``.
            Samples older than the reported one are then dropped.
        """
        now = _check_int("now_ns", now_ns)
        times = self._times[self._lo : self._hi]
        if times.size == 0:
            return None
        n_final = int(np.searchsorted(times, now - self._horizon, side="right"))
        if n_final == 0:
            return None
        i = n_final - 1
        columns = {s: self._values[k, self._lo : self._hi] for s, k in self._index.items()}
        dq = np.empty(times.size, dtype=np.int64)
        rho = _robustness_arrays(self._formula, times, columns, dq)
        verdict = StlVerdict(sample_ns=int(times[i]), robustness=float(rho[i]))
        self._lo += i  # samples before i can never be needed again (future-time formula)
        self._evaluations += 1
        return verdict

    def decide(self, now_ns: int, *, target: str, action: str = "alert") -> Decision | None:
        """Evaluate and, if the formula is violated (robustness < 0), return a ``Decision``."""
        if action not in DECISION_ACTIONS:
            raise ValueError(f"action must be one of {sorted(DECISION_ACTIONS)}, got {action!r}")
        verdict = self.evaluate(now_ns)
        if verdict is None or verdict.robustness >= 0.0:
            return None
        return Decision(
            action=action,  # type: ignore[arg-type]
            target=target,
            reason=f"{self._name} violated at sample {verdict.sample_ns} ns",
            robustness=verdict.robustness,
            at_ns=int(now_ns),
        )
