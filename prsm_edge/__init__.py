"""prsm-edge: an edge agent for a verified, federated resource network over MQTT."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
