"""A LAN in three namespaces: client -- gateway -- server, dual stack.

    client                 gateway                      server
    10.77.1.2  ---LAN---  10.77.1.1 | 10.77.2.1  ---WAN---  10.77.2.2
    fd77:1::2             fd77:1::1 | fd77:2::1             fd77:2::2
                                                            + 10.77.3.1-2, fd77:3::1-2
    gateway: forwarding on; 10.77.9.0/24 and fd77:9::/64 are `unreachable` routes

The server's extra addresses are a second remote "network" behind the gateway, so a
test can tell two destinations apart (routing by IP, full-cone UDP).  The unreachable
ranges make a connect fail at once with EHOSTUNREACH instead of timing out.

Setup is ~11 short subprocesses (one `sysctl` and one `ip -batch` per namespace);
IPv6 duplicate address detection is off so addresses are usable immediately.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from netlab.namespace import Netns, Reservation, run_checked
from trio_tproxy.firewall.nft import (
    render_ip_rules,
    render_ip_rules_removal,
    render_nft,
    render_nft_removal,
)
from trio_tproxy.firewall.plan import DiversionPlan

UNREACHABLE_NET4 = "10.77.9.0/24"
UNREACHABLE_NET6 = "fd77:9::/64"

_SETUP_TIMEOUT = 10.0
# DAD is disabled, so addresses should never be tentative; the wait is a safety net.
_TENTATIVE_POLLS = 100
_TENTATIVE_INTERVAL = 0.01

_NO_DAD_SYSCTLS = (
    # Applies to interfaces created afterwards, in this namespace (the veths).
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.accept_dad=0",
)
_GATEWAY_SYSCTLS = (
    *_NO_DAD_SYSCTLS,
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    # Fresh namespaces start with rp_filter=0, but be explicit: strict reverse-path
    # filtering drops TPROXY'd packets whose route lookup is steered by the fwmark.
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    # Tests hit the unreachable range repeatedly; the default 1/s ICMP error rate
    # limit would turn the second prompt failure into a timeout.
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv6.icmp.ratelimit=0",
)


class ClientNode(Netns):
    """The LAN host whose traffic the gateway diverts."""

    ip4 = "10.77.1.2"
    ip6 = "fd77:1::2"

    def __init__(self, name: str, workdir: Path, *, iface: str) -> None:
        super().__init__(name, workdir)
        self.iface = iface


class ServerNode(Netns):
    """The remote side: the internet as far as the client is concerned."""

    ip4 = "10.77.2.2"
    ip6 = "fd77:2::2"
    # On the server's loopback, routed by the gateway via ip4/ip6.
    extra_net4 = "10.77.3.0/24"
    extra_net6 = "fd77:3::/64"
    extra_ip4: tuple[str, ...] = ("10.77.3.1", "10.77.3.2")
    extra_ip6: tuple[str, ...] = ("fd77:3::1", "fd77:3::2")

    def __init__(self, name: str, workdir: Path, *, iface: str) -> None:
        super().__init__(name, workdir)
        self.iface = iface


class GatewayNode(Netns):
    """The router between LAN and WAN, where the proxy and its diversion live."""

    lan_ip4 = "10.77.1.1"
    lan_ip6 = "fd77:1::1"
    wan_ip4 = "10.77.2.1"
    wan_ip6 = "fd77:2::1"

    def __init__(self, name: str, workdir: Path, *, lan_if: str, wan_if: str) -> None:
        super().__init__(name, workdir)
        self.lan_if = lan_if
        self.wan_if = wan_if

    def install_tproxy(self, plan: DiversionPlan) -> None:
        """Apply the plan's nft table and policy routing (idempotent)."""
        self.run(["nft", "-f", "-"], input=render_nft(plan))
        for argv in render_ip_rules_removal(plan):
            self.run(argv, check=False)
        for argv in render_ip_rules(plan):
            self.run(argv)

    def remove_tproxy(self, plan: DiversionPlan) -> None:
        """Undo `install_tproxy`; harmless if it was never applied."""
        self.run(["nft", "-f", "-"], input=render_nft_removal(plan))
        for argv in render_ip_rules_removal(plan):
            self.run(argv, check=False)

    def nft_list(self) -> str:
        return self.run(["nft", "list", "ruleset"]).stdout


