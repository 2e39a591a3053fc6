"""The built-in DNS splitter (v2ray's DNS module, reference section 5).

Pure (no trio, no sockets): :mod:`.message` (clients' queries, our replies),
:mod:`.exchange` (our queries to upstreams, their answers), :mod:`.policy` (server
order, expect_ips, hosts), :mod:`.http1` (DoH's HTTP/1.1), :mod:`.reverse` (address ->
domain). With trio: :mod:`.cache`, :mod:`.dialer` + :mod:`.upstream` (asking one
server), :mod:`.serverset` (the configured servers and their routes), :mod:`.service`
(the splitter), :mod:`.answer` (client messages -> replies), :mod:`.server` +
:mod:`.stream` + :mod:`.datagram` (the ``dns.listen`` listener, DNS over TCP and UDP,
shared with the ``dns`` outbound).

This file imports nothing, so the pure modules load without trio.
"""
