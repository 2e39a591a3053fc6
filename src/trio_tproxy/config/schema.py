"""The configuration file, as frozen attrs classes (the contract is ../SPEC.md).

Structured by the one converter in :mod:`.convert`; cross-field checks live in
:mod:`.checks`. Defaults follow v2ray where the contract is silent
(reference/v2ray-semantics.md): e.g. policy timeouts 300 s idle / 1 s uplink-only /
1 s downlink-only, blackhole response ``none``, routing ``as_is``.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NewType

import attrs

from .values import Duration, HostPort, PortRanges

# Strings whose syntax is checked by a structure hook (see convert.py).
DomainEntry = NewType("DomainEntry", str)  # full: domain: keyword: regexp: geosite: or substring
IpEntry = NewType("IpEntry", str)  # CIDR, IP, geoip:CC, geoip:!CC, geoip:private
IpAddressText = NewType("IpAddressText", str)  # a single IP literal
Tag = NewType("Tag", str)  # non-empty identifier of an inbound/outbound
Port = NewType("Port", int)  # 1-65535
Mark = NewType("Mark", int)  # a 32-bit firewall mark, 0 = none

Network = Literal["tcp", "udp"]
Protocol = Literal["http", "tls", "quic", "bittorrent", "dns"]
LogLevel = Literal["debug", "info", "warning", "error"]


@attrs.frozen
class LogConfig:
    level: LogLevel = "info"
    access: bool = True


@attrs.frozen
class GeodataConfig:
    geoip: str = "geodata/country.mmdb"
    rules_dir: str = "rules"
    geosite_dat: str = ""  # v2ray geosite.dat: geosite:NAME from it instead of rules_dir
    geoip_dat: str = ""  # v2ray geoip.dat: geoip:CC from it instead of the mmdb


@attrs.frozen
class SniffingConfig:
    enabled: bool = False
    dest_override: tuple[Literal["http", "tls", "quic"], ...] = ("http", "tls", "quic")
    route_only: bool = False
    timeout: Duration = Duration(0.3)
    exclude_domains: tuple[DomainEntry, ...] = ()


@attrs.frozen
class TproxyInbound:
    TYPE: ClassVar[str] = "tproxy"
    tag: Tag
    port: Port
    listen: IpAddressText = IpAddressText("::")
    network: tuple[Network, ...] = ("tcp", "udp")
    mark: Mark = Mark(0)
    sniffing: SniffingConfig = SniffingConfig()


@attrs.frozen
class RedirectInbound:
    TYPE: ClassVar[str] = "redirect"
    tag: Tag
    port: Port
    listen: IpAddressText = IpAddressText("::")
    network: tuple[Literal["tcp"], ...] = ("tcp",)
    mark: Mark = Mark(0)
    sniffing: SniffingConfig = SniffingConfig()


Inbound = TproxyInbound | RedirectInbound
INBOUND_TYPES: tuple[type[Inbound], ...] = (TproxyInbound, RedirectInbound)

DomainStrategyOut = Literal["as_is", "use_ip", "use_ipv4", "use_ipv6"]


@attrs.frozen
class DirectOutbound:
    TYPE: ClassVar[str] = "direct"
    tag: Tag
    mark: Mark = Mark(0)
    domain_strategy: DomainStrategyOut = "as_is"


@attrs.frozen
class SocksOutbound:
    TYPE: ClassVar[str] = "socks"
    tag: Tag
    server: HostPort
    username: str | None = None
    password: str | None = None
    mark: Mark = Mark(0)


@attrs.frozen
class HttpOutbound:
    TYPE: ClassVar[str] = "http"
    tag: Tag
    server: HostPort
    username: str | None = None
    password: str | None = None
    mark: Mark = Mark(0)


@attrs.frozen
class BlockOutbound:
    TYPE: ClassVar[str] = "block"
    tag: Tag
    response: Literal["none", "http"] = "none"


@attrs.frozen
class DnsOutbound:
    TYPE: ClassVar[str] = "dns"
    tag: Tag
    mark: Mark = Mark(0)


ShadowsocksMethod = Literal[
    "aes-128-gcm",
    "aes-256-gcm",
    "chacha20-ietf-poly1305",
    "2022-blake3-aes-128-gcm",
    "2022-blake3-aes-256-gcm",
    "2022-blake3-chacha20-poly1305",
]


@attrs.frozen
class ShadowsocksOutbound:
    TYPE: ClassVar[str] = "shadowsocks"
    tag: Tag
    server: HostPort
    method: ShadowsocksMethod
    password: str  # 2022-*: base64 of exactly the method's key length; otherwise any text
    network: tuple[Network, ...] = ("tcp", "udp")
    mark: Mark = Mark(0)


@attrs.frozen
class TrojanOutbound:
    TYPE: ClassVar[str] = "trojan"
    tag: Tag
    server: HostPort
    password: str
    sni: str | None = None  # default: the server's host name (none when it is an IP)
    alpn: tuple[str, ...] = ("http/1.1",)
    insecure: bool = False  # no certificate verification (a warning at start)
    ca: str = ""  # PEM file trusted in addition to the system store
    network: tuple[Network, ...] = ("tcp", "udp")
    mark: Mark = Mark(0)


DEFAULT_PROBE_URL = "http://cp.cloudflare.com/generate_204"


@attrs.frozen
class _GroupFields:
    tag: Tag
    outbounds: tuple[Tag, ...]  # members: other outbounds (groups allowed, no cycle)
    url: str = DEFAULT_PROBE_URL  # probe: HTTP GET through each member, 2xx/3xx = healthy
    interval: Duration = Duration(180.0)
    timeout: Duration = Duration(5.0)


@attrs.frozen
class SelectorOutbound(_GroupFields):
    TYPE: ClassVar[str] = "selector"


@attrs.frozen
class UrltestOutbound(_GroupFields):
    TYPE: ClassVar[str] = "urltest"
    tolerance: Duration = Duration(0.05)  # switch only when faster by more than this


@attrs.frozen
class FallbackOutbound(_GroupFields):
    TYPE: ClassVar[str] = "fallback"


GroupOutbound = SelectorOutbound | UrltestOutbound | FallbackOutbound
GROUP_TYPES: tuple[type[GroupOutbound], ...] = (
    SelectorOutbound,
    UrltestOutbound,
    FallbackOutbound,
)

Outbound = (
    DirectOutbound
    | SocksOutbound
    | HttpOutbound
    | BlockOutbound
    | DnsOutbound
    | ShadowsocksOutbound
    | TrojanOutbound
    | SelectorOutbound
    | UrltestOutbound
    | FallbackOutbound
)
OUTBOUND_TYPES: tuple[type[Outbound], ...] = (
    DirectOutbound,
    SocksOutbound,
    HttpOutbound,
    BlockOutbound,
    DnsOutbound,
    ShadowsocksOutbound,
    TrojanOutbound,
    SelectorOutbound,
    UrltestOutbound,
    FallbackOutbound,
)


@attrs.frozen
class RuleConfig:
    """One routing rule: present fields AND together, entries of one field OR."""

    outbound: Tag
    domain: tuple[DomainEntry, ...] = ()
    ip: tuple[IpEntry, ...] = ()
    port: PortRanges | None = None
    source_port: PortRanges | None = None
    network: tuple[Network, ...] = ()
    source: tuple[IpEntry, ...] = ()
    inbound_tag: tuple[Tag, ...] = ()
    protocol: tuple[Protocol, ...] = ()

    CONDITIONS: ClassVar[tuple[str, ...]] = (
        "domain", "ip", "port", "source_port", "network", "source", "inbound_tag", "protocol",
    )  # fmt: skip

    def has_condition(self) -> bool:
        return any(getattr(self, name) for name in self.CONDITIONS)


@attrs.frozen
class RoutingConfig:
    domain_strategy: Literal["as_is", "ip_if_non_match", "ip_on_demand"] = "as_is"
    rules: tuple[RuleConfig, ...] = ()


@attrs.frozen
class DnsServerConfig:
    address: str  # "1.1.1.1", "1.1.1.1:53", "tcp://h[:p]", "tls://h[:p]", "https://h[:p]/path"
    domains: tuple[DomainEntry, ...] = ()
    expect_ips: tuple[IpEntry, ...] = ()
    skip_fallback: bool = False
    outbound: Tag | None = None
    timeout: Duration = Duration(4.0)
    tls_ca: str | None = None  # tls://, https://: PEM file of CAs to trust (default: system's)


@attrs.frozen
class DnsConfig:
    listen: tuple[HostPort, ...] = ()
    query_strategy: Literal["use_ip", "use_ipv4", "use_ipv6"] = "use_ip"
    cache: bool = True
    cache_size: int = 4096
    min_ttl: Duration = Duration(0.0)
    max_ttl: Duration = Duration(86400.0)
    reverse_mapping: bool = True
    disable_fallback: bool = False
    tag: Tag = Tag("dns")  # the inbound tag DNS-module queries carry in routing
    hosts: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    servers: tuple[DnsServerConfig, ...] = ()


@attrs.frozen
class FirewallConfig:
    mode: Literal["gateway", "local"] = "gateway"
    lan_interfaces: tuple[str, ...] = ()
    fwmark: int = 1
    route_table: int = 100
    bypass: tuple[IpEntry, ...] = (IpEntry("geoip:private"),)
    auto: bool = False
    fail_closed: bool = False
    table: str = "trio_tproxy"
    priority: int = -150
    skip_users: tuple[str, ...] = ()  # mode = "local": these users' traffic is not diverted
    ipv6: bool = True


@attrs.frozen
class PolicyConfig:
    """Timeouts and limits (v2ray's ``policy`` plus the limits a gateway needs)."""

    handshake: Duration = Duration(60.0)  # outbound connect + proxy negotiation
    conn_idle: Duration = Duration(300.0)
    uplink_only: Duration = Duration(1.0)  # after the server closed, client->server may go on
    downlink_only: Duration = Duration(1.0)  # after the client closed, server->client may go on
    grace: Duration = Duration(5.0)  # how long flows may drain on SIGTERM
    buffer_size: int = 65536
    max_connections: int = 4096
    udp_idle: Duration = Duration(120.0)
    max_udp_sessions: int = 4096
    max_reply_sockets: int = 1024  # transparent sockets answering UDP clients, LRU-reused


WorkerCount = int | Literal["auto"]


@attrs.frozen
class ProcessConfig:
    # N worker processes under one supervisor sharing every listener (SO_REUSEPORT);
    # "auto" = one per core; 1 = a single process, no supervisor.
    workers: WorkerCount = 1


@attrs.frozen
class ApiConfig:
    """The controller API (Clash/mihomo-compatible) and /metrics; absent = off."""

    listen: HostPort
    secret: str = ""  # Bearer token (WebSockets: ?token=); required unless listen is loopback
    ui_dir: str = ""  # a dashboard's static files served at /ui/


@attrs.frozen
class Config:
    inbounds: tuple[Inbound, ...]
    outbounds: tuple[Outbound, ...]
    log: LogConfig = LogConfig()
    geodata: GeodataConfig = GeodataConfig()
    routing: RoutingConfig = RoutingConfig()
    dns: DnsConfig = DnsConfig()
    firewall: FirewallConfig = FirewallConfig()
    policy: PolicyConfig = PolicyConfig()
    process: ProcessConfig = ProcessConfig()
    api: ApiConfig | None = None

    def outbound(self, tag: str) -> Outbound:
        for ob in self.outbounds:
            if ob.tag == tag:
                return ob
        raise KeyError(tag)
