"""Configuration entries -> matchers and rules, once per (re)load.

Errors are collected over the whole configuration and raised together as
:class:`~trio_tproxy.config.ConfigErrors` with the path of the entry at fault, e.g.
``no list 'nosuch' (no file rules/nosuch) @ $.routing.rules[2].domain[0]``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

from ..config.errors import BadValue, ConfigError, ConfigErrors
from ..config.schema import Config, RuleConfig
from ..config.values import parse_cidr
from ..geo import (
    EXT_DOMAIN_PREFIXES,
    GeoData,
    GeoipError,
    GeositeError,
    GeositeRule,
    Ranges,
    ip_list_name,
    split_ext,
)
from .conditions import (
    Condition,
    DomainCondition,
    InboundTagCondition,
    IpCondition,
    NetworkCondition,
    PortCondition,
    ProtocolCondition,
    SourceCondition,
)
from .domain import DomainIndex, DomainIndexBuilder, DomainMatcher
from .engine import Router, Rule
from .facts import normalize_domain
from .ipset import IpSet

if TYPE_CHECKING:
    from ..router_cache import RouterCache

__all__ = ["build_domain_matcher", "build_ip_set", "compile_router", "geoip_codes"]

_NO_ATTRS: frozenset[str] = frozenset()


def _inline(kind: str, value: str) -> GeositeRule:
    return GeositeRule(kind, value, _NO_ATTRS, "", 0)  # type: ignore[arg-type]


def _geosite_rules(spec: str, geo: GeoData, file: str | None = None) -> tuple[GeositeRule, ...]:
    """``NAME@attr@-attr``: the list's rules carrying every attr and no -attr; of list
    NAME of the .dat ``file`` for ``ext:FILE:NAME``."""
    name, *attrs_ = spec.split("@")
    rules = geo.geosite(name) if file is None else geo.ext_sites(file, name)
    with_attrs = {a.lower() for a in attrs_ if not a.startswith("-")}
    without = {a[1:].lower() for a in attrs_ if a.startswith("-")}
    if not attrs_:
        return rules
    return tuple(r for r in rules if with_attrs <= r.attrs and not without & r.attrs)


def _entry_rules(entry: str, geo: GeoData) -> tuple[GeositeRule, ...]:
    """One ``domain`` entry in v2ray syntax; raises BadValue, GeositeError."""
    prefix, sep, value = entry.partition(":")
    kind = prefix.lower() if sep else ""
    if kind == "geosite":
        return _geosite_rules(value, geo)
    if kind in EXT_DOMAIN_PREFIXES:  # ext:FILE:NAME[@attr], FILE in the asset directory
        try:
            file, spec = split_ext(value)
        except ValueError as exc:
            raise BadValue(str(exc)) from None
        return _geosite_rules(spec, geo, file)
    if kind in ("full", "domain"):
        return (_inline(kind, normalize_domain(value)),)
    if kind == "keyword":
        return (_inline("keyword", value.lower()),)
    if kind == "regexp":
        return (_inline("regexp", value),)
    if kind == "dotless":  # v2ray: dotless:S is the regexp ^[^.]*S[^.]*$ (S without dots)
        if "." in value:
            raise BadValue(f"dotless:{value}: the substring must not contain a dot")
        return (_inline("regexp", f"^[^.]*{value}[^.]*$"),)
    if sep:
        raise BadValue(f"unknown domain entry prefix in {entry!r}")
    return (_inline("keyword", entry.lower()),)  # no prefix: substring, as in v2ray


def _add_entries(
    builder: DomainIndexBuilder, group: int, entries: Sequence[str], geo: GeoData, path: str
) -> list[ConfigError]:
    errors: list[ConfigError] = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        try:
            for rule in _entry_rules(entry, geo):
                builder.add(group, rule, entry)
        except GeositeError as exc:
            errors.extend(ConfigError(f"{entry}: {p}", where) for p in exc.problems)
        except (BadValue, re.error, OverflowError, RecursionError) as exc:
            errors.append(ConfigError(f"{entry}: {exc}", where))
    return errors


def build_domain_matcher(
    entries: Sequence[str], geo: GeoData, path: str, cache_size: int = 0
) -> DomainMatcher:
    """A matcher for one list of domain entries (DNS ``domains``, sniffing exclusions).

    ``path`` is the entries' JSON path, e.g. ``$.dns.servers[0].domains``. Raises
    ConfigErrors.
    """
    builder = DomainIndexBuilder()
    group = builder.new_group()
    errors = _add_entries(builder, group, entries, geo, path)
    if errors:
        raise ConfigErrors(errors)
    return DomainMatcher(builder.build(cache_size), group, tuple(entries))


def _ip_entry(entry: str, geo: GeoData) -> IpSet:
    try:
        listed = ip_list_name(entry)
    except ValueError as exc:
        raise BadValue(f"{entry}: {exc}") from None
    if listed is not None:  # geoip:[!]NAME, ext:FILE:[!]TAG
        name, inverse = listed
        v4, v6 = geo.country_ranges(name)
        found = IpSet(v4, v6)
        return found.complement() if inverse else found
    net = parse_cidr(entry)
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d/N: flows are unmapped to IPv4 (facts.py), so is the entry
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return IpSet.from_networks([str(net)])


def _ip_parts(
    entries: Sequence[str], geo: GeoData, path: str
) -> tuple[tuple[tuple[str, IpSet], ...], list[ConfigError]]:
    parts, errors = [], []
    for i, entry in enumerate(entries):
        try:
            parts.append((entry, _ip_entry(entry, geo)))
        except (GeoipError, BadValue) as exc:
            errors.append(ConfigError(str(exc), f"{path}[{i}]"))
    return tuple(parts), errors


def _ip_origins(entries: Sequence[str], geo: GeoData) -> dict[str, str]:
    """The .dat list each list entry reads, for ``match`` (only entries that compiled)."""
    found = {}
    for entry in entries:
        with contextlib.suppress(ValueError, GeoipError):
            if (listed := ip_list_name(entry)) and (origin := geo.ip_origin(listed[0])):
                found[entry] = origin
    return found


def build_ip_set(entries: Sequence[str], geo: GeoData, path: str) -> IpSet:
    """One set for a list of ip entries (DNS ``expect_ips``, firewall bypass); raises
    ConfigErrors."""
    parts, errors = _ip_parts(entries, geo, path)
    if errors:
        raise ConfigErrors(errors)
    return IpSet().union(*(s for _, s in parts))


def geoip_codes(entries: Sequence[str]) -> set[str]:
    """IP lists named by ip entries: country codes and other geoip names (lower case) and
    ``ext:FILE:TAG`` (for :meth:`GeoData.prefetch_countries` and the compile cache)."""
    codes = set()
    for entry in entries:
        with contextlib.suppress(ValueError):  # a bad entry is reported where it is built
            if (listed := ip_list_name(entry)) is not None:
                name = listed[0]
                codes.add(name if name.startswith("ext:") else name.lower())
    return codes


def _rule_conditions(
    rule: RuleConfig, path: str, domains: DomainMatcher | None, geo: GeoData
) -> Iterator[Condition | ConfigError]:
    if rule.network:
        yield NetworkCondition(frozenset(rule.network))
    if rule.port is not None:
        yield PortCondition(rule.port, "port")
    if rule.source_port is not None:
        yield PortCondition(rule.source_port, "source_port")
    if rule.inbound_tag:
        yield InboundTagCondition(tuple(rule.inbound_tag))
    if rule.protocol:
        yield ProtocolCondition(tuple(rule.protocol))
    if rule.source:
        parts, errors = _ip_parts(rule.source, geo, f"{path}.source")
        yield from errors
        origins = _ip_origins(rule.source, geo)
        yield SourceCondition(IpSet().union(*(s for _, s in parts)), parts, origins)
    if domains is not None:
        yield DomainCondition(domains)
    if rule.ip:  # last: under ip_on_demand it is the one that may need a DNS lookup
        parts, errors = _ip_parts(rule.ip, geo, f"{path}.ip")
        yield from errors
        yield IpCondition(IpSet().union(*(s for _, s in parts)), parts, _ip_origins(rule.ip, geo))


DEFAULT_DOMAIN_CACHE = 4096  # domains; ~0.5 MiB. Real traffic repeats names (bench/)


def compile_router(
    cfg: Config,
    geo: GeoData,
    *,
    cache_size: int = DEFAULT_DOMAIN_CACHE,
    cache: RouterCache | None = None,
) -> Router:
    """Compile ``cfg.routing`` once; raises ConfigErrors naming every bad entry.

    ``cache_size`` bounds the LRU of domain -> matching domain conditions inside the
    index (0 = none). It changes no decision, only speed: about 2x on repeating names,
    nothing on all-new names (figures in bench/bench_route.py).

    ``cache``: where to find the domain index and country ranges compiled from the same
    inputs before, and to keep them after a successful compile (see trio_tproxy/router_cache.py).
    """
    rules_cfg = cfg.routing.rules
    codes = {c for r in rules_cfg for c in geoip_codes([*r.ip, *r.source])}
    groups: list[int | None] = []  # each domain rule's group in the shared index
    count = 0
    decisive = 0  # groups whose rule has no other condition: a match decides the flow
    for rule in rules_cfg:
        groups.append(count if rule.domain else None)
        others = [n for n in RuleConfig.CONDITIONS if n != "domain" and getattr(rule, n)]
        if rule.domain and not others:
            decisive |= 1 << count
        count += bool(rule.domain)
    key, newest = None, 0
    cached: object = None
    if cache is not None and (material := _cache_material(cfg, geo, codes, cache_size, decisive)):
        described, newest = material
        key = cache.key(described)
        cached = cache.load(key)
    hit = _usable(cached, count)
    if hit:
        index, countries = cast("tuple[DomainIndex, dict[str, tuple[Ranges, Ranges]]]", cached)
        geo.add_countries(countries)
        domain_errors: list[list[ConfigError]] = [[] for _ in rules_cfg]
    else:
        index, domain_errors = _build_index(rules_cfg, groups, decisive, codes, geo, cache_size)
    errors: list[ConfigError] = []
    rules: list[Rule] = []
    for i, (rule, group) in enumerate(zip(rules_cfg, groups, strict=True)):
        errors += domain_errors[i]
        matcher = None if group is None else DomainMatcher(index, group, tuple(rule.domain))
        conditions: list[Condition] = []
        for item in _rule_conditions(rule, f"$.routing.rules[{i}]", matcher, geo):
            if isinstance(item, ConfigError):
                errors.append(item)
            else:
                conditions.append(item)
        rules.append(Rule(i, rule.outbound, tuple(conditions)))
    if errors:
        raise ConfigErrors(errors)
    if cache is not None and key is not None and not hit:
        cache.store(key, (index, geo.countries(codes)), newest)
    return Router(tuple(rules), cfg.outbounds[0].tag, cfg.routing.domain_strategy, index)


def _build_index(  # noqa: PLR0917 - one caller
    rules_cfg: Sequence[RuleConfig],
    groups: Sequence[int | None],
    decisive: int,
    codes: set[str],
    geo: GeoData,
    cache_size: int,
) -> tuple[DomainIndex, list[list[ConfigError]]]:
    """Every rule's domains in one shared index, and the errors per rule."""
    with contextlib.suppress(GeoipError):  # reported at each entry that needs the database
        geo.prefetch_countries(codes)
    builder = DomainIndexBuilder()
    domain_errors: list[list[ConfigError]] = []
    for i, (rule, group) in enumerate(zip(rules_cfg, groups, strict=True)):
        if group is None:
            domain_errors.append([])
            continue
        made = builder.new_group()
        assert made == group  # numbered as compile_router numbered them
        path = f"$.routing.rules[{i}].domain"
        domain_errors.append(_add_entries(builder, group, rule.domain, geo, path))
    return builder.build(cache_size, decisive), domain_errors


def _cache_material(
    cfg: Config, geo: GeoData, codes: set[str], cache_size: int, decisive: int
) -> tuple[object, int] | None:
    """Everything the cached part of a compile reads (see trio_tproxy/router_cache.py), and the
    newest file time among it; None if that cannot be told (do not cache)."""
    files = geo.stamp([e for r in cfg.routing.rules for e in r.domain], codes)
    if files is None:
        return None
    stamps, newest = files
    rules = [tuple(r.domain) for r in cfg.routing.rules]
    return (rules, decisive, cache_size, sorted(codes), stamps), newest


def _usable(cached: object, group_count: int) -> bool:
    """A cache entry of the expected shape (anything else is recompiled)."""
    return (
        isinstance(cached, tuple)
        and len(cached) == 2
        and isinstance(cached[0], DomainIndex)
        and cached[0].group_count == group_count
        and isinstance(cached[1], dict)
    )
