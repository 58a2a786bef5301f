"""Who may be in a group: the host's join policy, enrolment tokens, join rate limits and eviction.

Sans-IO: time is passed in, nothing here touches a file or a socket. The coordinator's shell
(``prsm_edge.coordinator.membership``) keeps tokens and pending approvals in SQLite and issues broker
credentials off the MQTT read loop.

Policies (chosen by the host, ``coordinate --join-policy``):

* ``open`` — any key may join, but at most ``rate_per_min`` new joins a minute (a token bucket with
  ``burst``), and at most ``max_pending`` waiting for credentials at once;
* ``token`` — a join must prove an enrolment token the host created (``prsm-edge group token create``):
  the request carries the token's id and ``HMAC-SHA256(secret, domain | node | txid)``, inside the
  node's signed request, so the secret never travels and a captured proof is useless for another node
  or another request;
* ``approval`` — a join waits until the host approves it (``prsm-edge group approve NODE``).

A node the group already knows (a member re-joining after losing its credentials) is re-admitted under
every policy. Members absent for longer than ``evict_after_ms`` are evicted: removed from the roster with
their broker credentials deleted, so keys minted once cannot hold seats for good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from prsm_edge.errors import LocalError

__all__ = [
    "DEFAULT_EVICT_AFTER_S",
    "JOIN_POLICIES",
    "EnrolmentToken",
    "JoinPolicy",
    "JoinPolicyName",
    "TokenBucket",
    "evictable",
    "parse_token",
    "token_proof",
    "verify_token_proof",
]

JoinPolicyName = Literal["open", "token", "approval"]
JOIN_POLICIES: Final[tuple[str, ...]] = ("open", "token", "approval")
DEFAULT_EVICT_AFTER_S: Final = 7 * 24 * 3600
_TOKEN_DOMAIN: Final = b"prsm-join-token/1"
_TOKEN_ID = re.compile(r"[a-z0-9]{8,32}")


@dataclass(frozen=True, slots=True)
class JoinPolicy:
    """The host's rules for new members."""

    name: JoinPolicyName = "open"
    rate_per_min: float = 60.0
    burst: int = 30
    max_pending: int = 32
    evict_after_ms: int = DEFAULT_EVICT_AFTER_S * 1000

    def __post_init__(self) -> None:
        if self.name not in JOIN_POLICIES:
            raise LocalError(f"join policy {self.name!r} is not one of {', '.join(JOIN_POLICIES)}")
        if not (self.rate_per_min > 0 and self.burst >= 1 and self.max_pending >= 1):
            raise LocalError("join rate, burst and pending cap must be positive")
        if self.evict_after_ms <= 0:
            raise LocalError("evict_after must be positive")


class TokenBucket:
    """``rate_per_min`` events a minute on average, ``burst`` at once; time passed in."""

    def __init__(self, rate_per_min: float, burst: int) -> None:
        self.rate_per_ms = rate_per_min / 60_000
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at: int | None = None

    def take(self, now_ms: int) -> bool:
        """Spend one token if there is one."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + max(0, now_ms - self._at) * self.rate_per_ms)
        self._at = now_ms
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class EnrolmentToken:
    """What a node holds: the token's id and its secret, written ``id.secret`` for people."""

    token_id: str
    secret: bytes

    def __str__(self) -> str:
        return f"{self.token_id}.{base64.urlsafe_b64encode(self.secret).decode().rstrip('=')}"


def parse_token(text: str) -> EnrolmentToken:
    """Read ``id.secret`` as printed by ``prsm-edge group token create``."""
    token_id, _, secret = text.strip().partition(".")
    try:
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if _TOKEN_ID.fullmatch(token_id) is None or len(raw) < 16:
        raise LocalError(
            "an enrolment token looks like 'id.secret' as printed by `prsm-edge group token create` "
            "on the group's host; ask the host for a new one"
        )
    return EnrolmentToken(token_id, raw)


def token_proof(token: EnrolmentToken, node: str, txid: str) -> dict[str, str]:
    """The join-request parameters that prove ``token`` for this node and this request only."""
    mac = hmac.new(token.secret, b"|".join((_TOKEN_DOMAIN, node.encode(), txid.encode())), hashlib.sha256)
    return {"token_id": token.token_id, "token_mac": mac.hexdigest()}


def verify_token_proof(secret: bytes, node: str, txid: str, params: dict[str, object]) -> bool:
    """True if ``params`` prove the token with ``secret`` for ``node`` and request ``txid``."""
    mac = params.get("token_mac")
    if not isinstance(mac, str) or len(mac) != 64:
        return False
    want = hmac.new(secret, b"|".join((_TOKEN_DOMAIN, node.encode(), txid.encode())), hashlib.sha256)
    return hmac.compare_digest(want.hexdigest(), mac)


def evictable(last_seen: Iterable[tuple[str, bool, int]], now_ms: int, evict_after_ms: int) -> list[str]:
    """The nodes (given as ``(node, online, last_seen_ms)``) absent for longer than ``evict_after_ms``."""
    return sorted(node for node, online, seen in last_seen if not online and now_ms - seen > evict_after_ms)
