"""Configuration: schema, converter, loading and checks (pure apart from reading the file)."""

from __future__ import annotations

from .errors import BadValue, ConfigError, ConfigErrors
from .load import load_config, parse_config, parse_config_text
from .schema import (
    BlockOutbound,
    Config,
    DirectOutbound,
    DnsConfig,
    DnsOutbound,
    DnsServerConfig,
    FirewallConfig,
    HttpOutbound,
    Inbound,
    Outbound,
    PolicyConfig,
    RedirectInbound,
    RoutingConfig,
    RuleConfig,
    SniffingConfig,
    SocksOutbound,
    TproxyInbound,
)
from .values import Duration, HostPort, PortRanges

__all__ = [
    "BadValue", "BlockOutbound", "Config", "ConfigError", "ConfigErrors", "DirectOutbound",
    "DnsConfig", "DnsOutbound", "DnsServerConfig", "Duration", "FirewallConfig", "HostPort",
    "HttpOutbound", "Inbound", "Outbound", "PolicyConfig", "PortRanges", "RedirectInbound",
    "RoutingConfig", "RuleConfig", "SniffingConfig", "SocksOutbound", "TproxyInbound",
    "load_config", "parse_config", "parse_config_text",
]  # fmt: skip
