"""Address -> domain, learnt from the answers the splitter gives (sing-box's reverse mapping).

A client that resolved ``example.org`` through us and then connects to its address gets
routed by ``example.org`` even when sniffing sees no domain (no SNI, encrypted client
hello, a protocol we do not sniff). Bounded: the least recently answered address is
forgotten first. The newest answer wins when two names share an address (CDNs): the
connection most likely follows the most recent lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from ..addr import IPAddress, unmap

__all__ = ["REVERSE_MAP_SIZE", "ReverseMap"]

# Addresses remembered; an entry is ~200 bytes, so the default costs ~13 MB at most.
REVERSE_MAP_SIZE = 65536


class ReverseMap:
    def __init__(self, size: int = REVERSE_MAP_SIZE) -> None:
        self.size = size
        self._names: OrderedDict[IPAddress, str] = OrderedDict()
        # told of what is learnt (the hub of worker processes passes it on)
        self.on_learn: Callable[[str, list[IPAddress]], None] | None = None

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, name: str, addresses: Iterable[IPAddress]) -> None:
        names = self._names
        addresses = list(addresses)
        for ip in addresses:
            names[ip] = name
            names.move_to_end(ip)
        while len(names) > self.size:
            names.popitem(last=False)
        if self.on_learn is not None:
            self.on_learn(name, addresses)

    def lookup(self, ip: IPAddress) -> str | None:
        return self._names.get(unmap(ip))
