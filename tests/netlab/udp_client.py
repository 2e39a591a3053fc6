"""Send one datagram from a *connected* UDP socket and print the reply.

    python3 udp_client.py HOST PORT

A connected socket only accepts datagrams from HOST:PORT, so a printed reply proves
the gateway answered from the original destination.  Exits 1 after 5 s of silence.
"""

from __future__ import annotations

import socket
import sys

REPLY_TIMEOUT = 5.0


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        sock.connect((host, port))
        sock.send(b"ping")
        try:
            print(sock.recv(2048).decode())
        except TimeoutError:
            sys.exit(1)


if __name__ == "__main__":
    main()
