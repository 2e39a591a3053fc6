"""QUIC Initial sniffing on packets sealed with aioquic's own crypto (independent of ours)."""

from __future__ import annotations

import pytest
from aioquic.quic.crypto import CryptoPair
from sniff_corpus import load_flow

from trio_tproxy.sniff import NEED_MORE, NOT_THIS, Sniffed, sniff_datagrams, sniff_quic
from trio_tproxy.sniff.quic import MAX_PEEK
from trio_tproxy.sniff.quic_initial import (
    VERSION_1,
    VERSION_2,
    VERSION_DRAFT_29,
    _initial_keys,
    initial_payloads,
)

DCID = bytes.fromhex("8394c8f03e515708")
INITIAL_TYPE_BITS = {VERSION_1: 0, VERSION_2: 1, VERSION_DRAFT_29: 0}


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    return (value | 0x80000000).to_bytes(4, "big")


def seal_initial(
    payload: bytes,
    *,
    version: int = VERSION_1,
    dcid: bytes = DCID,
    packet_number: int = 0,
    pad_to: int = 0,
) -> bytes:
    """A client Initial protected by aioquic (draft-29 keys via its v1 path + salt)."""
    pn_len = 2
    payload += bytes(max(0, pad_to - len(payload)))
    payload += bytes(max(0, 20 - len(payload)))  # room for the header-protection sample
    first = 0xC0 | INITIAL_TYPE_BITS[version] << 4 | (pn_len - 1)
    header = (
        bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
        + b"\x00" + varint(0) + varint(pn_len + len(payload) + 16).rjust(2, b"\x40")
        + packet_number.to_bytes(pn_len, "big")
    )  # fmt: skip
    pair = CryptoPair()
    if version == VERSION_DRAFT_29:
        return _seal_draft_29(header, payload, packet_number, dcid)
    pair.setup_initial(cid=dcid, is_client=True, version=version)
    return pair.encrypt_packet(header, payload, packet_number)


def _seal_draft_29(header: bytes, payload: bytes, packet_number: int, dcid: bytes) -> bytes:
    from aioquic.quic.crypto import INITIAL_CIPHER_SUITE, CryptoContext
    from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

    algorithm = cipher_suite_hash(INITIAL_CIPHER_SUITE)
    salt = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
    secret = hkdf_expand_label(
        algorithm, hkdf_extract(algorithm, salt, dcid), b"client in", b"", 32
    )
    context = CryptoContext()
    context.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=VERSION_1)
    return context.encrypt_packet(header, payload, packet_number)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def client_hello(name: bytes = b"quic.example", protocol: bytes = b"h3") -> bytes:
    """A minimal ClientHello handshake message with SNI and ALPN."""
    sni_entries = b"\x00" + len(name).to_bytes(2, "big") + name
    sni = b"\x00\x00" + (len(sni_entries) + 2).to_bytes(2, "big")
    sni += len(sni_entries).to_bytes(2, "big") + sni_entries
    alpn_list = bytes((len(protocol),)) + protocol
    alpn = b"\x00\x10" + (len(alpn_list) + 2).to_bytes(2, "big")
    alpn += len(alpn_list).to_bytes(2, "big") + alpn_list
    extensions = sni + alpn
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


EXPECTED = Sniffed("quic", "quic.example", ("h3",))


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        # RFC 9001 Appendix A.1
        (VERSION_1, "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
         "9f50449e04a0e810283a1e9933adedd2"),
        # RFC 9369 Appendix A.1
        (VERSION_2, "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
         "45b95e15235d6f45a6b19cbcb0294ba9"),
    ],
)  # fmt: skip
def test_initial_keys_match_rfc_vectors(version: int, key: str, iv: str, hp: str) -> None:
    keys = _initial_keys(version, DCID)
    assert keys.iv == int(iv, 16)
    sample = bytes(16)
    # The derived AEAD key and HP key, checked through what they do.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(12)
    assert keys.aead.encrypt(nonce, b"x", None) == AESGCM(bytes.fromhex(key)).encrypt(
        nonce, b"x", None
    )
    reference_hp = Cipher(algorithms.AES(bytes.fromhex(hp)), modes.ECB()).encryptor()
    assert keys.header_protection.update(sample) == reference_hp.update(sample)


# -- packets -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2, VERSION_DRAFT_29])
def test_each_version(version: int) -> None:
    datagram = seal_initial(crypto_frame(0, client_hello()), version=version, pad_to=1164)
    assert len(datagram) >= 1200
    assert sniff_quic([datagram]) == EXPECTED


def test_wrong_type_bits_for_version() -> None:
    """A v2 packet with v1's Initial type bits is a v2 0-RTT packet: not ours."""
    datagram = bytearray(seal_initial(crypto_frame(0, client_hello()), version=VERSION_2))
    datagram[0] &= 0xCF
    assert sniff_quic([bytes(datagram)]) is NOT_THIS


