"""Group auto-formation rules: the mDNS group advert and the choices every node makes the same way.

Sans-IO: pure functions over :class:`GroupAdvert` values. The I/O shell (``prsm_edge.io.discovery``)
turns mDNS records into adverts; these rules decide which group a node joins, which of two coordinators of
one group stays, what a full group does, and when a small group merges into a neighbour. Every rule ends
in a total order, so all nodes that see the same adverts reach the same decision. See docs/discovery.md.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from prsm_edge.errors import LocalError, RemoteError
from prsm_edge.protocol import cbor
from prsm_edge.protocol.envelope import node_id_for
from prsm_edge.protocol.topics import valid_segment

__all__ = [
    "ADVERT_MAX_AGE_S",
    "ADVERT_MAX_SKEW_S",
    "DEFAULT_MAX_MEMBERS",
    "MAX_HOSTS",
    "MAX_TXT_VALUE",
    "MIN_MEMBERS",
    "SERVICE_TYPE",
    "BadAdvert",
    "FullGroupPlan",
    "GroupAdvert",
    "LeaderPolicy",
    "choose_group",
    "compatible",
    "elect",
    "instance_name",
    "next_group_name",
    "plan_for_full_group",
    "should_merge",
    "should_yield",
    "sign_advert",
    "verify_advert",
]

SERVICE_TYPE: Final = "_prsm._tcp.local."
DEFAULT_MAX_MEMBERS: Final = 200
MIN_MEMBERS: Final = 50
MAX_TXT_VALUE: Final = 64  # bytes; every TXT value is bounded by this
MAX_HOSTS: Final = 8
_MAX_INT: Final = 10**9
_MAX_PROPS: Final = 32
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FP = re.compile(r"[0-9A-Za-z:_-]{0,64}")
_SUFFIX = re.compile(r"^(.*)-([0-9]{1,6})$")
_B64 = re.compile(r"[A-Za-z0-9_-]{43}")
_ADVERT_DOMAIN: Final = "prsm-advert/1"
ADVERT_MAX_AGE_S: Final = 600  # a signed advert older than this is stale (coordinators re-sign each minute)
ADVERT_MAX_SKEW_S: Final = 60  # how far in the future a signing time may lie (clock skew)


class BadAdvert(RemoteError):
    """An mDNS group advert is missing a value or carries one we refuse."""


@dataclass(frozen=True, slots=True)
class GroupAdvert:
    """What a coordinator announces about its group over mDNS."""

    site: str
    group: str
    coordinator: str
    epoch: int
    version: int
    members: int
    port: int
    max_members: int = DEFAULT_MAX_MEMBERS
    capacity: int = 0  # total CPU cores offered by the group's members
    key_fingerprint: str = ""
    hosts: tuple[str, ...] = field(default=())
    ws_port: int | None = None
    # The coordinator's Ed25519 public key, the signing time (Unix seconds) and its signature over
    # everything above but the hosts (which mDNS carries outside the TXT record): see sign_advert.
    public_key: bytes = b""
    signed_at: int = 0
    signature: bytes = b""

    @property
    def key(self) -> tuple[str, str]:
        """The (site, group) this advert speaks for."""
        return (self.site, self.group)

    @property
    def has_room(self) -> bool:
        """True while the group accepts new members."""
        return self.members < self.max_members

    def to_txt(self) -> dict[str, str]:
        """The TXT properties of this advert (short keys, bounded values)."""
        txt = {
            "site": self.site,
            "grp": self.group,
            "coord": self.coordinator,
            "ep": str(self.epoch),
            "v": str(self.version),
            "n": str(self.members),
            "max": str(self.max_members),
            "cap": str(self.capacity),
            "fp": self.key_fingerprint,
        }
        if self.ws_port is not None:
            txt["ws"] = str(self.ws_port)
        if self.public_key:
            txt["pk"] = _b64(self.public_key)
            txt["ts"] = str(self.signed_at)
        if self.signature:
            sig = _b64(self.signature)  # 86 characters: two TXT values of at most 64
            txt["s1"], txt["s2"] = sig[:43], sig[43:]
        for k, v in txt.items():
            if len(v.encode()) > MAX_TXT_VALUE:
                raise BadAdvert(f"TXT value {k!r} is longer than {MAX_TXT_VALUE} bytes")
        return txt

    @classmethod
    def from_txt(
        cls,
        name: str,
        addresses: Iterable[str],
        port: int,
        props: Mapping[bytes, bytes | None],
    ) -> GroupAdvert:
        """Build an advert from a resolved service; raises :class:`BadAdvert` on bad or missing values."""
        if len(props) > _MAX_PROPS:
            raise BadAdvert(f"{name}: {len(props)} TXT properties (at most {_MAX_PROPS})")
        txt: dict[str, str] = {}
        for raw_key, raw_value in props.items():
            try:
                key = raw_key.decode("ascii")
            except UnicodeDecodeError:
                continue  # unknown (non-ASCII) key: ignore
            if raw_value is None:
                continue
            if len(raw_value) > MAX_TXT_VALUE:
                raise BadAdvert(f"{name}: TXT value {key!r} is longer than {MAX_TXT_VALUE} bytes")
            try:
                txt[key] = raw_value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadAdvert(f"{name}: TXT value {key!r} is not UTF-8") from exc
        if not 1 <= port <= 65535:
            raise BadAdvert(f"{name}: port {port} out of range")
        hosts = _hosts(name, addresses)
        ws = _int(name, txt, "ws", 1, 65535) if "ws" in txt else None
        max_members = _int(name, txt, "max", 1, _MAX_INT)
        advert = cls(
            site=_segment(name, txt, "site"),
            group=_segment(name, txt, "grp"),
            coordinator=_match(name, txt, "coord", _ID),
            epoch=_int(name, txt, "ep", 0, _MAX_INT),
            version=_int(name, txt, "v", 0, _MAX_INT),
            members=_int(name, txt, "n", 0, _MAX_INT),
            max_members=max_members,
            capacity=_int(name, txt, "cap", 0, _MAX_INT) if "cap" in txt else 0,
            key_fingerprint=_match(name, txt, "fp", _FP) if "fp" in txt else "",
            hosts=hosts,
            port=port,
            ws_port=ws,
            public_key=_unb64(name, _match(name, txt, "pk", _B64)) if "pk" in txt else b"",
            signed_at=_int(name, txt, "ts", 0, 2**40) if "pk" in txt else 0,
            signature=_signature(name, txt),
        )
        return advert

    def signed_bytes(self) -> bytes:
        """What the coordinator's key signs: every claim of the advert but the host addresses."""
        return cbor.dumps(
            [_ADVERT_DOMAIN, self.site, self.group, self.coordinator, self.epoch, self.version,
             self.members, self.max_members, self.capacity, self.key_fingerprint, self.port,
             -1 if self.ws_port is None else self.ws_port, self.public_key, self.signed_at]
        )  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(name: str, text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadAdvert(f"{name}: a TXT value is not base64url") from exc


def _signature(name: str, txt: Mapping[str, str]) -> bytes:
    if "s1" not in txt and "s2" not in txt:
        return b""
    sig = _unb64(name, _match(name, txt, "s1", _B64) + _match(name, txt, "s2", _B64))
    if len(sig) != 64:
        raise BadAdvert(f"{name}: the advert signature is not 64 bytes")
    return sig


def sign_advert(advert: GroupAdvert, key: SigningKey, now_s: int) -> GroupAdvert:
    """``advert`` stamped with the coordinator's key, the time and a signature by that key."""
    public = bytes(key.verify_key)
    if node_id_for(public) != advert.coordinator:
        raise LocalError("an advert must be signed by the key of the coordinator it names")
    stamped = dataclasses.replace(
        advert, public_key=public, signed_at=now_s, key_fingerprint=public.hex()[:16], signature=b""
    )
    return dataclasses.replace(stamped, signature=key.sign(stamped.signed_bytes()).signature)


def verify_advert(advert: GroupAdvert, now_s: float, max_age_s: float = ADVERT_MAX_AGE_S) -> None:
    """Raise :class:`BadAdvert` unless the coordinator it names signed it, recently."""
    who = f"advert of {advert.site}/{advert.group} by {advert.coordinator}"
    if len(advert.public_key) != 32 or len(advert.signature) != 64:
        raise BadAdvert(f"{who} is not signed")
    if node_id_for(advert.public_key) != advert.coordinator:
        raise BadAdvert(f"{who} carries a key that is not that coordinator's")
    if advert.key_fingerprint and advert.key_fingerprint != advert.public_key.hex()[:16]:
        raise BadAdvert(f"{who} carries a fingerprint of another key")
    try:
        VerifyKey(advert.public_key).verify(advert.signed_bytes(), advert.signature)
    except (BadSignatureError, CryptoError, ValueError) as exc:
        raise BadAdvert(f"{who}: the signature does not verify") from exc
    age = now_s - advert.signed_at
    if age > max_age_s:
        raise BadAdvert(f"{who} was signed {age:.0f} s ago (stale after {max_age_s:.0f} s)")
    if age < -ADVERT_MAX_SKEW_S:
        raise BadAdvert(f"{who} is signed {-age:.0f} s in the future")


@dataclass(frozen=True, slots=True)
class LeaderPolicy:
    """Whom a coordinator may yield to and a member may follow: never a rival only the LAN vouches for.

    ``pinned`` (the default) allows only coordinator keys the site's settings list in ``trusted``;
    ``verified`` (an explicit operator choice) also allows any rival whose claims were verified on its own
    broker; ``never`` allows nobody. In every mode the rival's claims are checked on its broker first.
    """

    mode: Literal["pinned", "verified", "never"] = "pinned"
    trusted: frozenset[bytes] = frozenset()

    def allows(self, advert: GroupAdvert) -> bool:
        """True if this policy lets ``advert``'s coordinator lead us (after verification)."""
        if self.mode == "never" or len(advert.public_key) != 32:
            return False
        return advert.public_key in self.trusted or self.mode == "verified"


def _required(name: str, txt: Mapping[str, str], key: str) -> str:
    try:
        return txt[key]
    except KeyError:
        raise BadAdvert(f"{name}: TXT value {key!r} is missing") from None


def _segment(name: str, txt: Mapping[str, str], key: str) -> str:
    value = _required(name, txt, key)
    if not valid_segment(value):
        raise BadAdvert(f"{name}: TXT value {key!r}={value!r} is not a valid topic segment")
    return value


def _match(name: str, txt: Mapping[str, str], key: str, pattern: re.Pattern[str]) -> str:
    value = _required(name, txt, key)
    if pattern.fullmatch(value) is None:
        raise BadAdvert(f"{name}: TXT value {key!r}={value!r} is malformed")
    return value


def _int(name: str, txt: Mapping[str, str], key: str, lo: int, hi: int) -> int:
    value = _required(name, txt, key)
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise BadAdvert(f"{name}: TXT value {key!r}={value!r} is not a non-negative integer")
    number = int(value)
    if not lo <= number <= hi:
        raise BadAdvert(f"{name}: TXT value {key!r}={number} is outside {lo}..{hi}")
    return number


def _hosts(name: str, addresses: Iterable[str]) -> tuple[str, ...]:
    hosts: list[str] = []
    for addr in addresses:
        try:
            parsed = ipaddress.ip_address(addr)
        except ValueError as exc:
            raise BadAdvert(f"{name}: address {addr!r} is not an IP address") from exc
        text = str(parsed)
        if text not in hosts:
            hosts.append(text)
        if len(hosts) > MAX_HOSTS:
            raise BadAdvert(f"{name}: more than {MAX_HOSTS} addresses")
    return tuple(hosts)


def instance_name(advert: GroupAdvert) -> str:
    """A unique mDNS instance label (≤ 63 bytes) for one coordinator of one group: ``group@coordinator``.

    When that is too long, the group is shortened and a hash of the full pair keeps names apart.
    """
    name = f"{advert.group}@{advert.coordinator}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{advert.group[:30]}~{digest}@{advert.coordinator[:23]}"


def compatible(version: int, other: int) -> bool:
    """True if a node speaking ``version`` can join a group speaking ``other`` (exact match today)."""
    return version == other


def _total(a: GroupAdvert) -> tuple[object, ...]:
    """Every field, so that ties between otherwise equal adverts still break the same way everywhere."""
    return (a.site, a.group, a.coordinator, a.epoch, a.version, a.members, a.max_members, a.capacity,
            a.key_fingerprint, a.hosts, a.port, -1 if a.ws_port is None else a.ws_port)  # fmt: skip


def _rank(a: GroupAdvert) -> tuple[object, ...]:
    """Election order, smallest wins: more members, then lower epoch, then lowest coordinator id."""
    return (-a.members, a.epoch, a.coordinator, _total(a))


def elect(candidates: Iterable[GroupAdvert]) -> GroupAdvert:
    """The one coordinator that stays among rival coordinators of the same (site, group)."""
    pool = list(candidates)
    if not pool:
        raise LocalError("elect() needs at least one candidate")
    return min(pool, key=_rank)


def should_yield(me: GroupAdvert, others: Iterable[GroupAdvert]) -> bool:
    """True if ``me`` must step down because a rival coordinator of the same group outranks it."""
    rivals = [o for o in others if o.key == me.key and o.coordinator != me.coordinator]
    return bool(rivals) and elect([me, *rivals]) is not me


def _winners(adverts: Iterable[GroupAdvert]) -> list[GroupAdvert]:
    """One advert per (site, group): the elected coordinator's."""
    by_key: dict[tuple[str, str], list[GroupAdvert]] = {}
    for a in adverts:
        by_key.setdefault(a.key, []).append(a)
    return [elect(v) for v in by_key.values()]


def choose_group(
    adverts: Iterable[GroupAdvert],
    *,
    site: str,
    version: int,
    exclude: Collection[str] = (),
    pins: Mapping[tuple[str, str], bytes] | None = None,
    trusted: Collection[bytes] = (),
) -> GroupAdvert | None:
    """The group a node should join, or None if no compatible group has room.

    ``exclude`` holds group names or coordinator ids to skip (e.g. a group that just refused us).
    ``pins`` maps (site, group) to the coordinator key this node pinned at its first join: another key
    announcing that group is an impostor and never considered. ``trusted`` (the site's settings), when
    not empty, is the only set of coordinator keys a node joins at all.
    Order: own site first, then fewest members, then group name, then coordinator id.
    """
    pinned = pins or {}

    def acceptable(a: GroupAdvert) -> bool:
        if trusted and a.public_key not in trusted:
            return False
        pin = pinned.get(a.key)
        return pin is None or pin == a.public_key

    pool = [
        a
        for a in _winners(a for a in adverts if compatible(version, a.version) and acceptable(a))
        if a.has_room and a.group not in exclude and a.coordinator not in exclude
    ]
    if not pool:
        return None
    return min(pool, key=lambda a: (a.site != site, a.members, a.group, a.coordinator, _total(a)))


def next_group_name(existing: Collection[str], base: str = "g") -> str:
    """The first free name of ``base``, ``base-2``, ``base-3`` … (a trailing ``-N`` of base is dropped)."""
    m = _SUFFIX.match(base)
    root = m.group(1) if m and m.group(1) else base
    root = root[:57]
    if not valid_segment(root):
        raise LocalError(f"group base name {base!r} is not a valid topic segment")
    if root not in existing:
        return root
    n = 2
    while f"{root}-{n}" in existing:
        n += 1
    return f"{root}-{n}"


@dataclass(frozen=True, slots=True)
class FullGroupPlan:
    """What a full group does with a node that asks to join."""

    redirect_to: GroupAdvert | None = None  # another group with room at the same protocol version
    founder: str | None = None  # the member that starts a new group when none has room
    new_group: str | None = None  # the name that new group takes


def plan_for_full_group(
    me: GroupAdvert, adverts: Iterable[GroupAdvert], *, capable_members: Sequence[str] = ()
) -> FullGroupPlan | None:
    """None if ``me`` has room; else where to send new members, or who founds a second group.

    Redirect: the group :func:`choose_group` picks (same site preferred) excluding ``me``'s group.
    Otherwise the lowest id among ``capable_members`` (never the coordinator) founds
    ``next_group_name`` of the group's name among the group names seen at the site.
    """
    if me.has_room:
        return None
    pool = list(adverts)
    target = choose_group(pool, site=me.site, version=me.version, exclude=(me.group,))
    if target is not None:
        return FullGroupPlan(redirect_to=target)
    founders = sorted(m for m in capable_members if m != me.coordinator)
    if not founders:
        return FullGroupPlan()
    existing = {a.group for a in pool if a.site == me.site} | {me.group}
    return FullGroupPlan(founder=founders[0], new_group=next_group_name(existing, base=me.group))


def _merge_rank(a: GroupAdvert) -> tuple[object, ...]:
    return (-a.members, a.group, a.coordinator, _total(a))


def should_merge(
    my_advert: GroupAdvert, adverts: Iterable[GroupAdvert], min_members: int = MIN_MEMBERS
) -> GroupAdvert | None:
    """The group a small group (< ``min_members``) should merge into, or None.

    Only a group of the same site and protocol version that has room for all our members, and that
    outranks us (more members, then lower group name, then lower coordinator id): so two small groups
    never merge into each other. Among those, the largest wins, then by name. A coordinator that must
    yield to a rival of its own group (:func:`should_yield`) yields first and merges nothing.
    """
    me = my_advert
    pool = list(adverts)
    if me.members >= min_members or should_yield(me, pool):
        return None
    pool = [
        a
        for a in _winners(a for a in pool if a.site == me.site and compatible(me.version, a.version))
        if a.group != me.group
        and a.members + me.members <= a.max_members
        and _merge_rank(a) < _merge_rank(me)
    ]
    if not pool:
        return None
    return min(pool, key=_merge_rank)
