"""Cross-field checks that run after structuring, reported in the same ``@ $.path`` form.

These are the mistakes a schema alone cannot see: a rule pointing at an outbound that
does not exist, two listeners on one port, a rule with no condition (which v2ray rejects
with "this rule has no effective fields"), half of a username/password pair.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from .errors import BadValue, ConfigError
from .schema import (
    GROUP_TYPES,
    Config,
    DnsConfig,
    HttpOutbound,
    PolicyConfig,
    ShadowsocksOutbound,
    SocksOutbound,
    TrojanOutbound,
)
from .values import BAD_GEOIP, GEOIP_CODE, HostPort, check_domain_entry, parse_ip

MAX_MARK = 0xFFFFFFFF
# Tables 253 (default), 254 (main) and 255 (local) belong to the kernel; 0 is "unspecified".
RESERVED_ROUTE_TABLES = {0, 253, 254, 255}
_IFNAME = re.compile(r"[A-Za-z0-9_.@:+-]{1,15}\*?")
DNS_SCHEMES = {"tcp": 53, "tls": 853, "https": 443, "udp": 53}


def check_config(cfg: Config) -> list[ConfigError]:
    return [
        *_check_inbounds(cfg),
        *_check_outbounds(cfg),
        *_check_groups(cfg),
        *_check_rules(cfg),
        *_check_dns(cfg.dns, {ob.tag for ob in cfg.outbounds}),
        *_check_firewall(cfg),
        *_check_policy(cfg.policy),
        *_check_geoip_names(cfg),
        *_check_api(cfg),
    ]


def _duplicates(values: list[str]) -> set[str]:
    return {v for v, n in Counter(values).items() if n > 1}


def _check_inbounds(cfg: Config) -> Iterator[ConfigError]:
    if not cfg.inbounds:
        yield ConfigError("at least one inbound is required", "$.inbounds")
    dup = _duplicates([ib.tag for ib in cfg.inbounds])
    seen: dict[tuple[int, str], int] = {}
    for i, ib in enumerate(cfg.inbounds):
        path = f"$.inbounds[{i}]"
        if ib.tag in dup:
            yield ConfigError(f"duplicate inbound tag {ib.tag!r}", f"{path}.tag")
        if not ib.network:
            yield ConfigError("network must name tcp and/or udp", f"{path}.network")
        # Both "::" and "0.0.0.0" listeners cover every address: any two collide.
        for net in ib.network:
            other = seen.setdefault((ib.port, net), i)
            if other != i:
                yield ConfigError(
                    f"{net} port {ib.port} is already used by $.inbounds[{other}]", f"{path}.port"
                )


def _check_outbounds(cfg: Config) -> Iterator[ConfigError]:
    if not cfg.outbounds:
        yield ConfigError("at least one outbound is required", "$.outbounds")
    dup = _duplicates([ob.tag for ob in cfg.outbounds])
    for i, ob in enumerate(cfg.outbounds):
        path = f"$.outbounds[{i}]"
        if ob.tag in dup:
            yield ConfigError(f"duplicate outbound tag {ob.tag!r}", f"{path}.tag")
        if isinstance(ob, SocksOutbound | HttpOutbound) and (ob.username is None) != (
            ob.password is None
        ):
            yield ConfigError("username and password go together", path)
        yield from _check_credentials(ob, path)
        if isinstance(ob, ShadowsocksOutbound):
            problem = shadowsocks_key_problem(ob.method, ob.password)
            if problem:
                yield ConfigError(problem, f"{path}.password")
        if isinstance(ob, TrojanOutbound) and not ob.password:
            yield ConfigError("a Trojan password cannot be empty", f"{path}.password")
        if isinstance(ob, ShadowsocksOutbound | TrojanOutbound) and not ob.network:
            yield ConfigError("network must name tcp and/or udp", f"{path}.network")


# Shadowsocks 2022 keys are exactly the cipher's key: 16 bytes for AES-128, else 32.
SHADOWSOCKS_2022_KEY_LENGTH = {
    "2022-blake3-aes-128-gcm": 16,
    "2022-blake3-aes-256-gcm": 32,
    "2022-blake3-chacha20-poly1305": 32,
}


def shadowsocks_key_problem(method: str, password: str) -> str | None:
    """Why ``password`` cannot be a ``method`` key (SIP022: base64 of the exact key)."""
    key_len = SHADOWSOCKS_2022_KEY_LENGTH.get(method)
    if key_len is None:
        return None if password else "a Shadowsocks password cannot be empty"
    try:
        key = base64.b64decode(password, validate=True)
    except (binascii.Error, ValueError):
        return (f"{method} needs a base64 key of {key_len} bytes "
                f"(e.g. openssl rand -base64 {key_len})")  # fmt: skip
    if len(key) != key_len:
        return (f"{method} needs a base64 key of exactly {key_len} bytes, this one has "
                f"{len(key)} (e.g. openssl rand -base64 {key_len})")  # fmt: skip
    return None


def _check_groups(cfg: Config) -> Iterator[ConfigError]:
    """Members exist, no group reaches itself (directly or through other groups), the
    probe URL is one we can send."""
    tags = {ob.tag for ob in cfg.outbounds}
    graph: dict[str, tuple[str, ...]] = {
        ob.tag: ob.outbounds for ob in cfg.outbounds if isinstance(ob, GROUP_TYPES)
    }
    for i, ob in enumerate(cfg.outbounds):
        if not isinstance(ob, GROUP_TYPES):
            continue
        path = f"$.outbounds[{i}]"
        if not ob.outbounds:
            yield ConfigError("a group needs at least one member", f"{path}.outbounds")
        for j, member in enumerate(ob.outbounds):
            if member not in tags:
                yield ConfigError(f"unknown outbound tag {member!r}", f"{path}.outbounds[{j}]")
        cycle = _group_cycle(ob.tag, graph)
        if cycle is not None:
            yield ConfigError(f"group {ob.tag!r} contains itself: {' -> '.join(cycle)}",
                              f"{path}.outbounds")  # fmt: skip
        problem = probe_url_problem(ob.url)
        if problem is not None:
            yield ConfigError(problem, f"{path}.url")
        for key in ("interval", "timeout"):
            if getattr(ob, key).seconds <= 0:
                yield ConfigError(f"{key} must be positive", f"{path}.{key}")


def _group_cycle(tag: str, graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A path of group memberships from ``tag`` back to itself, or None."""
    stack: list[list[str]] = [[tag]]
    seen: set[str] = set()
    while stack:
        path = stack.pop()
        for member in graph.get(path[-1], ()):
            if member == tag:
                return [*path, tag]
            if member not in seen:
                seen.add(member)
                stack.append([*path, member])
    return None


