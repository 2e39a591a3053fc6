"""policy.max_reply_sockets and the UDP limits built from the policy section."""

from __future__ import annotations

import pytest

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.limits import UdpLimits

BASE = """
[[inbounds]]
tag = "tp"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
"""


def test_defaults() -> None:
    cfg = parse_config_text(BASE)
    assert UdpLimits.from_policy(cfg.policy) == UdpLimits(idle=120.0, max_sessions=4096,
                                                          max_reply_sockets=1024)  # fmt: skip


def test_configured() -> None:
    cfg = parse_config_text(BASE + '[policy]\nudp_idle = "30s"\nmax_udp_sessions = 10\n'
                            "max_reply_sockets = 5\n")  # fmt: skip
    assert UdpLimits.from_policy(cfg.policy) == UdpLimits(30.0, 10, 5)


@pytest.mark.parametrize(("text", "error"), [
    ("max_reply_sockets = 0", "max_reply_sockets must be at least 1 @ $.policy.max_reply_sockets"),
    ("max_udp_sessions = 0", "max_udp_sessions must be at least 1 @ $.policy.max_udp_sessions"),
    ('udp_idle = "0s"', "udp_idle must be positive @ $.policy.udp_idle"),
])  # fmt: skip
def test_bad_limits(text: str, error: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(BASE + "[policy]\n" + text + "\n")
    assert error in [str(e) for e in info.value.errors]
