"""`check` for the shadowsocks and trojan outbounds: every mistake with its path."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.runtime import Runtime

BASE = '[[inbounds]]\ntag = "in"\ntype = "tproxy"\nport = 12345\n'


def ss(method: str, password: str) -> str:
    return (f'[[outbounds]]\ntag = "ss"\ntype = "shadowsocks"\nserver = "192.0.2.1:8388"\n'
            f'method = "{method}"\npassword = "{password}"\n')  # fmt: skip


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        Runtime.build(parse_config_text(BASE + text))
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(("method", "length"), [
    ("2022-blake3-aes-128-gcm", 16), ("2022-blake3-aes-256-gcm", 32),
    ("2022-blake3-chacha20-poly1305", 32),
])  # fmt: skip
def test_2022_keys_must_have_the_exact_length(method: str, length: int) -> None:
    good = base64.b64encode(bytes(length)).decode()
    Runtime.build(parse_config_text(BASE + ss(method, good)))
    wrong = base64.b64encode(bytes(length // 2 if length == 32 else 32)).decode()
    (error,) = errors_of(ss(method, wrong))
    assert error.endswith("@ $.outbounds[0].password")
    assert f"needs a base64 key of exactly {length} bytes" in error
    (error,) = errors_of(ss(method, "not base64!"))
    assert f"needs a base64 key of {length} bytes" in error and "$.outbounds[0].password" in error


def test_aead_passwords_are_any_text_but_not_empty() -> None:
    Runtime.build(parse_config_text(BASE + ss("aes-128-gcm", "any text at all")))
    (error,) = errors_of(ss("aes-128-gcm", ""))
    assert error == "a Shadowsocks password cannot be empty @ $.outbounds[0].password"


def test_unknown_method() -> None:
    (error,) = errors_of(ss("rc4-md5", "x"))
    assert "$.outbounds[0].method" in error


def test_trojan_mistakes(tmp_path: Path) -> None:
    tj = '[[outbounds]]\ntag = "tj"\ntype = "trojan"\nserver = "192.0.2.1:443"\n'
    (error,) = errors_of(tj + 'password = ""\n')
    assert error == "a Trojan password cannot be empty @ $.outbounds[0].password"
    (error,) = errors_of(tj + f'password = "x"\nca = "{tmp_path}/none.pem"\n')
    assert error.startswith("outbound 'tj': No such file or directory") and error.endswith(
        "@ $.outbounds[0]")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    (error,) = errors_of(tj + f'password = "x"\nca = "{bad}"\n')
    assert error.startswith("outbound 'tj': ") and "$.outbounds[0]" in error


def test_check_prints_them_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(BASE + ss("2022-blake3-aes-128-gcm", "c2hvcnQ="))
    out = subprocess.run([sys.executable, "-m", "trio_tproxy", "check", str(config)],
                         check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert ("2022-blake3-aes-128-gcm needs a base64 key of exactly 16 bytes, this one has 5 "
            "(e.g. openssl rand -base64 16) @ $.outbounds[0].password") in out.stderr + out.stdout
