"""UDP over TPROXY: full-cone sessions, replies from the right address, bounded tables.

    inbound/udp.py  the transparent listener: recvmsg + IP(V6)_ORIGDSTADDR, dual stack
    service.py      one UDP inbound: listener, session table, janitor, drain
    session.py      one client source: flows per remote (routed), links per outbound
    flow.py         a flow's and a link slot's state, with their bounded queues
    replies.py      transparent reply sockets bound to remote addresses (LRU)
    rawsend.py      + packet.py: the raw-packet reply when a local service owns the port
    lru.py          the least-recently-active table both caches are built on

Below it: outbound/udp_socket.py (marked upstream sockets bound to a concrete address,
direct's link), inbound/gso.py (bursts to one destination as one UDP_SEGMENT sendmsg),
limits.py (limits from policy, counters). Outbounds carry UDP through ``open_udp``
(outbound/interface.py: UdpRequest, UdpLink).
"""
