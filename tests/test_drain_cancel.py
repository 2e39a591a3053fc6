"""A flow cut by cancellation (the drain deadline) is reset on both sides, logged cancelled."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import trio.lowlevel

from trio_tproxy.session import handle_tcp

from .test_session import runtime


async def test_cancelled_flow_is_reset_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime()
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    conn, _ = lst.accept()
    conn.setblocking(False)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x.example\r\n\r\n")
    dst = server.getsockname()
    caplog.set_level(logging.INFO, "trio_tproxy.access")
    with trio.move_on_after(1.0):
        async with trio.open_nursery() as n:
            n.start_soon(handle_tcp, rt, rt.config.inbounds[0], conn,
                         (__import__("ipaddress").ip_address("127.0.0.1"), client.getsockname()[1]), (__import__("ipaddress").ip_address(dst[0]), dst[1]))  # fmt: skip
            await trio.lowlevel.wait_readable(server)
            up, _ = server.accept()
            up.setblocking(False)
            while True:  # stream forever
                try:
                    up.send(b"x" * 1000)
                except BlockingIOError:
                    await trio.sleep(0.01)
                await trio.lowlevel.checkpoint()
    client.settimeout(2)
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass
    assert "cancelled" in caplog.text
