"""Reading what `ip`, `nft` and /proc print: pure, text in, facts out.

Only the parts the doctor compares are parsed; anything else on a line is ignored, so
a newer iproute2 adding a field (``proto static``, ``pref medium``) changes nothing.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterator

import attrs

from ..addr import IPAddress

UNLIMITED = -1
TCP_LISTEN = 0x0A  # include/net/tcp_states.h
UDP_UNCONNECTED = 0x07  # TCP_CLOSE: how /proc/net/udp shows a bound, unconnected socket
_DEFAULT_ROUTES = ("default", "0.0.0.0/0", "::/0")
_TPROXY = re.compile(
    r"meta l4proto (?P<protos>\w+|\{[\w ,]+\}) tproxy (?:ip6? )?to "
    r"(?P<address>\[[0-9a-fA-F:.]*\]|[0-9.]*):(?P<port>\d+)"
)
_REDIRECT = re.compile(r"\bredirect to :(?P<port>\d+)")


@attrs.frozen
class IpRule:
    priority: int
    fwmark: int | None
    mask: int | None
    table: str | None


@attrs.frozen
class Diversion:
    protocol: str  # "tcp" / "udp"
    port: int
    address: str | None  # "tproxy ip to A:P"; None for "tproxy to :P"


@attrs.frozen
class ProcSocket:
    address: IPAddress
    port: int
    state: int
    uid: int
    inode: int


def ip_rules(text: str) -> list[IpRule]:
    """`ip rule show`: ``32765:\\tfrom all fwmark 0x1 lookup 100``."""
    rules = []
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        if not sep or not (head.strip().isascii() and head.strip().isdigit()):
            continue
        words = rest.split()
        fwmark = mask = None
        table = None
        for key, value in itertools.pairwise(words):
            if key == "fwmark":
                mark, _, mask_text = value.partition("/")
                fwmark = _number(mark)
                mask = _number(mask_text) if mask_text else None
            elif key in ("lookup", "table"):
                table = value
        rules.append(IpRule(int(head), fwmark, mask, table))
    return rules


def find_rule(rules: list[IpRule], fwmark: int, table: int) -> IpRule | None:
    """The rule that sends exactly ``fwmark`` to ``table``, if any."""
    for rule in rules:
        if rule.fwmark == fwmark and rule.mask in (None, 0xFFFFFFFF) and rule.table == str(table):
            return rule
    return None


def has_local_default(text: str) -> bool:
    """`ip route show table T` holds ``local default dev lo``."""
    for line in text.splitlines():
        words = line.split()
        default = len(words) >= 2 and words[0] == "local" and words[1] in _DEFAULT_ROUTES
        if default and "dev" in words and words[words.index("dev") + 1 :][:1] == ["lo"]:
            return True
    return False


def diversions(nft_text: str) -> list[Diversion]:
    """Every ``tproxy to`` target of an `nft list table` output."""
    found = []
    for match in _TPROXY.finditer(nft_text):
        address = match["address"].strip("[]") or None
        for proto in re.findall(r"tcp|udp", match["protos"]):
            found.append(Diversion(proto, int(match["port"]), address))
    return found


def redirect_ports(nft_text: str) -> list[int]:
    return [int(match["port"]) for match in _REDIRECT.finditer(nft_text)]


def proc_net_sockets(text: str, version: int) -> Iterator[ProcSocket]:
    """/proc/net/{tcp,udp}[6]: one socket per line after the header."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            address_hex, port_hex = fields[1].split(":")
            yield ProcSocket(_proc_address(address_hex, version), int(port_hex, 16),
                             int(fields[3], 16), int(fields[7]), int(fields[9]))  # fmt: skip
        except ValueError:
            continue


def listening(sockets: Iterator[ProcSocket], port: int, *, tcp: bool) -> list[ProcSocket]:
    state = TCP_LISTEN if tcp else UDP_UNCONNECTED
    return [s for s in sockets if s.port == port and s.state == state]


def open_file_limit(limits_text: str) -> int | None:
    """The soft ``Max open files`` of /proc/PID/limits (UNLIMITED for unlimited)."""
    for line in limits_text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return UNLIMITED if soft == "unlimited" else int(soft)
    return None


def status_field(status_text: str, field: str) -> str | None:
    """A field of /proc/PID/status (``Uid``, ``Name``), its text after the colon."""
    for line in status_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == field:
            return value.strip()
    return None


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _proc_address(hex_text: str, version: int) -> IPAddress:
    # The kernel prints the address as host-order 32-bit words (little endian here).
    raw = bytes.fromhex(hex_text)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    return ipaddress.IPv4Address(packed) if version == 4 else ipaddress.IPv6Address(packed)
