"""Whatever the input, an import either converts or says the input is unreadable: no
other exception, and what it writes is a config the schema and cross-checks accept."""

from __future__ import annotations

import contextlib
import json
import tomllib
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.importers import UnreadableInput, convert_clash, convert_v2ray

from .conftest import repo_geodata

GEODATA = repo_geodata()
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

V2RAY_KEYS = [
    "inbounds", "outbounds", "routing", "dns", "log", "policy", "protocol", "tag", "port",
    "listen", "settings", "streamSettings", "sockopt", "tproxy", "mark", "sniffing", "enabled",
    "destOverride", "routeOnly", "domainsExcluded", "network", "followRedirect", "servers",
    "address", "users", "user", "pass", "method", "password", "domainStrategy", "response",
    "type", "rules", "domain", "ip", "sourcePort", "source", "inboundTag", "outboundTag",
    "balancerTag", "balancers", "selector", "hosts", "queryStrategy", "disableCache",
    "expectIPs", "skipFallback", "domains", "security", "tlsSettings", "serverName", "alpn",
    "levels", "0", "connIdle", "bufferSize", "mux", "proxySettings", "loglevel", "access",
]  # fmt: skip
V2RAY_WORDS = [
    "dokodemo-door", "freedom", "blackhole", "socks", "http", "shadowsocks", "trojan", "dns",
    "vmess", "tproxy", "redirect", "tcp", "udp", "tcp,udp", "tls", "quic", "fakedns", "UseIP",
    "AsIs", "IPOnDemand", "IPIfNonMatch", "geosite:cn", "geoip:cn", "geoip:private",
    "domain:example.com", "regexp:(", "full:", "keyword:x", "10.0.0.1/8", "1.2.3.4", "::1",
    "8.8.8.8", "tcp://1.1.1.1", "https://dns.example/dns-query", "https+local://1.1.1.1",
    "localhost", "aes-128-gcm", "2022-blake3-aes-128-gcm", "field", "53", "1000-2000", "x:y",
    "", "0", "65536", "!geoip:cn", "dns", "bittorrent", "UseIPv4", "none", "warning",
]  # fmt: skip

CLASH_KEYS = [
    "tproxy-port", "redir-port", "proxies", "proxy-groups", "rules", "dns", "hosts", "name",
    "type", "server", "port", "cipher", "password", "udp", "sni", "alpn", "skip-cert-verify",
    "username", "tls", "network", "plugin", "url", "interval", "tolerance", "timeout",
    "nameserver", "fallback", "default-nameserver", "nameserver-policy", "fallback-filter",
    "geoip", "geoip-code", "enable", "listen", "ipv6", "sniffer", "sniff", "skip-domain",
    "routing-mark", "external-controller", "secret", "log-level", "mode", "use",
]  # fmt: skip
CLASH_WORDS = [
    "ss", "trojan", "socks5", "http", "vmess", "select", "url-test", "fallback",
    "load-balance", "aes-256-gcm", "rc4-md5", "DIRECT", "REJECT", "Proxy", "a", "b",
    "DOMAIN,example.com,DIRECT", "DOMAIN-SUFFIX,x.y,Proxy", "GEOIP,CN,DIRECT",
    "GEOIP,LAN,DIRECT,no-resolve", "IP-CIDR,10.0.0.1/8,REJECT", "DST-PORT,80/443,a",
    "SRC-PORT,1-2-3,DIRECT", "NETWORK,UDP,b", "MATCH,Proxy", "MATCH", "RULE-SET,x,DIRECT",
    "DOMAIN-REGEX,(,DIRECT", "GEOSITE,cn,a", "223.5.5.5", "tls://1.1.1.1#Proxy",
    "https://dns.example/dns-query", "dhcp://en0", "+.example.com", "*.lan", "geosite:cn",
    "127.0.0.1:9090", ":9090", "0.0.0.0:53", "", "example.com", "::1", "8.8.8.8#a",
]  # fmt: skip


def documents(keys: list[str], words: list[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.sampled_from(words), st.integers(-5, 70000), st.booleans(), st.none(),
        st.text(max_size=8),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(keys), inner, max_size=6),
        ),
        max_leaves=40,
    )


