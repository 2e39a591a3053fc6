"""trio-tproxy: a transparent proxy for Linux gateways, on Trio."""

from __future__ import annotations

__version__ = "0.1.0"
