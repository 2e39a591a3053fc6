"""`trio-tproxy firewall print` as a user meets it (no privileges, no namespaces): the
script, and one line per error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trio_tproxy.cli import main
from trio_tproxy.config import parse_config_text
from trio_tproxy.firewall import plan_from_config, render_nft

CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 7893
[[outbounds]]
tag = "direct"
type = "direct"
mark = 255
[firewall]
lan_interfaces = ["br-lan"]
{extra}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "fw.toml"
    path.write_text(CONFIG.format(extra=extra))
    return str(path)


def test_print_is_a_shell_script_with_the_ruleset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    code, out, err = run(capsys, "firewall", "print", path)
    assert (code, err) == (0, "")
    assert out.startswith(f"# trio-tproxy firewall (nftables) for {path}.\n")
    plan = plan_from_config(parse_config_text(CONFIG.format(extra="")))
    assert f"nft -f - <<'TRIO_TPROXY_NFT'\n{render_nft(plan)}TRIO_TPROXY_NFT\n" in out
    assert "ip -4 rule add fwmark 1 lookup 100\n" in out
    assert "ip -6 route replace local ::/0 dev lo table 100\n" in out
    assert out.endswith("#   ip -6 route del local ::/0 dev lo table 100\n")
    subprocess.run(["sh", "-n"], input=out, text=True, check=True)  # valid shell


def test_print_iptables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "firewall", "print", "--iptables", write(tmp_path))
    assert code == 0
    assert "iptables -w -t mangle -A trio_tproxy_divert -p udp -j TPROXY --on-port 7893 " \
           "--tproxy-mark 1\n" in out  # fmt: skip
    assert "ip6tables -w -t mangle -A PREROUTING -j trio_tproxy\n" in out
    assert "nft" not in out.replace("nftables", "")
    subprocess.run(["sh", "-n"], input=out, text=True, check=True)


@pytest.mark.parametrize(
    ("call", "expected", "code"),
    [
        ((["print"], 'mode = "sometimes"'),
         "expected one of gateway | local, got 'sometimes' @ $.firewall.mode\n", 1),
        ((["print"], 'bypass = ["10.0.0.1/8"]'),
         "bad CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set @ $.firewall.bypass[0]\n", 1),
        ((["print", "--iptables"], 'table = "a_table_name_too_long_for_iptables"'),
         "error: table name 'a_table_name_too_long_for_iptables' is too long for iptables "
         "chain names (at most 20 characters)\n", 1),
        ((["apply", "--iptables"], ""),
         "error: --iptables only goes with print (apply and remove use nft)\n", 2),
    ],
)  # fmt: skip
def test_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], call: tuple[list[str], str],
    expected: str, code: int,
) -> None:  # fmt: skip
    argv, extra = call
    assert run(capsys, "firewall", *argv, write(tmp_path, extra)) == (code, "", expected)


def test_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.toml")
    assert run(capsys, "firewall", "remove", missing) == (
        1, "", f"config file not found: {missing}\n",
    )  # fmt: skip


def test_check_refuses_what_firewall_auto_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, 'auto = true\nmode = "local"\nskip_users = ["x y"]')
    code, out, err = run(capsys, "check", path)
    assert (code, out) == (1, "")
    assert err == "'x y' is not a user name or uid @ $.firewall.skip_users[0]\n"
