"""The one exception hierarchy of prsm-edge.

Every error we raise derives from :class:`PrsmEdgeError`. Errors caused by a peer's bytes derive from
:class:`RemoteError`; errors in how we were called or configured derive from :class:`LocalError`.
Messages say what was wrong and, where a person must act, what to do.
"""

from __future__ import annotations

import enum


class PrsmEdgeError(Exception):
    """Root of every error raised by prsm-edge."""


class LocalError(PrsmEdgeError):
    """Our side is at fault: bad arguments, configuration or environment."""


class RemoteError(PrsmEdgeError):
    """A peer sent something we refuse."""


class ConfigError(LocalError):
    """The owner's settings or a configuration file is invalid."""


class IdentityError(LocalError):
    """The node's key is missing, unreadable or unsafe to use."""


class DetectionError(LocalError):
    """Resource detection failed in a way that is not simply 'absent'."""


class BrokerError(LocalError):
    """An MQTT broker could not be started, reached or configured."""


class StorageError(LocalError):
    """A local database or file could not be read or written."""


class TopicError(RemoteError):
    """A topic does not belong to the prsm topic tree."""


class Reason(enum.StrEnum):
    """Why a message from the network was rejected; used as a counter label."""

    SIZE = "size"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    STALE = "stale"
    WRONG_TOPIC_OWNER = "wrong_topic_owner"
    UNSUPPORTED = "unsupported"
    IMPLAUSIBLE = "implausible"
    NOT_MEMBER = "not_member"
    GROUP_FULL = "group_full"
    NOT_ADMITTED = "not_admitted"  # the join policy (token, approval) has not admitted this node


class RejectedMessage(RemoteError):
    """A message from the network was refused; ``reason`` says which check failed."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
