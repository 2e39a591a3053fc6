"""Group outbounds in ``check``: members exist, no group reaches itself, a member list
is never empty, the probe URL is one we can send; groups of groups are fine."""

from __future__ import annotations

import pytest

from trio_tproxy.config import ConfigErrors, UrltestOutbound, parse_config_text

BASE = """
[[inbounds]]
tag = "in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "hk"
type = "socks"
server = "192.0.2.1:1080"
"""


def group(tag: str, kind: str, members: list[str], extra: str = "") -> str:
    listed = ", ".join(f'"{m}"' for m in members)
    return f'[[outbounds]]\ntag = "{tag}"\ntype = "{kind}"\noutbounds = [{listed}]\n{extra}\n'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text)
    return [str(e) for e in info.value.errors]


def test_groups_of_groups_without_a_cycle_are_fine() -> None:
    cfg = parse_config_text(BASE + group("auto", "urltest", ["hk", "direct"], 'tolerance = "80ms"')
                            + group("pick", "selector", ["auto", "hk"])
                            + group("safe", "fallback", ["pick", "auto", "direct"]))  # fmt: skip
    auto = cfg.outbound("auto")
    assert isinstance(auto, UrltestOutbound)
    assert auto.outbounds == ("hk", "direct") and auto.tolerance.seconds == pytest.approx(0.08)


def test_unknown_member() -> None:
    assert errors_of(BASE + group("auto", "urltest", ["hk", "nope"])) == [
        "unknown outbound tag 'nope' @ $.outbounds[2].outbounds[1]"
    ]


def test_a_group_containing_itself() -> None:
    assert errors_of(BASE + group("auto", "fallback", ["hk", "auto"])) == [
        "group 'auto' contains itself: auto -> auto @ $.outbounds[2].outbounds"
    ]


def test_a_cycle_through_other_groups_names_every_group_on_it() -> None:
    errors = errors_of(BASE + group("a", "selector", ["hk", "b"]) + group("b", "urltest", ["c"])
                       + group("c", "fallback", ["direct", "a"]))  # fmt: skip
    assert errors == [
        "group 'a' contains itself: a -> b -> c -> a @ $.outbounds[2].outbounds",
        "group 'b' contains itself: b -> c -> a -> b @ $.outbounds[3].outbounds",
        "group 'c' contains itself: c -> a -> b -> c @ $.outbounds[4].outbounds",
    ]


def test_empty_member_list() -> None:
    assert errors_of(BASE + group("auto", "urltest", [])) == [
        "a group needs at least one member @ $.outbounds[2].outbounds"
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "probe url must start with http:// or https://: 'ftp://example.com/'"),
        ("cp.cloudflare.com/generate_204", "probe url must start with http:// or https://: "
                                           "'cp.cloudflare.com/generate_204'"),
        ("http:///generate_204", "probe url has no host: 'http:///generate_204'"),
        ("http://example.com:99999/", "bad probe url 'http://example.com:99999/': "
                                      "Port out of range 0-65535"),
    ],
)  # fmt: skip
def test_bad_probe_url(url: str, message: str) -> None:
    assert errors_of(BASE + group("auto", "urltest", ["hk"], f'url = "{url}"')) == [
        f"{message} @ $.outbounds[2].url"
    ]


def test_interval_and_timeout_must_be_positive() -> None:
    extra = 'interval = "0s"\ntimeout = "0s"'
    assert errors_of(BASE + group("auto", "fallback", ["hk"], extra)) == [
        "interval must be positive @ $.outbounds[2].interval",
        "timeout must be positive @ $.outbounds[2].timeout",
    ]


def test_every_group_mistake_at_once() -> None:
    errors = errors_of(BASE + group("x", "selector", ["x", "ghost"], 'url = "gopher://h/"')
                       + group("y", "urltest", []))  # fmt: skip
    assert len(errors) == 4
