"""How much of an honest node's credit shortfall is network and how much is the estimate's margin, and
what taking the network out would give an in-band overclaimer.

Run: .venv/bin/python benchmarks/credit_margin.py [--trials 20000] [--seed 1]

A Monte Carlo of the simulator's model (``benchmarks/verification_sim.py``: a proof's rate is the
node's true rate × U(0.85, 1.15); 5–150 ms of latency each way; a 3 s challenge), through the shipping
code: ``credit.lower_quartile`` (main's estimator) beside ``credit.mean_margin`` (mean − z standard
errors, the spread floored at ``credit.PROOF_SPREAD``), and ``credit.RoundTrips`` /
``credit.allowance_ms`` (the round trip taken out when ``VerifierConfig.credit_net_of_network`` is on).
An honest node claims its true rate and is credited ``min(1, estimate / true)``; an in-band
overclaimer proves honestly (its samples are an honest node's) and holds every opening back by the 5 %
cap, and "gains" when its estimate exceeds its true rate (credit ``min(claim, estimate)``, the claim
above the truth). Printed per number of measurements ``n`` and estimator: the honest median and that
chance, with the whole interval timed (the default) and with the round trip taken out. ``--latency 0 0``
is a fast LAN, where no network time in the interval shades the estimate down (the worst case for the
mean estimator's margin; ``credit.MARGIN_Z`` is chosen so that it holds there too).
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
    ap.add_argument(
        "--z", type=float, default=credit.MARGIN_Z, help=f"the mean estimator's z (default {credit.MARGIN_Z})"
    )
    ap.add_argument(
        "--latency",
        type=int,
        nargs=2,
        default=LATENCY_MS,
        metavar=("LO", "HI"),
        help="one-way latency range in ms (default 5 150, the simulator's; 0 0: a fast LAN)",
    )
    a = ap.parse_args()
    latency = (a.latency[0], a.latency[1])
    rng = random.Random(a.seed)

    def trip() -> float:
        return float(rng.randint(*latency) + rng.randint(*latency))

    trips = credit.RoundTrips()
    for _ in range(credit.TRIPS_KEPT):
        trips.add(trip() + 5)

    def rate(net: bool, hold: bool) -> float:
        """One check's measured rate / true rate."""
        elapsed = EXPECTED_MS / rng.uniform(1 - NOISE, 1 + NOISE) + trip()
        back = trip() + 5 + (credit.ALLOWANCE_SHARE * EXPECTED_MS if hold else 0.0)
        allowance = trips.allowance(back, EXPECTED_MS, NETWORK_MS) if net else 0.0
        return credit.net_rate(EXPECTED_MS, elapsed, allowance) / 1000.0

    print(f"{a.trials} draws per figure; noise ±{NOISE:.0%}, latency {latency} ms each way, 3 s checks")
    print(
        f"quartile: the lower quartile (main); mean: mean − z·max(s, {credit.PROOF_SPREAD:.4f}·mean)/√n, "
        f"z={a.z}"
    )
    print(
        "   n  estimator   honest credited/true median (whole / net)   "
        "in-band cheat P(estimate > true) (whole / net)"
    )
    for n in (1, 2, 3, 4, 6, 8):
        rows: dict[str, list[tuple[float, float]]] = {"quartile": [], "mean": []}
        for net in (False, True):
            honest = [[rate(net, False) for _ in range(n)] for _ in range(a.trials)]
            cheat = [[rate(net, True) for _ in range(n)] for _ in range(a.trials)]
            fns = {"quartile": credit.lower_quartile, "mean": lambda r: credit.mean_margin(r, a.z)}
            for name, fn in fns.items():
                h = statistics.median(min(1.0, fn(s)) for s in honest)
                c = sum(fn(s) > 1.0 for s in cheat) / a.trials
                rows[name].append((h, c))
        for name, ((hw, cw), (hn, cn)) in rows.items():
            print(f"{n:4d}  {name:9s}   {hw:18.3f} / {hn:.3f}                      {cw:14.1%} / {cn:.1%}")


if __name__ == "__main__":
    main()
