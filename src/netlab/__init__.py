"""netlab: a LAN in network namespaces for tests, the demo and benchmarks (root only)."""

from __future__ import annotations

from netlab.lab import ClientNode, GatewayNode, Lab, ServerNode
from netlab.namespace import (
    CommandError,
    Netns,
    cleanup_stale,
    list_namespaces,
    scratch_namespace,
)
from netlab.requirements import requirements_met

__all__ = [
    "ClientNode",
    "CommandError",
    "GatewayNode",
    "Lab",
    "Netns",
    "ServerNode",
    "cleanup_stale",
    "list_namespaces",
    "requirements_met",
    "scratch_namespace",
]
