"""The three outcomes every sniffer returns, and domain normalisation.

A sniffer is a pure function from the bytes (or datagrams) seen so far to one of:

* :class:`Sniffed` -- the protocol is recognised; maybe with a domain and ALPN list;
* :data:`NEED_MORE` -- the input is a valid prefix of this protocol, give me more;
* :data:`NOT_THIS` -- this is definitely not (or no longer sniffable as) this protocol.

Sniffers never raise for any input and never look beyond their module's ``MAX_PEEK``.
This is the h11 reader contract minus the exception: a sniffer has no error to
report that the session could act on, so "garbage" and "not this" are one outcome.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias, final

import attrs

__all__ = ["NEED_MORE", "NOT_THIS", "NeedMore", "NotThis", "SniffOutcome", "Sniffed", "to_domain"]


@attrs.frozen
class Sniffed:
    """A recognised protocol.

    ``protocol`` uses v2ray's names ("http1", "tls", "quic", "bittorrent") plus "dns";
    routing matches it by prefix, so a rule ``protocol = ["http"]`` matches "http1".
    ``domain`` has been through :func:`to_domain` (``None`` if absent or invalid).
    """

    protocol: str
    domain: str | None = None
    alpn: tuple[str, ...] = ()


@final
class NeedMore:
    """Give me more bytes (TCP) or more datagrams (UDP)."""

    _instance: NeedMore | None = None

    def __new__(cls) -> NeedMore:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_MORE"

    def __reduce__(self) -> str:
        return "NEED_MORE"


@final
class NotThis:
    """Definitely not this protocol (or not sniffable within the limits)."""

    _instance: NotThis | None = None

    def __new__(cls) -> NotThis:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_THIS"

    def __reduce__(self) -> str:
        return "NOT_THIS"


NEED_MORE: Final = NeedMore()
NOT_THIS: Final = NotThis()

SniffOutcome: TypeAlias = Sniffed | NeedMore | NotThis

# RFC 1035 §2.3.4: 63 octets per label, 255 octets on the wire, which is 253 characters
# in dotted text without the trailing dot.
MAX_LABEL_LEN: Final = 63
MAX_DOMAIN_LEN: Final = 253

# v2ray's ToDomain keeps only [A-Za-z0-9.-]; we also insist on 1..63-character labels
# and refuse a numeric last label (see to_domain). One regex: it is the hot path of
# every sniffer that finds a name.
_DOMAIN_RE: Final = re.compile(r"(?:[a-z0-9-]{1,63}\.)*(?![0-9]+\Z)[a-z0-9-]{1,63}")


def to_domain(raw: str | bytes) -> str | None:
    """Normalise a host name as v2ray's ``ToDomain`` does, or return ``None``.

    Lower-case; one trailing dot dropped; non-ASCII names converted to punycode
    (IDNA 2003 / UTS 46 transitional mapping, which is what v2ray's Go ``idna``
    profile does); only ``[a-z0-9.-]`` allowed, so underscores, spaces, ``:`` of an
    IPv6 literal and empty labels (``a..b``) all give ``None``. Labels must be 1..63
    characters and the whole name at most 253.

    A name whose last label is all digits is an IP literal (``10.0.0.1``) or
    something a resolver may read as one (``127.1``); no TLD is numeric, so it gives
    ``None``: the caller must not "override" an address with an address.
    """
    name: str | None
    if raw.isascii():
        name = (raw.decode("ascii") if isinstance(raw, bytes) else raw).lower()
    else:
        name = _idna_encode(raw)
        if name is None:
            return None
    if name[-1:] == ".":
        name = name[:-1]
    if len(name) > MAX_DOMAIN_LEN or _DOMAIN_RE.fullmatch(name) is None:
        return None
    return name


def _idna_encode(raw: str | bytes) -> str | None:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if len(text) > 4 * MAX_DOMAIN_LEN:
            return None  # the codec's work grows with the input; no name is this long
        return text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
