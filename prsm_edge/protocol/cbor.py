"""Bounded, deterministic CBOR (RFC 8949) for untrusted input.

Before a single object is built from network bytes, :func:`check_bounds` walks the encoded item heads
and refuses anything too large, too deep, with too many items, with indefinite lengths (not allowed in
deterministic encoding), with reserved or unassigned heads, or with trailing bytes. Only then does
:func:`loads` hand the bytes to cbor2. Encoding always uses cbor2's canonical mode, which for maps whose
keys are all text or all small integers agrees with RFC 8949 §4.2.1 (core deterministic encoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from prsm_edge.errors import Reason, RejectedMessage

__all__ = ["Limits", "check_bounds", "dumps", "loads", "loads_checked"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one CBOR item may cost to decode."""

    max_bytes: int = 64 * 1024
    max_depth: int = 16
    max_items: int = 4096
    allowed_tags: frozenset[int] = frozenset()


_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def check_bounds(data: bytes, limits: Limits) -> None:
    """Raise :class:`RejectedMessage` unless ``data`` is exactly one well-bounded CBOR item."""
    size = len(data)
    if size > limits.max_bytes:
        raise RejectedMessage(Reason.SIZE, f"{size} bytes exceeds the limit of {limits.max_bytes}")
    if size == 0:
        raise RejectedMessage(Reason.MALFORMED, "empty input")
    pos = 0
    items = 0
    # Each stack entry is the number of items still expected at that nesting level.
    stack = [1]
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        if pos >= size:
            raise RejectedMessage(Reason.MALFORMED, "truncated CBOR item")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info in _ARG_BYTES:
            n = _ARG_BYTES[info]
            if pos + n > size:
                raise RejectedMessage(Reason.MALFORMED, "truncated CBOR head")
            arg = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        elif info == 31:
            raise RejectedMessage(Reason.MALFORMED, "indefinite-length item (not deterministic CBOR)")
        else:
            raise RejectedMessage(Reason.MALFORMED, f"reserved additional information {info}")
        items += 1
        if items > limits.max_items:
            raise RejectedMessage(Reason.SIZE, f"more than {limits.max_items} CBOR items")
        if major in (2, 3):
            if arg > size - pos:
                raise RejectedMessage(Reason.MALFORMED, "string runs past the end of the input")
            pos += arg
        elif major in (4, 5):
            count = arg * 2 if major == 5 else arg
            # Every item takes at least one byte: a count larger than what is left is a lie.
            if count > size - pos:
                raise RejectedMessage(Reason.MALFORMED, "container longer than the input")
            if len(stack) > limits.max_depth:
                raise RejectedMessage(Reason.SIZE, f"nesting deeper than {limits.max_depth}")
            stack.append(count)
        elif major == 6:
            if arg not in limits.allowed_tags:
                raise RejectedMessage(Reason.MALFORMED, f"CBOR tag {arg} is not allowed here")
            if len(stack) > limits.max_depth:
                raise RejectedMessage(Reason.SIZE, f"nesting deeper than {limits.max_depth}")
            stack.append(1)
        elif major == 7:
            # false, true, null and the three float widths; nothing else is used by this protocol.
            if info < 24 and info not in (20, 21, 22):
                raise RejectedMessage(Reason.MALFORMED, f"unassigned simple value {info}")
            if info == 24:
                raise RejectedMessage(Reason.MALFORMED, "one-byte simple values are not used")
    if pos != size:
        raise RejectedMessage(Reason.MALFORMED, f"{size - pos} trailing bytes after the CBOR item")


def loads(data: bytes, limits: Limits) -> Any:
    """Decode one untrusted CBOR item after checking its bounds; every failure is a rejection."""
    check_bounds(data, limits)
    return loads_checked(data)


def loads_checked(data: bytes) -> Any:
    """Decode bytes that already passed :func:`check_bounds`; every failure is a rejection."""
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise RejectedMessage(Reason.MALFORMED, f"undecodable CBOR: {exc}") from None


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as deterministic CBOR."""
    return cbor2.dumps(obj, canonical=True)