def test_crypto_frames_out_of_order_and_overlapping_in_one_packet() -> None:
    hello = client_hello()
    frames = (
        crypto_frame(40, hello[40:]) + b"\x01" + bytes(7)  # PING, PADDING
        + crypto_frame(0, hello[:30]) + crypto_frame(20, hello[20:50])
    )  # fmt: skip
    assert sniff_quic([seal_initial(frames)]) == EXPECTED


def test_coalesced_initials_in_one_datagram() -> None:
    hello = client_hello()
    first = seal_initial(crypto_frame(0, hello[:50]), packet_number=0)
    second = seal_initial(crypto_frame(50, hello[50:]), packet_number=1)
    assert sniff_quic([first]) is NEED_MORE
    assert sniff_quic([first + second]) == EXPECTED
    assert sniff_quic([second + first]) == EXPECTED
    assert sniff_quic([first, second]) == EXPECTED
    assert sniff_quic([second, first]) == EXPECTED


def test_zero_rtt_and_handshake_packets_after_the_initial_are_stepped_over() -> None:
    hello = client_hello()
    first = seal_initial(crypto_frame(0, hello[:50]), packet_number=0)
    zero_rtt = b"\xd1\x00\x00\x00\x01\x08" + DCID + b"\x00" + varint(30) + bytes(30)
    second = seal_initial(crypto_frame(50, hello[50:]), packet_number=1)
    assert sniff_quic([first + zero_rtt + second]) == EXPECTED


def test_other_frames_are_skipped() -> None:
    ack = b"\x02" + varint(5) + varint(0) + varint(1) + varint(2) + varint(0) + varint(1)
    ack_ecn = b"\x03" + varint(5) + varint(0) + varint(0) + varint(2) + varint(1) * 3
    close = b"\x1c" + varint(0) + varint(6) + varint(3) + b"bye"
    payload = ack + b"\x01" + ack_ecn + close + crypto_frame(0, client_hello())
    assert sniff_quic([seal_initial(payload)]) == EXPECTED


def test_unknown_frame_ends_the_packet() -> None:
    payload = b"\x08" + crypto_frame(0, client_hello())  # STREAM is not allowed in Initial
    assert sniff_quic([seal_initial(payload)]) is NEED_MORE


def test_decrypted_but_not_a_client_hello_is_still_quic() -> None:
    server_hello = b"\x02\x00\x00\x04" + bytes(4)
    assert sniff_quic([seal_initial(crypto_frame(0, server_hello))]) == Sniffed("quic")
    junk_hello = b"\x01\x00\x00\x04" + bytes(4)
    assert sniff_quic([seal_initial(crypto_frame(0, junk_hello))]) == Sniffed("quic")


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\xc0",
        b"\xc0\x00\x00\x00\x00\x08" + DCID + b"\x00\x00\x00\x00\x00\x01",  # version negotiation
        b"\xc0\x00\x00\x00\x02\x08" + DCID + bytes(1200),  # unknown version
        b"\x40" + DCID + bytes(1200),  # short header
        b"\xc0\x00\x00\x00\x01\x15" + bytes(1200),  # 21-byte DCID
        bytes(1200),
    ],
)
def test_not_quic(datagram: bytes) -> None:
    assert sniff_quic([datagram]) is NOT_THIS
    assert sniff_datagrams([datagram]) is NOT_THIS


def test_corrupted_packet_fails_the_tag() -> None:
    datagram = bytearray(seal_initial(crypto_frame(0, client_hello()), pad_to=1162))
    datagram[100] ^= 1
    assert sniff_quic([bytes(datagram)]) is NOT_THIS


def test_server_initial_is_not_a_client_initial() -> None:
    pair = CryptoPair()
    pair.setup_initial(cid=DCID, is_client=False, version=VERSION_1)
    header = b"\xc1\x00\x00\x00\x01\x08" + DCID + b"\x00\x00\x40\x2a\x00\x00"
    datagram = pair.encrypt_packet(header, crypto_frame(0, b"\x02" + bytes(20)), 0)
    assert sniff_quic([datagram]) is NOT_THIS


def test_first_datagram_decides_later_junk_is_ignored() -> None:
    hello = client_hello()
    first = seal_initial(crypto_frame(0, hello[:50]))
    second = seal_initial(crypto_frame(50, hello[50:]), packet_number=1)
    assert sniff_quic([b"junk" * 300, first, second]) is NOT_THIS
    assert sniff_quic([first, b"junk" * 300, second]) == EXPECTED


def test_peek_budget_is_bytes_over_all_datagrams() -> None:
    hello = client_hello()
    first = seal_initial(crypto_frame(0, hello[:50]), pad_to=1162)
    second = seal_initial(crypto_frame(50, hello[50:]), packet_number=1, pad_to=1162)
    filler = b"\x00" * (MAX_PEEK - len(first) - 10)
    assert sniff_quic([first, filler, second]) == Sniffed("quic")  # budget spent


def test_initial_payloads_of_fixture() -> None:
    payloads = list(initial_payloads(load_flow("quic_aioquic_v1")[0]))
    assert len(payloads) == 1
    assert payloads[0] is not None
    assert payloads[0][:1] == b"\x06"  # aioquic starts with its CRYPTO frame