def v2ray_documents() -> st.SearchStrategy[Any]:
    """Configs shaped like v2ray's: inbounds, outbounds, rules and DNS servers with their
    own keys, values drawn from the vocabulary (and anything at all, now and then)."""
    value = documents(V2RAY_KEYS, V2RAY_WORDS)
    words = st.sampled_from(V2RAY_WORDS)
    number = st.integers(-(2**40), 2**40)
    tags = st.sampled_from(["a", "b", "dns", "direct", ""])
    anything = st.dictionaries(st.sampled_from(V2RAY_KEYS), value, max_size=8)
    sockopt = st.fixed_dictionaries({}, optional={"tproxy": words, "mark": number})
    stream = st.fixed_dictionaries({}, optional={"network": words, "security": words,
                                                 "sockopt": sockopt})  # fmt: skip
    inbound = st.fixed_dictionaries(
        {"protocol": st.sampled_from(["dokodemo-door", "socks"]), "tag": tags, "port": number,
         "settings": st.fixed_dictionaries({"followRedirect": st.booleans()},
                                           optional={"network": words})},
        optional={"listen": words, "streamSettings": stream,
                  "sniffing": st.fixed_dictionaries({}, optional={
                      "enabled": st.booleans(), "destOverride": st.lists(words),
                      "routeOnly": value, "domainsExcluded": st.lists(words)})},
    )  # fmt: skip
    server = st.fixed_dictionaries(
        {"address": words, "port": number},
        optional={"method": words, "password": value,
                  "users": st.lists(st.fixed_dictionaries({"user": words, "pass": words}))},
    )  # fmt: skip
    outbound = st.fixed_dictionaries(
        {"protocol": st.sampled_from(["freedom", "blackhole", "socks", "http", "shadowsocks",
                                      "trojan", "dns", "vmess"]), "tag": tags},
        optional={"settings": st.fixed_dictionaries({}, optional={
                      "servers": st.lists(server, max_size=2), "domainStrategy": words,
                      "response": value}),
                  "streamSettings": stream, "mux": value},
    )  # fmt: skip
    rule = st.fixed_dictionaries(
        {"outboundTag": st.sampled_from(["a", "b", "dns", "direct", "x"])},
        optional={"type": words, "domain": st.lists(words), "ip": st.lists(words),
                  "port": st.one_of(words, number), "network": words,
                  "inboundTag": st.lists(st.sampled_from(["a", "b", "dns", "x"])),
                  "protocol": st.lists(words), "source": st.lists(words), "user": value},
    )  # fmt: skip
    dns_server = st.one_of(words, st.fixed_dictionaries(
        {"address": words},
        optional={"port": number, "domains": st.lists(words), "expectIPs": st.lists(words),
                  "skipFallback": value, "timeoutMs": number},
    ))  # fmt: skip
    return st.fixed_dictionaries({}, optional={
        "inbounds": st.lists(st.one_of(inbound, anything), max_size=3),
        "outbounds": st.lists(st.one_of(outbound, anything), max_size=4),
        "routing": st.fixed_dictionaries({}, optional={
            "rules": st.lists(st.one_of(rule, anything), max_size=5),
            "balancers": st.lists(anything, max_size=2), "domainStrategy": words}),
        "dns": st.fixed_dictionaries({}, optional={
            "servers": st.lists(dns_server, max_size=4), "tag": tags, "hosts": value,
            "queryStrategy": words}),
        "log": anything, "policy": value, "other": value,
    })  # fmt: skip


def clash_documents() -> st.SearchStrategy[Any]:
    value = documents(CLASH_KEYS, CLASH_WORDS)
    words = st.sampled_from(CLASH_WORDS)
    number = st.integers(-(2**40), 2**40)
    names = st.sampled_from(["a", "b", "Proxy", "DIRECT", "REJECT", "c"])
    anything = st.dictionaries(st.sampled_from(CLASH_KEYS), value, max_size=8)
    proxy = st.fixed_dictionaries(
        {"name": names, "type": st.sampled_from(["ss", "trojan", "socks5", "http", "vmess"]),
         "server": words, "port": number},
        optional={"cipher": words, "password": value, "udp": value, "sni": value,
                  "username": value, "tls": value, "network": words},
    )  # fmt: skip
    group = st.fixed_dictionaries(
        {"name": names, "type": st.sampled_from(["select", "url-test", "fallback", "relay"]),
         "proxies": st.lists(names, max_size=4)},
        optional={"url": words, "interval": number, "tolerance": number, "timeout": number},
    )  # fmt: skip
    return st.fixed_dictionaries({}, optional={
        "tproxy-port": value, "redir-port": value,
        "proxies": st.lists(st.one_of(proxy, anything), max_size=4),
        "proxy-groups": st.lists(st.one_of(group, anything), max_size=3),
        "rules": st.lists(st.one_of(words, value), max_size=6), "dns": anything,
        "hosts": st.dictionaries(words, value, max_size=3), "sniffer": anything, "other": value,
    })  # fmt: skip


