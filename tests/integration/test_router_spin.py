"""The router's spin phase routes: a packet committed while the router's parker spins is
routed inside that compiled call, and the next ``step`` counts it (so the worker loop resets
its wait strategy as after any work)."""

from __future__ import annotations

from fabric.simulation import FaultPlan, Simulation
from shm_layouts.control import RingRole
from tests._fabric_procs import spawn_code, stop_all

# A publisher in another process: the router's spin holds this process's GIL.
_PUBLISHER = """
import sys, time
from fabric.channel import PacketWriter
from fabric.packet import PhasePacket
from fabric.ring import Ring
ring = Ring.attach(sys.argv[1])
try:
    writer = PacketWriter(ring.writer())
    print("READY", flush=True)
    time.sleep(0.2)  # the router is spinning by now
    assert writer.offer(PhasePacket(id=77, topic="sim.a", payload=b"spun")) >= 0
    print("SENT", flush=True)
    writer.close()
finally:
    ring.close()
"""


def test_a_packet_committed_while_the_router_spins_is_routed_in_that_call():
    with Simulation(1, faults=FaultPlan(delay=0.0, crash=0.0, dropped_wakeup=0.0)) as sim:
        router = next(w for w in sim.workers if type(w).__name__ == "RouterWorker")
        now = sim.clock.monotonic_ns()
        assert router.step(now) == 0  # nothing yet: the input is empty
        child = spawn_code(_PUBLISHER, sim.control.ring_name(RingRole.ROUTER_IN, 0))
        try:
            child.wait_line("READY", timeout_s=30)
            # Up to a few seconds of re-checks (bounded); returns once the packet is routed.
            routed = router.parker().spin(200_000_000)
            child.wait_line("SENT", timeout_s=10)
            assert routed is True
            assert child.wait(timeout_s=10) == 0
        finally:
            stop_all([child])
        assert router.step(now) == 1, "the next step counts what the spin routed"
        assert router.step(now) == 0
        # Subscriber 0 holds "sim.a" (simulation_topology's topic sets): it alone gets the packet.
        got = {s.index: [p.id for p in s.reader.receive_batch(64)] for s in sim.subscribers}
        assert got == {0: [77], 1: []}
