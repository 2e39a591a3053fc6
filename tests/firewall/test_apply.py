"""`trio-tproxy firewall apply|remove|print`, run as a command in throwaway namespaces:
idempotent, traceless, equal to the printed script, refused without CAP_NET_ADMIN."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from netlab import Netns

pytestmark = pytest.mark.netns

CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
mark = 2
[[outbounds]]
tag = "direct"
type = "direct"
mark = 255
[firewall]
lan_interfaces = ["br-lan"]
{firewall}
"""
# Both numbers from the v2ray/Xray documentation, and a non-default table.
HANDWRITTEN_STYLE = "fwmark = 0x1\nroute_table = 100\ntable = \"xray\"\nbypass = ['192.168.0.0/16']"
POLICY = "ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all"


def state(ns: Netns) -> tuple[str, str]:
    """The namespace's whole ruleset and policy routing."""
    return ns.run(["nft", "list", "ruleset"]).stdout, ns.run(["sh", "-c", POLICY]).stdout


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(firewall: str = "") -> Path:
        path = tmp_path / f"fw{len(list(tmp_path.iterdir()))}.toml"
        path.write_text(CONFIG.format(firewall=firewall))
        return path

    return write


def firewall(ns: Netns, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, str, str]:
    argv = [*prefix, sys.executable, "-m", "trio_tproxy", "firewall", *args]
    result = ns.run(argv, check=False, timeout=30)
    return result.returncode, result.stdout, result.stderr


def test_apply_is_idempotent_and_remove_leaves_no_trace(
    scratch_ns: Netns, write_config: Callable[[str], Path]
) -> None:
    config = str(write_config(HANDWRITTEN_STYLE))
    before = state(scratch_ns)
    code, out, err = firewall(scratch_ns, "apply", config)
    assert (code, err) == (0, "")
    assert out == ("applied: table inet xray; tcp -> tproxy :12345; udp -> tproxy :12345; "
                   "fwmark 1 -> table 100 (IPv4, IPv6)\n")  # fmt: skip
    once = state(scratch_ns)
    assert "table inet xray {" in once[0]
    assert once[1].count("fwmark 0x1 lookup 100") == 2  # IPv4 and IPv6
    assert "local default dev lo table 100" in once[1]
    assert firewall(scratch_ns, "apply", config)[0] == 0
    assert state(scratch_ns) == once
    code, out, _ = firewall(scratch_ns, "remove", config)
    assert (code, out) == (0, "removed: table inet xray, ip -4 rule fwmark 1 lookup 100, "
                              "ip -6 rule fwmark 1 lookup 100\n")  # fmt: skip
    assert state(scratch_ns) == before
    assert firewall(scratch_ns, "remove", config)[:2] == (0, "removed: nothing was installed\n")
    assert state(scratch_ns) == before


def test_apply_collapses_duplicate_rules_a_crash_or_a_hand_left_behind(
    scratch_ns: Netns, write_config: Callable[[str], Path]
) -> None:
    config = str(write_config(""))
    for _ in range(3):
        scratch_ns.run(["ip", "-4", "rule", "add", "fwmark", "1", "lookup", "100"])
    assert firewall(scratch_ns, "apply", config)[0] == 0
    assert state(scratch_ns)[1].count("fwmark 0x1 lookup 100") == 2
    assert firewall(scratch_ns, "remove", config)[0] == 0
    assert "fwmark" not in state(scratch_ns)[1]


def test_changing_ipv6_off_takes_the_ipv6_routing_away(
    scratch_ns: Netns, write_config: Callable[[str], Path]
) -> None:
    assert firewall(scratch_ns, "apply", str(write_config("")))[0] == 0
    assert firewall(scratch_ns, "apply", str(write_config("ipv6 = false")))[0] == 0
    assert "fwmark" not in scratch_ns.run(["ip", "-6", "rule"]).stdout
    assert scratch_ns.run(["ip", "-6", "route", "show", "table", "100"]).stdout == ""
    assert "fwmark 0x1 lookup 100" in scratch_ns.run(["ip", "-4", "rule"]).stdout
    assert "meta nfproto ipv4 jump divert" in state(scratch_ns)[0]


def test_a_ruleset_nft_refuses_changes_nothing(
    scratch_ns: Netns, write_config: Callable[[str], Path]
) -> None:
    before = state(scratch_ns)
    config = str(write_config('mode = "local"\nskip_users = ["no-such-user-here"]'))
    code, out, err = firewall(scratch_ns, "apply", config)
    assert code == 1 and out == ""
    assert err.startswith("error: nft -f -: ") and err.count("\n") == 1, err
    assert state(scratch_ns) == before  # the policy routing added first was taken away