def probe_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"bad probe url {url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"probe url must start with http:// or https://: {url!r}"
    if not parts.hostname:
        return f"probe url has no host: {url!r}"
    return None


def credentials_problems(kind: str, username: str, password: str) -> list[tuple[str, str]]:
    """Why a ``kind`` ("socks", "http") proxy cannot send these credentials: (field,
    reason) each. RFC 1929 gives each SOCKS5 field one length octet; RFC 7617 forbids ':'
    in an HTTP Basic user. The importers check with it too."""
    problems = []
    if kind == "socks":
        for key, value in (("username", username), ("password", password)):
            if not 1 <= len(value.encode()) <= 255:
                problems.append((key, f"SOCKS5 {key} must be 1-255 bytes (RFC 1929)"))
    if kind == "http" and ":" in username:
        problems.append(("username", "an HTTP proxy username cannot contain ':'"))
    return problems


def _check_credentials(ob: object, path: str) -> Iterator[ConfigError]:
    if isinstance(ob, SocksOutbound | HttpOutbound) and ob.username is not None \
            and ob.password is not None:  # fmt: skip
        kind = "socks" if isinstance(ob, SocksOutbound) else "http"
        for key, why in credentials_problems(kind, ob.username, ob.password):
            yield ConfigError(why, f"{path}.{key}")


def _check_rules(cfg: Config) -> Iterator[ConfigError]:
    outbound_tags = {ob.tag for ob in cfg.outbounds}
    inbound_tags = {ib.tag for ib in cfg.inbounds} | {cfg.dns.tag}
    for i, rule in enumerate(cfg.routing.rules):
        path = f"$.routing.rules[{i}]"
        if not rule.has_condition():
            yield ConfigError("rule has no condition (it would match everything)", path)
        if rule.outbound not in outbound_tags:
            yield ConfigError(f"unknown outbound tag {rule.outbound!r}", f"{path}.outbound")
        for j, tag in enumerate(rule.inbound_tag):
            if tag not in inbound_tags:
                yield ConfigError(f"unknown inbound tag {tag!r}", f"{path}.inbound_tag[{j}]")


def parse_dns_address(address: str) -> tuple[str, HostPort, str]:
    """``(scheme, host:port, path)`` of a DNS server address; raises BadValue."""
    if "://" not in address:
        return "udp", HostPort.parse(address, default_port=53), ""
    parts = urlsplit(address)
    if parts.scheme not in DNS_SCHEMES:
        raise BadValue(
            f"unknown DNS server scheme {parts.scheme!r}: expected an IP, tcp://, tls:// "
            "or https://"
        )
    try:
        port = parts.port or DNS_SCHEMES[parts.scheme]
    except ValueError:
        raise BadValue(f"bad port in DNS server address {address!r}") from None
    if not parts.hostname:
        raise BadValue(f"no host in DNS server address {address!r}")
    if parts.scheme != "https" and parts.path not in ("", "/"):
        raise BadValue(f"a path only makes sense for https:// DNS servers: {address!r}")
    if parts.scheme in {"udp", "tcp"}:
        parse_ip(parts.hostname)  # a plain DNS server named by host name cannot bootstrap
    return parts.scheme, HostPort(parts.hostname, port), parts.path or "/dns-query"