def _accepts(text: str) -> None:
    try:
        cfg = parse_config_text(text)
    except ConfigErrors as exc:
        raise AssertionError("\n".join(map(str, exc.errors)) + "\n" + text) from None
    groups = {ob.tag: getattr(ob, "outbounds", ()) for ob in cfg.outbounds}
    for tag, direct in groups.items():  # no group reaches itself (as the groups' check wants)
        seen, todo = set(), list(direct)
        while todo:
            member = todo.pop()
            assert member != tag, f"group {tag!r} reaches itself\n{text}"
            if member not in seen:
                seen.add(member)
                todo.extend(groups.get(member, ()))


@SETTINGS
@given(st.one_of(v2ray_documents(), documents(V2RAY_KEYS, V2RAY_WORDS)))
def test_v2ray_structures_convert_to_accepted_configs(doc: Any) -> None:
    check_v2ray(doc)


@SETTINGS
@given(v2ray_documents())
@example({"outbounds": [{"protocol": "http", "tag": "a", "settings": {"servers": [  # found here
    {"address": "dokodemo-door", "port": 1, "users": [{"user": "::1", "pass": "x"}]}]}}]})
def test_v2ray_shaped_configs_convert_to_accepted_configs(doc: Any) -> None:
    check_v2ray(doc)


def check_v2ray(doc: Any) -> None:
    text = json.dumps(doc)
    try:
        result = convert_v2ray(text, name="fuzz.json", geodata=GEODATA)
    except UnreadableInput:
        assert (
            not isinstance(doc, dict)
            or not isinstance(doc.get("inbounds", []), list)
            or not isinstance(doc.get("outbounds", []), list)
        )
        return
    _accepts(result.toml)


@SETTINGS
@given(st.one_of(clash_documents(), documents(CLASH_KEYS, CLASH_WORDS)))
def test_clash_structures_convert_to_accepted_configs(doc: Any) -> None:
    check_clash(doc)


@SETTINGS
@given(clash_documents())
@example({"tproxy-port": "\u00b9"})  # "¹".isdigit() is True, int("¹") raises (found here)
@example({"tproxy-port": "\u0663"})  # an Arabic-Indic 3: int() takes it, no port of ours
def test_clash_shaped_configs_convert_to_accepted_configs(doc: Any) -> None:
    check_clash(doc)


def check_clash(doc: Any) -> None:
    text = yaml.safe_dump(doc)
    try:
        result = convert_clash(text, name="fuzz.yaml", geodata=GEODATA)
    except UnreadableInput:
        assert not isinstance(doc, dict)
        return
    _accepts(result.toml)


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_is_converted_or_unreadable(text: str) -> None:
    for convert in (convert_v2ray, convert_clash):
        try:
            result = convert(text, name="fuzz", geodata=GEODATA)
        except UnreadableInput as exc:
            assert "\n" not in str(exc)
            continue
        tomllib.loads(result.toml)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_decoded_leniently_are_converted_or_unreadable(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    for convert in (convert_v2ray, convert_clash):
        with contextlib.suppress(UnreadableInput):
            tomllib.loads(convert(text, name="fuzz", geodata=GEODATA).toml)


def test_deep_nesting_is_unreadable_not_a_crash() -> None:
    for convert, text in ((convert_v2ray, "[" * 100000), (convert_clash, "[" * 100000)):
        try:
            convert(text, name="deep", geodata=GEODATA)
        except UnreadableInput:
            continue
        raise AssertionError("accepted")
