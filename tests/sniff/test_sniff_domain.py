"""to_domain(): v2ray ToDomain plus label/length validation."""

from __future__ import annotations

import pytest

from trio_tproxy.sniff import NEED_MORE, NOT_THIS, NeedMore, NotThis, Sniffed, to_domain

LABEL_63 = "a" * 63
LABEL_64 = "a" * 64


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.Com", "example.com"),
        (b"WWW.Example.COM", "www.example.com"),
        ("example.com.", "example.com"),  # one trailing dot dropped
        ("example.com..", None),
        ("localhost", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("bücher.example", "xn--bcher-kva.example"),  # IDN -> punycode
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("straße.de", "strasse.de"),  # UTS 46 transitional, as v2ray's Go idna profile
        ("bücher.example".encode(), "xn--bcher-kva.example"),
        (b"\xff\xfe.example", None),  # not UTF-8
        ("my_host.example", None),  # underscore: not in [a-z0-9.-]
        ("_dmarc.example.com", None),
        ("a..b", None),  # empty label
        (".example.com", None),
        ("", None),
        (".", None),
        ("a b.example", None),
        ("exa\x00mple.com", None),
        ("example.com:443", None),
        (f"{LABEL_63}.example", f"{LABEL_63}.example"),
        (f"{LABEL_64}.example", None),  # 64-character label
        (".".join([LABEL_63] * 4)[:253], ".".join([LABEL_63] * 4)[:253]),
        (".".join([LABEL_63] * 4), None),  # 255 characters
        ("-dash-.example", "-dash-.example"),  # v2ray keeps these; so do we
        ("1.2.3.4", None),  # IPv4 literal
        ("127.1", None),  # numeric last label: resolvers read it as an address
        ("0x7f.1", None),
        ("::1", None),  # IPv6 literal
        ("[2001:db8::1]", None),
        ("1.2.3.com", "1.2.3.com"),
        ("123.example", "123.example"),
        ("example.123a", "example.123a"),
    ],
)
def test_to_domain(raw: str | bytes, expected: str | None) -> None:
    assert to_domain(raw) == expected


def test_outcome_singletons() -> None:
    assert NeedMore() is NEED_MORE
    assert NotThis() is NOT_THIS
    assert repr(NEED_MORE) == "NEED_MORE"
    assert repr(NOT_THIS) == "NOT_THIS"
    assert Sniffed("tls") == Sniffed("tls", None, ())
    assert hash(Sniffed("tls", "a.example", ("h2",))) == hash(Sniffed("tls", "a.example", ("h2",)))


def test_outcome_singletons_survive_copy_and_pickle() -> None:
    import copy
    import pickle

    for outcome in (NEED_MORE, NOT_THIS):
        assert copy.deepcopy(outcome) is outcome
        assert pickle.loads(pickle.dumps(outcome)) is outcome