class Lab:
    """Three namespaces wired as a LAN; a context manager that always cleans up."""

    unreachable_net4 = UNREACHABLE_NET4
    unreachable_net6 = UNREACHABLE_NET6
    unreachable_ip4 = "10.77.9.1"
    unreachable_ip6 = "fd77:9::1"

    def __init__(
        self, reservation: Reservation, client: ClientNode, gateway: GatewayNode, server: ServerNode
    ) -> None:
        self._reservation = reservation
        self.tag = reservation.tag
        self.workdir = reservation.workdir
        self.client = client
        self.gateway = gateway
        self.server = server

    @classmethod
    def create(cls, prefix: str = "tpt") -> Lab:
        reservation = Reservation(prefix)
        try:
            return cls._build(reservation)
        except BaseException:
            reservation.close()
            raise

    @classmethod
    def _build(cls, reservation: Reservation) -> Lab:
        tag = reservation.tag
        client = reservation.add_namespace("c", lambda n, w: ClientNode(n, w, iface=f"{tag}-c"))
        gateway = reservation.add_namespace(
            "g", lambda n, w: GatewayNode(n, w, lan_if=f"{tag}-gl", wan_if=f"{tag}-gw")
        )
        server = reservation.add_namespace("s", lambda n, w: ServerNode(n, w, iface=f"{tag}-s"))
        # Before the veths exist: devices copy the namespace's `default` sysctls.
        gateway.run(["sysctl", "-q", "-w", *_GATEWAY_SYSCTLS])
        for host in (client, server):
            host.run(["sysctl", "-q", "-w", *_NO_DAD_SYSCTLS])
        _veth(client, client.iface, gateway, gateway.lan_if)
        _veth(gateway, gateway.wan_if, server, server.iface)
        _ip_batch(gateway, _gateway_script(gateway, server))
        _ip_batch(
            client,
            _host_script(client.iface, client.ip4, client.ip6, gateway.lan_ip4, gateway.lan_ip6),
        )
        _ip_batch(server, _server_script(server, gateway))
        for netns in (client, gateway, server):
            _wait_not_tentative(netns)
        return cls(reservation, client, gateway, server)

    @property
    def nodes(self) -> tuple[ClientNode, GatewayNode, ServerNode]:
        return (self.client, self.gateway, self.server)

    def close(self) -> None:
        """Kill every process in the namespaces, delete them; idempotent."""
        self._reservation.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    # Both ends are created inside their namespaces; neither ever exists on the host.
    argv = ["ip", "link", "add", a_name, "netns", a.name, "type", "veth"]
    argv += ["peer", "name", b_name, "netns", b.name]
    run_checked(argv, timeout=_SETUP_TIMEOUT)


def _ip_batch(netns: Netns, lines: list[str]) -> None:
    netns.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", timeout=_SETUP_TIMEOUT)


def _gateway_script(gateway: GatewayNode, server: ServerNode) -> list[str]:
    lan, wan = gateway.lan_if, gateway.wan_if
    return [
        "link set lo up",
        f"link set {lan} up",
        f"link set {wan} up",
        f"addr add {gateway.lan_ip4}/24 dev {lan}",
        f"addr add {gateway.lan_ip6}/64 dev {lan} nodad",
        f"addr add {gateway.wan_ip4}/24 dev {wan}",
        f"addr add {gateway.wan_ip6}/64 dev {wan} nodad",
        f"route add {server.extra_net4} via {server.ip4} dev {wan}",
        f"route add {server.extra_net6} via {server.ip6} dev {wan}",
        f"route add unreachable {UNREACHABLE_NET4}",
        f"route add unreachable {UNREACHABLE_NET6}",
    ]


def _host_script(iface: str, ip4: str, ip6: str, router4: str, router6: str) -> list[str]:
    return [
        "link set lo up",
        f"link set {iface} up",
        f"addr add {ip4}/24 dev {iface}",
        f"addr add {ip6}/64 dev {iface} nodad",
        f"route add default via {router4} dev {iface}",
        f"route add default via {router6} dev {iface}",
    ]


def _server_script(server: ServerNode, gateway: GatewayNode) -> list[str]:
    lines = _host_script(server.iface, server.ip4, server.ip6, gateway.wan_ip4, gateway.wan_ip6)
    lines += [f"addr add {ip}/32 dev lo" for ip in server.extra_ip4]
    lines += [f"addr add {ip}/128 dev lo nodad" for ip in server.extra_ip6]
    return lines


def _wait_not_tentative(netns: Netns) -> None:
    for _ in range(_TENTATIVE_POLLS):
        if not netns.run(["ip", "-6", "addr", "show", "tentative"]).stdout.strip():
            return
        time.sleep(_TENTATIVE_INTERVAL)
    raise TimeoutError(f"IPv6 addresses in {netns.name} stay tentative")
