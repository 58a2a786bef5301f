"""How much of an honest node's credit shortfall is network and how much is the estimate's margin, and
what taking the network out would give an in-band overclaimer.

Run: .venv/bin/python benchmarks/credit_margin.py [--trials 20000] [--seed 1]

A Monte Carlo of the simulator's model (``benchmarks/verification_sim.py``: a proof's rate is the
node's true rate × U(0.85, 1.15); 5–150 ms of latency each way; a 3 s challenge), through the shipping
code: ``credit.estimate`` (the lower quartile) and ``credit.RoundTrips`` / ``credit.allowance_ms`` (the
round trip taken out when ``VerifierConfig.credit_net_of_network`` is on). An honest node claims its
true rate and is credited ``min(1, estimate / true)``; an in-band overclaimer proves honestly (its
samples are an honest node's) and holds every opening back by the 5 % cap, and "gains" when its
estimate exceeds its true rate (credit ``min(claim, estimate)``, the claim above the truth). Printed per
number of measurements ``n``: the honest median and that chance, with the whole interval timed (today)
and with the round trip taken out.
"""

from __future__ import annotations

import argparse
import random
import statistics

from prsm_edge.protocol import credit

EXPECTED_MS = 3_000.0
NOISE = 0.15
LATENCY_MS = (5, 150)
NETWORK_MS = 500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20_000, help="draws per figure (default 20000)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)

    def trip() -> float:
        return float(rng.randint(*LATENCY_MS) + rng.randint(*LATENCY_MS))

    trips = credit.RoundTrips()
    for _ in range(credit.TRIPS_KEPT):
        trips.add(trip() + 5)

    def rate(net: bool, hold: bool) -> float:
        """One check's measured rate / true rate."""
        elapsed = EXPECTED_MS / rng.uniform(1 - NOISE, 1 + NOISE) + trip()
        back = trip() + 5 + (credit.ALLOWANCE_SHARE * EXPECTED_MS if hold else 0.0)
        allowance = trips.allowance(back, EXPECTED_MS, NETWORK_MS) if net else 0.0
        return credit.net_rate(EXPECTED_MS, elapsed, allowance) / 1000.0

    print(f"{a.trials} draws per figure; noise ±{NOISE:.0%}, latency {LATENCY_MS} ms each way, 3 s checks")
    print("   n   honest credited/true median (whole / net)   in-band cheat P(estimate > true) (whole / net)")
    for n in (1, 2, 3, 4, 6, 8):
        row = []
        for net in (False, True):
            honest = [
                min(1.0, credit.estimate([rate(net, False) for _ in range(n)])) for _ in range(a.trials)
            ]
            cheat = [credit.estimate([rate(net, True) for _ in range(n)]) > 1.0 for _ in range(a.trials)]
            row.append((statistics.median(honest), sum(cheat) / a.trials))
        (hw, cw), (hn, cn) = row
        print(f"{n:4d}   {hw:18.3f} / {hn:.3f}                      {cw:14.1%} / {cn:.1%}")


if __name__ == "__main__":
    main()
