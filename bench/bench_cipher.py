"""Shadowsocks stream framing, pure CPU: no sockets, no trio (not collected by pytest).

    python bench/bench_cipher.py [--mb 64] [--runs 5] [--methods aes-128-gcm,...]

A stream of ``--mb`` MB is sealed the way ss-server sends it (full chunks: 16383
bytes for SIP004, 65535 for SIP022) and then:

* ``decrypt``: taken back in ``--recv``-byte receives (64 KiB), as ShadowsocksStream
  does on the download path: each receive is one copy into the decryptor (the kernel's
  copy in recv/recv_into), then the decryptor's work for the whole chunks now buffered,
  then what it does while the stream waits for the next;
* ``encrypt``: the upload path, 64 KiB writes (``policy.buffer_size``) sealed into wire
  bytes.

The reference, measured in the same run, is the floor: bare ``cryptography`` AEAD calls
on the same chunks (``decrypt_into``/``encrypt_into`` into one buffer, nonces made in
advance; for decryption each chunk is first copied into a buffer, as a receive does),
so ``ratio`` is what the framing costs on top of the cipher and the kernel's copy.
Figures are the median of ``--runs``; MB/s counts plaintext megabytes (10^6 bytes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from trio_tproxy.outbound import shadowsocks_proto as proto

try:
    from trio_tproxy.outbound.shadowsocks_decoder import Decryptor
except ImportError:  # before the decoders had a module of their own (for comparisons)
    Decryptor = proto.Decryptor  # type: ignore[attr-defined,misc]

RECV = 65536
METHODS = ("aes-128-gcm", "chacha20-ietf-poly1305", "2022-blake3-aes-128-gcm")
WRITE = 65536


def wire_stream(method: str, key: bytes, plain: bytes) -> tuple[bytes, int]:
    """The sealed stream (salt first) and its number of chunks."""
    enc = proto.Encryptor(method, key)
    out = [enc.take_salt()]
    step = enc.max_payload
    for i in range(0, len(plain), step):
        out.append(enc.encrypt(plain[i : i + step]))
    return b"".join(out), -(-len(plain) // step)


def decrypt_current(method: str, key: bytes, wire: bytes, recv: int) -> Callable[[], int]:
    """The decryptor as ShadowsocksStream uses it: its buffer API if it has one (given
    back after every receive, as when the socket has nothing more: the gateway keeps
    up with the server), else ``feed(bytes)``."""
    view = memoryview(wire)

    def with_buffer() -> int:
        dec = Decryptor(method, key)
        total = 0
        i = 0
        while i < len(wire):
            space = dec.buffer()
            n = min(len(space), recv, len(wire) - i)
            space[:n] = view[i : i + n]  # recv_into's copy
            i += n
            total += len(dec.received(n))
            dec.release()
        return total

    def with_feed() -> int:
        dec = Decryptor(method, key)
        total = 0
        for i in range(0, len(wire), recv):
            total += len(dec.feed(wire[i : i + recv]))  # the slice: recv's copy
        return total

    return with_buffer if hasattr(Decryptor, "received") else with_feed


def encrypt_current(method: str, key: bytes, plain: bytes) -> Callable[[], int]:
    """As ShadowsocksStream.send_all: into one wire buffer if the encryptor can, else
    ``encrypt`` (bytes)."""
    view = memoryview(plain)
    out = memoryview(bytearray(2 * WRITE))

    def into() -> int:
        enc = proto.Encryptor(method, key)
        total = 0
        for i in range(0, len(plain), WRITE):
            total += enc.encrypt_into(view[i : i + WRITE], out)
        return total

    def to_bytes() -> int:
        enc = proto.Encryptor(method, key)
        total = 0
        for i in range(0, len(plain), WRITE):
            total += len(enc.encrypt(view[i : i + WRITE]))
        return total

    return into if hasattr(proto.Encryptor, "encrypt_into") else to_bytes


def floor_decrypt(method: str, key: bytes, plain: bytes) -> Callable[[], int]:
    """Each sealed chunk copied into one buffer (the receive's copy, and the cache
    locality a receive buffer has), then bare AEAD decryption (2 calls a chunk:
    length and payload)."""
    _, cls, v2022 = proto.method_info(method)
    step = proto.MAX_PAYLOAD_2022 if v2022 else proto.MAX_PAYLOAD
    aead = cls(bytes(len(key)))
    sealed: list[tuple[bytes, bytes]] = []
    counter = 0
    for i in range(0, len(plain), step):
        chunk = plain[i : i + step]
        for part in (len(chunk).to_bytes(2, "big"), chunk):
            nonce = counter.to_bytes(12, "little")
            counter += 1
            sealed.append((nonce, aead.encrypt(nonce, part, None)))
    out = memoryview(bytearray(step))
    received = memoryview(bytearray(step + proto.TAG_LEN))

    def run() -> int:
        total = 0
        for nonce, data in sealed:  # decrypt_into wants a buffer of the exact size
            n = len(data)
            received[:n] = data
            total += aead.decrypt_into(nonce, received[:n], None, out[: n - proto.TAG_LEN])
        return total

    return run


def floor_encrypt(method: str, key: bytes, plain: bytes) -> Callable[[], int]:
    _, cls, v2022 = proto.method_info(method)
    step = proto.MAX_PAYLOAD_2022 if v2022 else proto.MAX_PAYLOAD
    aead = cls(bytes(len(key)))
    view = memoryview(plain)
    parts = []
    counter = 0
    for i in range(0, len(plain), step):
        chunk = view[i : i + step]
        for part in (len(chunk).to_bytes(2, "big"), chunk):
            parts.append((counter.to_bytes(12, "little"), part))
            counter += 1
    out = memoryview(bytearray(step + proto.TAG_LEN))

    def run() -> int:
        total = 0
        for nonce, part in parts:
            total += aead.encrypt_into(nonce, part, None, out[: len(part) + proto.TAG_LEN])
        return total

    return run


def timed(calls: tuple[Callable[[], int], ...], runs: int) -> list[float]:
    """Median seconds per call, run by run interleaved: drift on this shared VM hits
    every call alike."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--recv", type=int, default=RECV,
                        help="bytes per receive (ss-server on loopback: ~30000)")  # fmt: skip
    args = parser.parse_args()
    plain = bytes(range(256)) * (args.mb * 1_000_000 // 256)
    mb = len(plain) / 1e6
    print(f"{mb:.0f} MB, median of {args.runs} runs; ratio = framing cost / bare AEAD calls")
    print(f"{'method':>30} {'path':>8} {'MB/s':>8} {'us/chunk':>9} {'floor MB/s':>11} {'ratio':>6}")
    for method in args.methods.split(","):
        key = bytes(proto.key_length(method))
        wire, chunks = wire_stream(method, key, plain)
        decrypt = decrypt_current(method, key, wire, args.recv)
        assert decrypt() == len(plain), "the decryptor lost bytes"
        cases = [("decrypt", decrypt, floor_decrypt(method, key, plain)),
                 ("encrypt", encrypt_current(method, key, plain),
                  floor_encrypt(method, key, plain))]  # fmt: skip
        for path, ours, floor in cases:
            t_ours, t_floor = timed((ours, floor), args.runs)
            print(f"{method:>30} {path:>8} {mb / t_ours:8.0f} {t_ours / chunks * 1e6:9.2f} "
                  f"{mb / t_floor:11.0f} {t_ours / t_floor:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
