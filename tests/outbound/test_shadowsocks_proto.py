"""Shadowsocks AEAD (SIP004) and 2022 (SIP022) codec: round trips, known answers,
tampering, header checks, the replay window, and a fuzzed decryptor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import shutil
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tproxy.outbound.shadowsocks_decoder import (
    CARRY_MAX,
    RECV_ROOM,
    Decryptor,
    RequestDecoder,
    ResponseDecoder,
)
from trio_tproxy.outbound.shadowsocks_packet import (
    ReplayWindow,
    XChaCha20Poly1305,
    hchacha20,
    udp2022_open,
    udp2022_seal,
    udp_open,
    udp_seal,
)
from trio_tproxy.outbound.shadowsocks_proto import (
    AEAD_METHODS,
    METHODS_2022,
    Encryptor,
    RequestEncoder,
    ShadowsocksError,
    decode_psk,
    encode_response_header,
    evp_bytes_to_key,
    hkdf_sha1,
    key_length,
    master_key,
)

V4 = ipaddress.IPv4Address("192.0.2.7")


def psk_for(method: str) -> str:
    return base64.b64encode(os.urandom(key_length(method))).decode()


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for n in sizes:
        out.append(data[i : i + n])
        i += n
    out.append(data[i:])
    return out


def test_evp_bytes_to_key_known_answer() -> None:
    key = evp_bytes_to_key(b"foobar", 32)
    first = hashlib.md5(b"foobar").digest()
    assert key[:16] == first
    assert key[:16].hex() == "3858f62230ac3c915f300c664312c63f"
    assert key[16:] == hashlib.md5(first + b"foobar").digest()


def test_hkdf_sha1_independent() -> None:
    master, salt = b"k" * 32, b"s" * 32
    prk = hmac.new(salt, master, hashlib.sha1).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < 32:
        t = hmac.new(prk, t + b"ss-subkey" + bytes([i]), hashlib.sha1).digest()
        okm += t
        i += 1
    assert hkdf_sha1(master, salt, 32) == okm[:32]


@pytest.mark.parametrize("method", sorted(AEAD_METHODS))
def test_aead_round_trip_fragmented(method: str) -> None:
    key = master_key(method, "pw")
    enc, dec = Encryptor(method, key), Decryptor(method, key)
    data = os.urandom(40000)  # three chunks
    wire = enc.encrypt(data[:5]) + enc.encrypt(data[5:])
    assert wire.startswith(enc.salt)
    got = b"".join(dec.feed(p) for p in _split(wire, [1, 7, 30, 1000, 3, 17000]))
    assert got == data
    assert b"".join(dec.feed(bytes([b])) for b in enc.encrypt(b"more")) == b"more"


def _receive(dec: Decryptor, wire: bytes, sizes: list[int], release_every: int) -> bytes:
    """Drive ``dec`` as ShadowsocksStream does: recv_into its buffer, then received()."""
    got, i, step = bytearray(), 0, 0
    while i < len(wire):
        space = dec.buffer()
        assert len(space) == RECV_ROOM
        n = min(sizes[step % len(sizes)], len(space), len(wire) - i)
        space[:n] = wire[i : i + n]
        i += n
        plain = dec.received(n)
        assert isinstance(plain, memoryview)  # a view of its buffer: no copy
        got += plain
        step += 1
        if release_every and step % release_every == 0:
            dec.release()  # as when the socket has nothing more: the partial chunk stays
    return bytes(got)


@pytest.mark.parametrize("method", sorted(AEAD_METHODS) + sorted(METHODS_2022))
@pytest.mark.parametrize("release_every", [0, 1, 3])
def test_chunks_are_opened_in_the_receive_buffer(method: str, release_every: int) -> None:
    key = master_key(method, psk_for(method) if method.startswith("2022") else "pw")
    enc, dec = Encryptor(method, key), Decryptor(method, key)
    data = os.urandom(300_000)
    # full chunks as ss-server sends them, and small ones
    wire = b"".join(enc.encrypt(data[i : i + n]) for i, n in
                    ((0, 100_000), (100_000, 5), (100_005, 199_995)))  # fmt: skip
    sizes = [65536, 1, 17, 40000, 65536, 30, 70000]
    assert _receive(dec, wire, sizes, release_every) == data


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 70000), min_size=1, max_size=8), st.integers(0, 4))
def test_receive_buffer_in_any_pieces(sizes: list[int], release_every: int) -> None:
    method = "aes-128-gcm"
    key = master_key(method, "pw")
    data = os.urandom(60_000)
    wire = Encryptor(method, key).encrypt(data)
    assert _receive(Decryptor(method, key), wire, sizes, release_every) == data


@pytest.mark.parametrize(("partial", "held"), [(0, False), (CARRY_MAX, False),
                                                (CARRY_MAX + 1, True)])  # fmt: skip
def test_a_waiting_decryptor_gives_its_buffers_back(partial: int, held: bool) -> None:
    """Between receives the output buffer always goes back; the input buffer too, its
    partial chunk copied aside, unless that is over CARRY_MAX (then it stays)."""
    method = "aes-128-gcm"
    key = master_key(method, "pw")
    enc, dec = Encryptor(method, key), Decryptor(method, key)
    wire = enc.encrypt(b"whole") + enc.encrypt(b"p" * 10000)
    whole = 16 + 2 * (2 + 16) + 5 + 16
    cut = whole + partial
    space = dec.buffer()
    space[:cut] = wire[:cut]
    assert dec.received(cut) == b"whole"
    dec.release()
    assert dec.holds_buffers is held
    rest = wire[cut:]
    space = dec.buffer()
    space[: len(rest)] = rest
    assert dec.received(len(rest)) == b"p" * 10000


@pytest.mark.parametrize("method", sorted(AEAD_METHODS) + sorted(METHODS_2022))
def test_encrypt_into_writes_what_encrypt_returns(method: str) -> None:
    key = master_key(method, psk_for(method) if method.startswith("2022") else "pw")
    salt = os.urandom(len(key))
    into, plain = Encryptor(method, key, salt), Encryptor(method, key, salt)
    out = memoryview(bytearray(300_000))
    for size in (5, 0, 16383, 16384, 65535, 65536, 100_000):
        data = os.urandom(size)
        expected = into.wire_size(size)  # the salt counts in the first only
        n = into.encrypt_into(memoryview(data), out)
        assert n == expected
        assert out[:n] == plain.encrypt(data)


@pytest.mark.parametrize("method", sorted(AEAD_METHODS))
def test_tampered_byte(method: str) -> None:
    key = master_key(method, "pw")
    wire = bytearray(Encryptor(method, key).encrypt(b"hello world"))
    wire[-3] ^= 1
    with pytest.raises(ShadowsocksError, match="authentication failed"):
        Decryptor(method, key).feed(bytes(wire))
    with pytest.raises(ShadowsocksError, match="authentication failed"):
        Decryptor(method, master_key(method, "other")).feed(bytes(wire))


def test_oversize_length() -> None:
    method = "aes-256-gcm"
    key = master_key(method, "pw")
    enc = Encryptor(method, key)
    forged = enc.take_salt() + enc.seal((0x4000).to_bytes(2, "big"))
    with pytest.raises(ShadowsocksError, match="over 16383"):
        Decryptor(method, key).feed(forged)


@pytest.mark.parametrize("method", sorted(AEAD_METHODS))
def test_udp_round_trip(method: str) -> None:
    key = master_key(method, "pw")
    pkt = udp_seal(method, key, "example.com", 53, b"query")
    assert udp_open(method, key, pkt) == ("example.com", 53, b"query")
    bad = bytearray(pkt)
    bad[-1] ^= 1
    with pytest.raises(ShadowsocksError, match="authentication failed"):
        udp_open(method, key, bytes(bad))


def test_psk_validation() -> None:
    m = "2022-blake3-aes-256-gcm"
    assert len(decode_psk(psk_for(m), m)) == 32
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        decode_psk(base64.b64encode(b"x" * 16).decode(), m)
    with pytest.raises(ValueError, match="base64"):
        decode_psk("not base64!!", m)


@pytest.mark.parametrize("method", sorted(METHODS_2022))
@pytest.mark.parametrize("initial", [b"", b"GET / HTTP/1.1\r\n\r\n"])
def test_2022_tcp_round_trip(method: str, initial: bytes) -> None:
    psk = master_key(method, psk_for(method))
    client = RequestEncoder(method, psk)
    wire = client.header("example.com", 443, initial) + client.encrypt(b"x" * 70000)
    server = RequestDecoder(method, psk)
    got = b"".join(server.feed(p) for p in _split(wire, [3, 20, 40, 5, 900, 2]))
    assert server.target == ("example.com", 443)
    assert got == initial + b"x" * 70000
    assert server.salt == client.salt

    reply = Encryptor(method, psk)
    rwire = encode_response_header(reply, client.salt, b"HTTP/1.1 200") + reply.encrypt(b"!")
    dec = ResponseDecoder(method, psk, client.salt)
    assert b"".join(dec.feed(bytes([b])) for b in rwire) == b"HTTP/1.1 200!"


def test_2022_padding_without_payload() -> None:
    m = "2022-blake3-aes-128-gcm"
    psk = master_key(m, psk_for(m))
    assert len(RequestEncoder(m, psk).header(V4, 80)) > 16 + 11 + 16 + 7 + 2 + 16


def test_2022_response_checks() -> None:
    m = "2022-blake3-aes-256-gcm"
    psk = master_key(m, psk_for(m))
    ours = os.urandom(32)
    enc = Encryptor(m, psk)
    wire = encode_response_header(enc, os.urandom(32), b"hi")
    with pytest.raises(ShadowsocksError, match="salt differs"):
        ResponseDecoder(m, psk, ours).feed(wire)
    enc = Encryptor(m, psk)
    wire = encode_response_header(enc, ours, b"hi", now=time.time() - 60)
    with pytest.raises(ShadowsocksError, match="timestamp"):
        ResponseDecoder(m, psk, ours).feed(wire)
    # a client header is not a response: it fails authentication or the type check
    client = RequestEncoder(m, psk)
    with pytest.raises(ShadowsocksError):
        ResponseDecoder(m, psk, client.salt).feed(client.header(V4, 1, b"x" * 100))


@pytest.mark.parametrize("method", ["2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm"])
def test_2022_udp_round_trip(method: str) -> None:
    psk = master_key(method, psk_for(method))
    sid, csid = os.urandom(8), os.urandom(8)
    pkt = udp2022_seal(method, psk, csid, 7, "example.com", 53, b"q", padding=b"\0" * 5)
    got = udp2022_open(method, psk, pkt, from_server=False)
    assert (got.session_id, got.packet_id, got.host, got.port, got.payload) == (
        csid, 7, "example.com", 53, b"q")
    pkt = udp2022_seal(method, psk, sid, 1, V4, 53, b"a", client_session_id=csid)
    got = udp2022_open(method, psk, pkt, from_server=True)
    assert got.client_session_id == csid and got.host == V4 and got.payload == b"a"
    with pytest.raises(ShadowsocksError):
        udp2022_open(method, psk, pkt, from_server=False)
    bad = bytearray(pkt)
    bad[20] ^= 1
    with pytest.raises(ShadowsocksError, match="authentication failed"):
        udp2022_open(method, psk, bytes(bad), from_server=True)
    old = udp2022_seal(method, psk, sid, 2, V4, 53, b"a", now=time.time() - 100)
    with pytest.raises(ShadowsocksError, match="timestamp"):
        udp2022_open(method, psk, old, from_server=False)


def test_hchacha20_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 §2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


def test_xchacha20_poly1305_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 §A.3.1 (AEAD_XChaCha20_Poly1305)
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
                 b"tip for the future, sunscreen would be it.")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("404142434445464748494a4b4c4d4e4f5051525354555657")
    sealed = XChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
    assert sealed[:16].hex() == "bd6d179d3e83d43b9576579493c0e939"
    assert sealed[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
    assert XChaCha20Poly1305(key).decrypt(nonce, sealed, aad) == plaintext


def test_2022_chacha_udp_round_trip() -> None:
    m = "2022-blake3-chacha20-poly1305"
    psk = os.urandom(32)
    pkt = udp2022_seal(m, psk, b"s" * 8, 9, V4, 53, b"q", padding=b"\0" * 3)
    got = udp2022_open(m, psk, pkt, from_server=False)
    assert (got.session_id, got.packet_id, got.host, got.port, got.payload) == (
        b"s" * 8, 9, V4, 53, b"q")
    bad = bytearray(pkt)
    bad[30] ^= 1
    with pytest.raises(ShadowsocksError, match="authentication"):
        udp2022_open(m, psk, bytes(bad), from_server=False)
    with pytest.raises(ShadowsocksError, match="shorter"):
        udp2022_open(m, psk, pkt[:30], from_server=False)


def test_replay_window() -> None:
    w = ReplayWindow(1024)
    assert w.accept(0) and w.accept(5) and w.accept(3)
    assert not w.accept(5) and not w.accept(3) and not w.accept(0)
    assert w.accept(2000)
    assert not w.accept(5)  # too old now
    assert w.accept(1000) and not w.accept(1000)
    assert not w.accept(2000 - 1024) and w.accept(2000 - 1023)
    assert w.accept(10**6) and not w.check(10**6)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(AEAD_METHODS) + sorted(METHODS_2022)),
       st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_decryptor(method: str, pieces: list[bytes]) -> None:
    key = b"k" * key_length(method)
    decoders: list[Decryptor] = [Decryptor(method, key)]
    if method in METHODS_2022:
        decoders += [RequestDecoder(method, key), ResponseDecoder(method, key, b"s" * len(key))]
    for dec in decoders:
        try:
            for p in pieces:
                dec.feed(p)
        except ShadowsocksError:
            pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not shutil.which("ss-server"), reason="ss-server (shadowsocks-libev) missing")
def test_interop_ss_server_aes_256_gcm() -> None:
    import socket
    import subprocess
    import threading

    echo = socket.create_server(("127.0.0.1", 0))
    echo.settimeout(10)
    echo_port = echo.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = echo.accept()
            with conn:
                conn.settimeout(10)
                while data := conn.recv(65536):
                    conn.sendall(data)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    method, port = "aes-256-gcm", _free_port()
    proc = subprocess.Popen(
        ["ss-server", "-s", "127.0.0.1", "-p", str(port), "-k", "pw", "-m", method],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with sock:
            sock.settimeout(10)
            key = master_key(method, "pw")
            enc, dec = Encryptor(method, key), Decryptor(method, key)
            from trio_tproxy.outbound.socks_proto import encode_address

            payload = os.urandom(20000)
            sock.sendall(enc.encrypt(encode_address(ipaddress.IPv4Address("127.0.0.1"),
                                                    echo_port) + payload))
            got = b""
            while len(got) < len(payload):
                data = sock.recv(65536)
                assert data, "ss-server closed early"
                got += dec.feed(data)
            assert got == payload
    finally:
        proc.kill()
        proc.wait(timeout=5)
        echo.close()
