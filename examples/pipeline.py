"""The C-LOGIC pipeline from a client's side: a sensor stream in, patterns and results out.

Start a fabric with the built-in topology, then run this against it::

    chronofabric up --detach
    python examples/pipeline.py --seconds 10
    chronofabric down

What it does, for ``--seconds``:

- publishes a synthetic sensor stream ``demo.vib`` on ``sensor`` in real time: two sines
  (50 Hz, amplitude 1.0, and 120 Hz, amplitude 0.5) in white noise (sigma 0.5), sampled
  at 1 kHz, in chunks of 100 samples every 100 ms;
- every 500 ms submits the stream's newest 1024 samples to ADP on ``adp.input`` as a
  ``power_spectrum`` work item (``stream = "demo.vib"``, so DRPP's patterns on that stream
  raise its priority), which ADP dispatches to an accelerator;
- prints, as they arrive: DRPP's pattern events (frequency, amplitude, strength) and
  transfer-entropy values (``drpp.patterns``), each work result with the spectrum's peak
  frequency and the item's latency (``work.results``), EGC's decisions
  (``egc.decisions``) and EMS's modulation when valence or arousal moved by 0.1 or more
  (``ems.modulation``).

DRPP analyses blocks of 1024 samples every 512, so the first pattern events come after
about a second of stream. Exit codes: 0 done, 2 no such fabric running.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fabric
from fabric.errors import FabricError

RATE_HZ = 1000.0
CHUNK = 100
SINES = ((50.0, 1.0), (120.0, 0.5))  # (frequency Hz, amplitude)
NOISE = 0.5
STREAM = "demo.vib"
TOPICS = ["drpp.patterns", "work.results", "egc.decisions", "ems.modulation"]


def signal_chunk(first_sample: int, n: int, rng: np.random.Generator) -> np.ndarray:
    t = (first_sample + np.arange(n)) / RATE_HZ
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in SINES)
    return x + NOISE * rng.standard_normal(n)


def describe(pkt, last_modulation: list) -> str | None:
    p = pkt.payload
    if pkt.topic == "drpp.patterns":
        if p["kind"] == "pattern":
            return (f"pattern   {p['stream']:<10} {p['frequency_hz']:8.2f} Hz  amplitude {p['amplitude']:.2f}  "
                    f"strength {p['strength']:.0f}")
        return f"transfer  {p['source']} -> {p['target']}: {p['bits']:.3f} bits"
    if pkt.topic == "work.results":
        if not p["ok"]:
            return f"result    item {p['item']}: failed (worker {p['worker']})"
        spectrum = np.asarray(p["result"])[0]
        peak_hz = int(np.argmax(spectrum[1:]) + 1) * RATE_HZ / 1024
        return (f"result    item {p['item']}: spectrum peak at {peak_hz:6.2f} Hz  "
                f"(accelerator {p['worker']}, {p['latency_ns'] / 1e6:.2f} ms)")
    if pkt.topic == "egc.decisions":
        return f"decision  {p['action']} {p['target']}: {p['reason']}"
    if pkt.topic == "ems.modulation":
        key = (p["valence"], p["arousal"])
        if last_modulation and max(abs(a - b) for a, b in zip(key, last_modulation[0])) < 0.1:
            return None  # print it when valence or arousal moved by 0.1 or more
        last_modulation[:] = [key]
        return (f"affect    valence {p['valence']:+.2f} arousal {p['arousal']:+.2f}  "
                f"batch x{p['batch_scale']:.2f}  sensitivity x{p['sensitivity_scale']:.2f}")
    return None


def run(name: str, seconds: float) -> int:
    try:
        fab = fabric.attach(name, timeout_ns=10_000_000_000)
    except FabricError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    history = np.zeros(0)
    last_modulation: list = []
    with fab:
        missing = [t for t in ["sensor", "adp.input", *TOPICS] if t not in fab.topics()]
        if missing:
            print(f"pipeline: fabric {name!r} has no topics {missing}; run it with the built-in topology", file=sys.stderr)
            return 2
        sub = fab.subscribe(TOPICS)
        sensor = fab.publisher("sensor")
        work = fab.publisher("adp.input", priority=1)
        print(f"pipeline: fabric {name!r}, stream {STREAM!r}: sines at "
              f"{', '.join(f'{f:g} Hz' for f, _ in SINES)} in noise, {seconds:g} s", flush=True)
        start = time.monotonic()
        t0_ns = time.time_ns()
        sent = 0
        item = 0
        next_item_at = 0.5
        while (elapsed := time.monotonic() - start) < seconds:
            # The sensor publishes in real time: every chunk that is due by now.
            while sent * 1.0 / RATE_HZ <= elapsed:
                chunk = signal_chunk(sent, CHUNK, rng)
                sensor.publish({"stream": STREAM, "rate_hz": RATE_HZ, "t0_ns": t0_ns + int(sent * 1e9 / RATE_HZ),
                                "samples": chunk})
                history = np.concatenate((history, chunk))[-1024:]
                sent += CHUNK
            if elapsed >= next_item_at and history.size == 1024:
                work.publish({"item": item, "kernel": "power_spectrum", "inputs": [history[np.newaxis, :]],
                              "reply_topic": "work.results", "stream": STREAM})
                item += 1
                next_item_at += 0.5
            for pkt in sub.receive_batch(256):
                line = describe(pkt, last_modulation)
                if line:
                    print(f"{elapsed:6.2f}s  {line}", flush=True)
            time.sleep(0.005)
        print(f"pipeline: published {sent} samples and {item} work items", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="chronofabric", help="fabric name (default: chronofabric)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to run (default: 10)")
    args = ap.parse_args(argv)
    return run(args.name, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
