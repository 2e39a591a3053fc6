"""Sniff cost per flow on the captured fixtures (not collected by pytest).

    python bench/bench_sniff.py [--runs 5] [--seconds 0.3]

Each case is timed in ``--runs`` runs of about ``--seconds`` each; the median rate
is printed with its target and, as STYLE.md asks, the ratio to a reference measured
in the same run, so figures from different machines can be compared:

* ``call``: an empty Python function call (the interpreter's floor);
* ``aioquic``: aioquic deriving the Initial keys and decrypting the same packet,
  if aioquic is installed (a test extra).

QUIC is measured "cold" (Initial keys derived afresh, as for every new flow: the
DCID is random per connection) and "warm" (keys cached, as when the session
re-sniffs the same flow after its next datagram).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

from trio_tproxy.sniff import (
    Sniffed,
    sniff_datagrams,
    sniff_dns,
    sniff_http,
    sniff_quic,
    sniff_stream,
    sniff_tls,
)
from trio_tproxy.sniff.quic_initial import _initial_keys

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "sniff" / "fixtures"


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def load_flow(name: str) -> list[bytes]:
    paths = sorted(FIXTURES.glob(f"{name}-*.bin"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [path.read_bytes() for path in paths]


def cold_quic(datagrams: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        _initial_keys.cache_clear()
        return sniff_quic(datagrams)

    return run


def cases() -> list[tuple[str, Callable[[], object], int]]:
    """(label, call, target per second; 0 = no target)."""
    http = load("http_curl")
    tls_curl, tls_chrome = load("tls_curl"), load("tls_chrome_pq")
    tls_firefox, tls_openssl = load("tls_firefox_pq"), load("tls_openssl_fragmented")
    quic_v1, quic_chrome = load_flow("quic_aioquic_v1"), load_flow("quic_chrome")
    dns = [load("dns_dig")]
    return [
        ("HTTP Host  sniff_http(curl)", lambda: sniff_http(http), 200_000),
        ("HTTP Host  sniff_stream(curl)", lambda: sniff_stream(http), 200_000),
        ("TLS        sniff_tls(curl, 517 B)", lambda: sniff_tls(tls_curl), 100_000),
        ("TLS        sniff_tls(chrome PQ, 1.8 KB)", lambda: sniff_tls(tls_chrome), 100_000),
        ("TLS        sniff_tls(firefox PQ, 1.9 KB)", lambda: sniff_tls(tls_firefox), 100_000),
        ("TLS        sniff_stream(chrome PQ)", lambda: sniff_stream(tls_chrome), 100_000),
        ("TLS        sniff_tls(openssl, 5 records)", lambda: sniff_tls(tls_openssl), 0),
        ("QUIC cold  sniff_quic(aioquic v1, 1 dgram)", cold_quic(quic_v1), 10_000),
        ("QUIC warm  sniff_quic(aioquic v1, 1 dgram)", lambda: sniff_quic(quic_v1), 10_000),
        ("QUIC cold  sniff_quic(chrome, 4 dgrams)", cold_quic(quic_chrome), 0),
        ("QUIC warm  sniff_quic(chrome, 4 dgrams)", lambda: sniff_quic(quic_chrome), 0),
        ("DNS        sniff_dns(dig)", lambda: sniff_dns(dns[0]), 0),
        ("UDP        sniff_datagrams(dig)", lambda: sniff_datagrams(dns), 0),
    ]


def references() -> dict[str, Callable[[], object]]:
    def empty() -> None:
        return None

    refs: dict[str, Callable[[], object]] = {"call": empty}
    try:
        from aioquic.buffer import Buffer
        from aioquic.quic.crypto import CryptoPair
        from aioquic.quic.packet import pull_quic_header
    except ImportError:
        return refs
    datagram = load_flow("quic_aioquic_v1")[0]
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf)
    pn_offset = buf.tell()
    packet = datagram[: header.packet_length]

    def aioquic_decrypt() -> object:
        pair = CryptoPair()
        pair.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
        return pair.decrypt_packet(packet, pn_offset, 0)

    refs["aioquic"] = aioquic_decrypt
    return refs


def calibrate(call: Callable[[], object], seconds: float) -> int:
    number, elapsed = timeit.Timer(call).autorange()
    return max(1, int(number * seconds / max(elapsed, 1e-9)))


def measure(
    named_calls: list[tuple[str, Callable[[], object]]], runs: int, seconds: float
) -> dict[str, list[float]]:
    """Rates per run, cases interleaved round by round: this VM's speed drifts by 2x
    over seconds, and interleaving lets each round's reference see the same drift."""
    numbers = {name: calibrate(call, seconds) for name, call in named_calls}
    rates: dict[str, list[float]] = {name: [] for name, _ in named_calls}
    for _ in range(runs):
        for name, call in named_calls:
            number = numbers[name]
            rates[name].append(number / timeit.Timer(call).timeit(number))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2)
    args = parser.parse_args()

    for label, call, _ in cases():
        assert isinstance(call(), Sniffed), label
    refs = references()
    named = [(f"ref:{name}", call) for name, call in refs.items()]
    named += [(label, call) for label, call, _ in cases()]
    rates = measure(named, args.runs, args.seconds)
    ref_rates = {name: rates[f"ref:{name}"] for name in refs}
    summary = ", ".join(f"{name} {statistics.median(v):,.0f}/s" for name, v in ref_rates.items())
    print(f"median of {args.runs} interleaved runs; references: {summary}")
    ref_cols = "".join(f" {'vs ' + name:>11}" for name in ref_rates)
    print(f"{'case':44} {'flows/s':>10} {'us/flow':>8} {'target':>9} {'':4}{ref_cols}")
    failed = 0
    for label, _, target in cases():
        value = statistics.median(rates[label])
        verdict = "" if not target else ("ok" if value >= target else "SLOW")
        failed += verdict == "SLOW"
        # Ratio per round, then the median: the reference saw that round's machine.
        ratios = "".join(
            f" {statistics.median(c / r for c, r in zip(rates[label], ref, strict=True)):>11.4f}"
            for ref in ref_rates.values()
        )
        target_text = f"{target:,}" if target else "-"
        figures = f"{value:>10,.0f} {1e6 / value:>8.1f} {target_text:>9} {verdict:4}"
        print(f"{label:44} {figures}{ratios}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
