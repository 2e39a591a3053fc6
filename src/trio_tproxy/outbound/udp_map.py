"""Which remote a proxied UDP reply answers, for every link that sends through a relay
(SOCKS5 UDP ASSOCIATE, Shadowsocks, Trojan).

A datagram sent by name (a sniffed domain) is resolved by the proxy, so its reply comes
back naming an address the client never addressed: the client must see it from the
destination it did address. Replies naming an address we sent to by address are their
own remote (full cone): any remote may answer through the relay.
"""

from __future__ import annotations

from ..addr import Endpoint, IPAddress, unmap
from ..dial import ip_literal

# Remotes sent to by address, remembered to tell their replies from those of a name's
# resolved address; beyond this many, new ones are not remembered.
MAX_REMEMBERED = 1024


def datagram_host(dst: Endpoint, domain: str | None) -> IPAddress | str:
    """What a relay is asked to send a datagram to: the sniffed domain, else the IP."""
    return domain if domain is not None else (ip_literal(dst[0]) or dst[0])


class ReplyMap:
    def __init__(self) -> None:
        self._by_name: dict[tuple[str, int], Endpoint] = {}
        self._by_port: dict[int, Endpoint] = {}
        self._by_address: set[Endpoint] = set()

    def sent(self, dst: Endpoint, domain: str | None) -> None:
        """Note a datagram to ``dst``, sent as ``domain`` when that is not None."""
        if domain is not None:
            if len(self._by_name) < MAX_REMEMBERED or (domain, dst[1]) in self._by_name:
                self._by_name[(domain, dst[1])] = dst
                self._by_port[dst[1]] = dst
        elif len(self._by_address) < MAX_REMEMBERED:
            self._by_address.add(dst)

    def remote(self, host: IPAddress | str, port: int) -> Endpoint | None:
        """The address the client must see this reply from; None for a reply naming a
        name we never sent to (dropped).

        A reply naming a name we sent to, or coming from an address we never sent to
        on a port we sent to by name, answers that datagram: it is mapped back to the
        destination the client addressed. Anything else is its own remote.
        """
        if isinstance(host, str):
            return self._by_name.get((host, port))
        remote = (str(unmap(host)), port)
        if self._by_port and remote not in self._by_address:
            return self._by_port.get(port, remote)
        return remote
