"""Credit by measurement, sans-IO: what a node is counted and paid for is what its checks measured.

Theory of operation. Timing one proof cannot tell a node that claims 1.2× its real rate from an honest
node having a slow moment: proofs vary ±15 % around the prover's own calibration, so the verifier's
threshold (``proofs.PARAMS``: ``min_rate_ratio`` 0.74) lets overclaims up to ~1.35× pass. So the claim
is not what counts. For each workload a claim is checked with, the evidence keeps the rates the
verifier measured on its own clock in its recent checks whose work was verified (:class:`Measured`, at
most :data:`WINDOW`): accepted ones, and those rejected only as too slow (leaving those out would
credit a node near the threshold from its lucky runs alone). The *credited* figure of that workload is
``min(claimed, estimate)``, where the estimate is the lower quartile of those rates (the lowest while
there are four or fewer): what the node has delivered in at least three of four recent checks. A node
that claims more than it delivers gains nothing by it; an honest node is credited a little under its
claim (the network's share of the timed interval and the low side of its noise), and more as its checks
accumulate. A workload never checked keeps its claim (it earns no level above self-reported either).
Opt-in (:func:`mean_margin`, ``VerifierConfig.credit_estimator = "mean"``): the mean less
:data:`MARGIN_Z` standard errors, the spread floored at the noise model's (:data:`PROOF_SPREAD`). It
lets an in-band overclaimer gain no more often than the lower quartile at any number of measurements,
and credits honest nodes more from four on, less below (``benchmarks/credit_margin.py``).

:func:`credited_resources` maps the credited rates back onto the resources: where the claimed capacity
sets the rate (CPU: cores × per-core rate; bandwidth: Mbit/s) the capacity is scaled; where it does not
(memory and storage tables: GB held, with a separate fill rate) the rate detail is scaled and the
capacity kept (it is checked up to ``min(capacity, rate × target, max_bytes)``, what the level covers).
A check that asked for less than the claim (a cap) supports the claim in proportion to the share of the
checked rate that was met (:func:`implied_rate`).

The overclaim test. Credit bounds the gain; evidence of a persistent overclaim is recorded too, without a
slash. Over every check whose work was verified (accepted or only slow) the statistic is ``x = measured /
checked`` (the rate the check asked for). Under the noise model an honest node has ``E[x] ≥ null``, where
``null = expected / (expected + network)``: noise centred on its calibration, and at most the published
network allowance added to the ``expected`` time of the challenge (0.857 for a 3 s challenge with 500
ms). The test is a betting martingale (testing by betting): wealth ``W_n = Π (1 + λ_i (1 − min(x_i, 1) /
null_i))`` with each bet ``λ_i`` fixed from earlier values only. Under the null ``W`` is a non-negative
supermartingale, so by Ville's inequality the chance that it *ever* reaches ``1 / alpha`` is at most
``alpha`` (0.5 %): over an honest node's whole life, however many checks it gets. Reaching it records the
overclaim.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prsm_edge.errors import ConfigError
from prsm_edge.protocol import proofs
from prsm_edge.protocol.messages import ResourceSpec

__all__ = [
    "ALLOWANCE_SHARE",
    "ESTIMATORS",
    "MARGIN_Z",
    "PROOF_SPREAD",
    "WINDOW",
    "Measured",
    "OverclaimTest",
    "RoundTrips",
    "allowance_ms",
    "credited_rates",
    "credited_resources",
    "estimate",
    "implied_rate",
    "mean_margin",
    "net_rate",
    "null_ratio",
]

WINDOW: Final = 8  # measurements kept per workload and claim
CAPPED: Final = 1.02  # a check asking this much less than the claim was capped (not rounded down)
ALLOWANCE_SHARE: Final = 0.05  # the most network time taken out of a timed interval, of the expected time
TRIPS_KEPT: Final = 256  # round trips kept, group-wide, per workload
TRIPS_MIN: Final = 16  # round trips needed before any network time is taken out


PROOF_SPREAD: Final = 0.15 / math.sqrt(3.0)  # sd of one proof's rate / mean under ±15 % uniform noise
MARGIN_Z: Final = 1.75  # the mean estimator's margin in standard errors (benchmarks/credit_margin.py)
ESTIMATORS: Final = ("quartile", "mean")


def lower_quartile(rates: Sequence[float]) -> float:
    """The lower quartile of ``rates`` (the lowest of four or fewer); 0 for none."""
    values = sorted(r for r in rates if math.isfinite(r) and r > 0)
    if not values:
        return 0.0
    return values[(len(values) - 1) // 4]


def mean_margin(rates: Sequence[float], z: float = MARGIN_Z) -> float:
    """The mean of ``rates`` less ``z`` standard errors, never below 0; 0 for none.

    The spread is the sample's, floored at :data:`PROOF_SPREAD` of the mean (the noise model's spread of
    one honest proof), so two lucky runs that happen to agree cannot shrink the margin: the margin
    follows the measured spread where it is wider and narrows as ``1/√n`` as measurements accumulate.
    """
    values = [r for r in rates if math.isfinite(r) and r > 0]
    if not values:
        return 0.0
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    spread = max(math.sqrt(var), PROOF_SPREAD * mean)
    return max(0.0, mean - z * spread / math.sqrt(n))


def estimate(rates: Sequence[float], method: str = "quartile") -> float:
    """The rate credited from ``rates`` by ``method`` (:data:`ESTIMATORS`); 0 for none."""
    if method == "mean":
        return mean_margin(rates)
    if method == "quartile":
        return lower_quartile(rates)
    raise ConfigError(f"unknown credit estimator {method!r}: use one of {', '.join(ESTIMATORS)}")


def implied_rate(measured: float, checked: float, claimed: float) -> float:
    """The rate one check supports for the whole claim.

    A check asks for the claimed rate, or less where the claim is above what one check can confirm
    (``checked`` < ``claimed``: a table larger than ``max_bytes``, a bandwidth claim above the broker's
    share, paced at the checked rate). Where the node outran the checked rate the measurement is its
    own; where it met ``x`` of it, the claim above the cap is taken as claimed (it is not checked, as a
    table's capacity beyond the checked bytes is not) and the whole is credited ``x`` of the claim.
    """
    if not (math.isfinite(measured) and measured > 0 and math.isfinite(checked) and checked > 0):
        return 0.0
    if not (math.isfinite(claimed) and claimed > checked * CAPPED):
        return measured  # asked for the whole claim (whole table lines round it down a little)
    return max(measured, claimed * min(1.0, measured / checked))


def allowance_ms(round_trip_ms: float | None, expected_ms: float, network_ms: float) -> float:
    """The network time taken out of a check's timed interval before its rate is credited.

    The coordinator times a commitment from the challenge's issue to the proof's arrival on its own
    clock, so the interval holds one round trip of network besides the work. It sees that round trip
    again, on its own stamps, between the salt reveal and the opening's arrival (``round_trip_ms``; the
    opening itself is quick to make). The prover can only lengthen that second round trip, never shorten
    it, so :class:`RoundTrips` passes at most the group's median, and the allowance is capped here at
    :data:`ALLOWANCE_SHARE` of the expected time (and at the published ``network_ms``) whatever the
    network. None (no opening: bandwidth, a withheld one) takes nothing out.
    """
    if round_trip_ms is None or not math.isfinite(round_trip_ms) or round_trip_ms <= 0:
        return 0.0
    if not (math.isfinite(expected_ms) and expected_ms > 0 and math.isfinite(network_ms)):
        return 0.0
    return min(float(round_trip_ms), ALLOWANCE_SHARE * expected_ms, max(0.0, network_ms))


@dataclass(slots=True)
class RoundTrips:
    """The reveal-to-opening round trips the coordinator saw lately, group-wide (bounded).

    A node can lengthen its own round trip (hold its opening back) but not the group's: the allowance a
    check gets is its own round trip, at most the group's median (:meth:`allowance`). A node that holds
    back gains no more than what the typical honest node's network takes; one whose network is really
    slower than most is credited a little under its rate (as before), never over it.
    """

    trips: deque[float] = field(default_factory=lambda: deque(maxlen=TRIPS_KEPT))

    def add(self, trip_ms: float) -> None:
        """A timed check's opening came back ``trip_ms`` after the salt reveal."""
        if math.isfinite(trip_ms) and trip_ms > 0:
            self.trips.append(float(trip_ms))

    def typical(self) -> float | None:
        """The median round trip; None while fewer than :data:`TRIPS_MIN` are known (after a restart)."""
        if len(self.trips) < TRIPS_MIN:
            return None
        values = sorted(self.trips)
        return values[len(values) // 2]

    def allowance(self, trip_ms: float | None, expected_ms: float, network_ms: float) -> float:
        """What to take out of a check's timed interval (:func:`allowance_ms` of ``min(own, median)``)."""
        typical = self.typical()
        if trip_ms is None or typical is None:
            return 0.0
        return allowance_ms(min(trip_ms, typical), expected_ms, network_ms)


def net_rate(work: float, elapsed_ms: float, allowance: float) -> float:
    """Work units per second over the timed interval less the network allowance (at least 1 ms left)."""
    if not (math.isfinite(work) and work > 0 and math.isfinite(elapsed_ms)):
        return 0.0
    return work * 1000.0 / max(1.0, elapsed_ms - max(0.0, allowance))


def null_ratio(expected_ms: float, network_ms: float) -> float:
    """The mean of measured/claimed an honest node keeps at worst: its noise centred on its claim, and
    the whole network allowance added to the challenge's expected time."""
    if not (math.isfinite(expected_ms) and expected_ms > 0):
        return 1.0
    return expected_ms / (expected_ms + max(0.0, network_ms))


@dataclass(frozen=True, slots=True)
class OverclaimTest:
    """The overclaim test's constants: ``alpha`` bounds an honest node's lifetime false-flag chance."""

    alpha: float = 0.005
    max_bet: float = 0.5  # share of the largest bet that keeps every factor non-negative


@dataclass(slots=True)
class Measured:
    """What the verifier measured of one workload of one claim."""

    rates: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # verified work, timed
    n: int = 0  # timed checks seen by the test
    sum_d: float = 0.0  # running sums of d = 1 − min(x, 1) / null, for the next bet
    sum_d2: float = 0.0
    log_wealth: float = 0.0
    flagged_ms: int | None = None  # when the test recorded an overclaim

    def estimate(self, method: str = "quartile") -> float:
        """The rate credited from measurement by ``method`` (0: none yet)."""
        return estimate(self.rates, method)

    def add(self, rate: float) -> None:
        """A check whose work was verified (accepted, or only too slow) measured ``rate``."""
        if math.isfinite(rate) and rate > 0:
            self.rates.append(float(rate))

    def observe(self, ratio: float, null: float, now_ms: int, test: OverclaimTest = OverclaimTest()) -> bool:
        """A timed check measured ``ratio`` × its claim; True when this makes the overclaim evident."""
        if not (math.isfinite(ratio) and ratio >= 0 and math.isfinite(null) and 0 < null < 1):
            return False
        d = 1.0 - min(ratio, 1.0) / null  # ≥ 1 − 1/null: so a bet up to null/(1 − null) keeps 1 + λd ≥ 0
        # The bet uses only earlier checks (one prior pseudo-check of d = 0.05, d² = 0.01).
        mean = (self.sum_d + 0.05) / (self.n + 1)
        second = (self.sum_d2 + 0.01) / (self.n + 1)
        bet = min(max(0.0, mean / second), test.max_bet * null / (1.0 - null))
        self.log_wealth += math.log1p(bet * d)
        self.n += 1
        self.sum_d += d
        self.sum_d2 += d * d
        if self.flagged_ms is None and self.log_wealth >= math.log(1.0 / test.alpha):
            self.flagged_ms = now_ms
            return True
        return False

    def to_record(self) -> dict[str, object]:
        """Plain data to persist with the evidence."""
        return {
            "rates": list(self.rates),
            "n": self.n,
            "sum_d": self.sum_d,
            "sum_d2": self.sum_d2,
            "log_wealth": self.log_wealth,
            "flagged_ms": self.flagged_ms,
        }

    @classmethod
    def from_record(cls, data: object) -> Measured:
        """Rebuild from :meth:`to_record`; anything malformed or out of range counts as nothing."""
        m = cls()
        if not isinstance(data, dict):
            return m

        def real(key: str, low: float, high: float) -> float:
            v = data.get(key)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            return float(v) if ok and low <= v <= high else 0.0  # type: ignore[operator, arg-type]

        rates = data.get("rates")
        if isinstance(rates, list):
            for r in rates[-WINDOW:]:
                if (
                    isinstance(r, (int, float))
                    and not isinstance(r, bool)
                    and math.isfinite(r)
                    and 0 < r < 1e18
                ):
                    m.rates.append(float(r))
        n = data.get("n")
        m.n = n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 else 0
        m.sum_d = real("sum_d", -1e12, 1e12)
        m.sum_d2 = real("sum_d2", 0.0, 1e12)
        m.log_wealth = real("log_wealth", -1e12, 1e12)
        flagged = data.get("flagged_ms")
        if isinstance(flagged, int) and not isinstance(flagged, bool) and flagged >= 0:
            m.flagged_ms = flagged
        return m


def credited_rates(resources: Sequence[ResourceSpec], estimates: Mapping[str, float]) -> dict[str, float]:
    """Workload → ``min(claimed, estimate)`` for each checked resource (the claim where none measured)."""
    out: dict[str, float] = {}
    for workload, claim in proofs.claims(resources).items():
        est = estimates.get(workload, 0.0)
        out[workload] = min(claim.rate, est) if math.isfinite(est) and est > 0 else claim.rate
    return out


def credited_resources(
    resources: Sequence[ResourceSpec], estimates: Mapping[str, float]
) -> list[ResourceSpec]:
    """The resources as credited: each checked one scaled by ``min(1, estimate / claimed)``."""
    claims = proofs.claims(resources)
    factors: dict[str, float] = {}
    for workload, claim in claims.items():
        est = estimates.get(workload, 0.0)
        if math.isfinite(est) and est > 0 and claim.rate > 0:
            factors[workload] = min(1.0, est / claim.rate)
    out: list[ResourceSpec] = []
    done: set[str] = set()
    for spec in resources:
        own = proofs.claims([spec])  # the claim this very resource makes, if it is the one checked
        checked = next((w for w, c in own.items() if w in factors and w not in done and c == claims[w]), None)
        if checked is None:
            out.append(spec)
            continue
        done.add(checked)
        f = factors[checked]
        key = proofs.RATE_KEYS.get(checked)
        if claims[checked].capacity_bytes > 0 and key is not None:
            # A table: the capacity (GB held) is not what the rate measures; the rate detail is.
            rate = spec.details.get(key)
            if isinstance(rate, (int, float)) and not isinstance(rate, bool):
                details = {**spec.details, key: float(rate) * f}
                out.append(
                    ResourceSpec(type=spec.type, capacity=spec.capacity, unit=spec.unit, details=details)
                )
                continue
            out.append(spec)
            continue
        out.append(
            ResourceSpec(type=spec.type, capacity=spec.capacity * f, unit=spec.unit, details=spec.details)
        )
    return out
