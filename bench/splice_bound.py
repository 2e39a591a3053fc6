"""The bound of any userspace transparent TCP relay on this machine (bench_gateway's
``splice-bound`` contender): what a relay gets when it does nothing but move bytes.

Accept on an IP_TRANSPARENT listener, connect to the original destination (the
accepted socket's local address) with the proxy mark, and give each direction a thread
of its own that loops on blocking splice(2) through a 1 MiB pipe: no event loop, no
wake-up of a scheduler, no per-chunk bookkeeping, zero-copy like trio-tproxy's and Go's
bulk path. A real proxy can only add work to this, so its throughput is the ceiling for
trio-tproxy, v2ray and sing-box alike; the rest of the gap to kernel forwarding is the
second TCP connection's receive and send path, which the kernel does not have to run.

    python bench/splice_bound.py PORT MARK    (in the gateway namespace; prints "ready")

IPv4 TCP only; a flow that fails just ends. Not for use as a proxy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import threading

IP_TRANSPARENT = 19
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


def pump(src: socket.socket, dst: socket.socket) -> None:
    """``src`` to ``dst`` until EOF, then half-close ``dst``; on an error both sockets
    are shut down, which ends the other direction's blocked splice too."""
    r, w = os.pipe()
    try:
        size = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)  # fails loudly (root has no cap)
        try:
            while n := os.splice(src.fileno(), w, size, flags=os.SPLICE_F_MOVE):
                while n:
                    n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(r)
        os.close(w)


def flow(client: socket.socket, mark: int) -> None:
    with client, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as upstream:
        try:
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.connect(client.getsockname())
        except OSError:
            return
        down = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        down.start()
        pump(client, upstream)
        down.join()


def main() -> None:
    port, mark = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(512)
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=flow, args=(client, mark), daemon=True).start()


if __name__ == "__main__":
    main()