def _check_dns(dns: DnsConfig, outbound_tags: set[str]) -> Iterator[ConfigError]:
    for i, server in enumerate(dns.servers):
        path = f"$.dns.servers[{i}]"
        try:
            scheme = parse_dns_address(server.address)[0]
        except BadValue as exc:
            scheme = None
            yield ConfigError(str(exc), f"{path}.address")
        if server.tls_ca is not None and scheme in ("udp", "tcp"):
            yield ConfigError("tls_ca is for tls:// and https:// servers", f"{path}.tls_ca")
        if server.outbound is not None and server.outbound not in outbound_tags:
            yield ConfigError(f"unknown outbound tag {server.outbound!r}", f"{path}.outbound")
        if server.timeout.seconds <= 0:
            yield ConfigError("timeout must be positive", f"{path}.timeout")
    for key, values in dns.hosts.items():
        path = f"$.dns.hosts[{key!r}]"
        try:
            check_domain_entry(key)
        except BadValue as exc:
            yield ConfigError(str(exc), path)
        if not values:
            yield ConfigError("a hosts entry needs at least one address or name", path)
        for value in values:
            if not _is_ip(value) and not re.fullmatch(r"[A-Za-z0-9.-]+", value):
                yield ConfigError(f"{value!r} is neither an IP address nor a host name", path)
    if dns.cache_size < 0:
        yield ConfigError("cache_size must not be negative", "$.dns.cache_size")
    if dns.min_ttl > dns.max_ttl:
        yield ConfigError("min_ttl is larger than max_ttl", "$.dns.min_ttl")


def _is_ip(value: str) -> bool:
    try:
        parse_ip(value)
    except BadValue:
        return False
    return True


def _check_firewall(cfg: Config) -> Iterator[ConfigError]:
    fw = cfg.firewall
    if not 1 <= fw.fwmark <= MAX_MARK:
        yield ConfigError(f"fwmark {fw.fwmark} out of range 1-{MAX_MARK}", "$.firewall.fwmark")
    proxy_marks = {getattr(ob, "mark", 0) for ob in cfg.outbounds} - {0}
    if fw.fwmark in proxy_marks:
        yield ConfigError(
            f"fwmark {fw.fwmark} equals an outbound mark: the proxy's own traffic would be "
            "diverted back into it",
            "$.firewall.fwmark",
        )
    if fw.route_table in RESERVED_ROUTE_TABLES or not 1 <= fw.route_table <= MAX_MARK:
        yield ConfigError(
            f"route_table {fw.route_table} is reserved or out of range (use e.g. 100)",
            "$.firewall.route_table",
        )
    for i, name in enumerate(fw.lan_interfaces):
        if not _IFNAME.fullmatch(name):
            yield ConfigError(f"bad interface name {name!r}", f"$.firewall.lan_interfaces[{i}]")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", fw.table):
        yield ConfigError(f"bad nftables table name {fw.table!r}", "$.firewall.table")


def _check_geoip_names(cfg: Config) -> Iterator[ConfigError]:
    """Without a geoip.dat, ``geoip:`` names a MaxMind DB country: two letters."""
    if cfg.geodata.geoip_dat:
        return
    fields: list[tuple[str, Sequence[str]]] = [("$.firewall.bypass", cfg.firewall.bypass)]
    for i, rule in enumerate(cfg.routing.rules):
        fields += [
            (f"$.routing.rules[{i}].ip", rule.ip),
            (f"$.routing.rules[{i}].source", rule.source),
        ]
    fields += [
        (f"$.dns.servers[{i}].expect_ips", s.expect_ips) for i, s in enumerate(cfg.dns.servers)
    ]
    for path, entries in fields:
        for j, entry in enumerate(entries):
            kind, _, code = entry.partition(":")
            if kind.lower() == "geoip" and not GEOIP_CODE.fullmatch(code.removeprefix("!")):
                message = BAD_GEOIP.format(entry) + " (other names need geodata.geoip_dat)"
                yield ConfigError(message, f"{path}[{j}]")


def _check_policy(policy: PolicyConfig) -> Iterator[ConfigError]:
    for name in ("handshake", "conn_idle", "uplink_only", "downlink_only", "udp_idle"):
        if getattr(policy, name).seconds <= 0:
            yield ConfigError(f"{name} must be positive", f"$.policy.{name}")
    if policy.buffer_size < 1024:
        yield ConfigError("buffer_size must be at least 1024 bytes", "$.policy.buffer_size")
    for name in ("max_connections", "max_udp_sessions", "max_reply_sockets"):
        if getattr(policy, name) < 1:
            yield ConfigError(f"{name} must be at least 1", f"$.policy.{name}")


def _check_api(cfg: Config) -> Iterator[ConfigError]:
    api = cfg.api
    if api is None or api.secret:
        return
    host = api.listen.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if not loopback:
        yield ConfigError(
            f"the controller API listens on {host}, not a loopback address: set a secret "
            "(anyone who reaches it could read and close every flow)",
            "$.api.secret",
        )