@pytest.mark.parametrize("action", ["apply", "remove"])
def test_refused_without_cap_net_admin(
    scratch_ns: Netns, write_config: Callable[[str], Path], action: str
) -> None:
    config = str(write_config(""))
    before = state(scratch_ns)
    # root, minus CAP_NET_ADMIN: the capability is what matters, not the uid
    drop = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")
    code, out, err = firewall(scratch_ns, action, config, prefix=drop)
    assert (code, out) == (1, "")
    assert err == (f"error: firewall {action} needs CAP_NET_ADMIN (run it as root): "
                   "nothing was changed\n")  # fmt: skip
    assert state(scratch_ns) == before


def _script_state(ns: Netns, script: str) -> tuple[str, str]:
    path = ns.workdir / "firewall.sh"
    path.write_text(script)
    ns.run(["sh", "-e", str(path)], timeout=30)
    return state(ns)


def test_the_printed_script_does_what_apply_does_and_its_tail_undoes_it(
    scratch_ns: Netns, write_config: Callable[[str], Path]
) -> None:
    config = str(write_config('mode = "local"\nfail_closed = true'))
    before = state(scratch_ns)
    assert firewall(scratch_ns, "apply", config)[0] == 0
    applied = state(scratch_ns)
    assert firewall(scratch_ns, "remove", config)[0] == 0
    code, script, _ = firewall(scratch_ns, "print", config)
    assert code == 0
    assert _script_state(scratch_ns, script) == applied
    assert _script_state(scratch_ns, script) == applied  # twice = once
    tail = script[script.index("# To remove all of it:\n") :].splitlines()[1:]
    removal = "\n".join(line.removeprefix("#   ") for line in tail)
    assert _script_state(scratch_ns, removal) == before


def test_the_iptables_script_is_idempotent_and_removable(
    scratch_ns: Netns, write_config: Callable[[str], Path]
) -> None:
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed (scripts/setup installs it)")
    config = str(write_config('mode = "local"'))
    dump = "iptables-save; ip6tables-save"

    def tables() -> list[str]:
        out = scratch_ns.run(["sh", "-c", dump]).stdout
        # Rules and our chains: iptables-nft keeps the (empty) built-in tables it once
        # created, as iptables always has.
        return [line for line in out.splitlines() if line.startswith("-") or "trio" in line]

    before = (tables(), state(scratch_ns)[1])
    code, script, _ = firewall(scratch_ns, "print", "--iptables", config)
    assert code == 0
    _script_state(scratch_ns, script)
    once = (tables(), state(scratch_ns)[1])
    assert any("TPROXY" in line for line in once[0])
    _script_state(scratch_ns, script)
    assert (tables(), state(scratch_ns)[1]) == once
    tail = script[script.index("# To remove all of it:\n") :].splitlines()[1:]
    _script_state(scratch_ns, "\n".join(line.removeprefix("#   ") for line in tail))
    assert (tables(), state(scratch_ns)[1]) == before


@pytest.mark.parametrize(
    ("firewall_lines", "prefix", "expected"),
    [
        ("auto = true", ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"),
         "error: CAP_NET_ADMIN is missing: needed for SO_MARK=2 on the replies of inbound "
         "'tproxy-in' (port 12345), SO_MARK=255 on outbound 'direct', nft and ip rule for "
         "firewall.auto; run as root"),
        ('auto = true\nbypass = ["geoip:cn"]\n[geodata]\ngeoip = "/nonexistent.mmdb"', (),
         "error: GeoIP database /nonexistent.mmdb not found; build one with"),
    ],
)  # fmt: skip
def test_run_with_auto_refuses_in_one_line_before_listening(
    scratch_ns: Netns, write_config: Callable[[str], Path], firewall_lines: str,
    prefix: tuple[str, ...], expected: str,
) -> None:  # fmt: skip
    before = state(scratch_ns)
    argv = [*prefix, sys.executable, "-m", "trio_tproxy", "run", str(write_config(firewall_lines))]
    result = scratch_ns.run(argv, check=False, timeout=30)
    assert result.returncode == 1
    # (log lines of the start may come first; the error is the last line, alone)
    assert result.stderr.splitlines()[-1].startswith(expected.rstrip()), result.stderr
    assert "Traceback" not in result.stderr and "ready:" not in result.stderr
    assert state(scratch_ns) == before
