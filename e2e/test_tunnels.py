"""Tunnels: the openai SDK's Realtime client over WebSocket through the proxy
(to a `websockets` mock of the Realtime API that records which key it got),
and a raw-socket CONNECT tunnel carrying a TLS handshake to a loopback TLS
server."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading

import openai
import pytest
import websockets.asyncio.server as ws_server

from conftest import CLIENT_KEY, OPENAI_REAL_KEY

REALTIME_KEY = "sk-real-realtime-2468"


class RealtimeMock:
    """A Realtime-shaped WebSocket server on loopback: it records each
    handshake's path and headers, greets with `session.created`, and answers
    every client event with an `echo` event carrying it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "mock did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def handler(conn):
            req = conn.request
            self.seen.append((req.path, {k.lower(): v for k, v in req.headers.raw_items()}))
            await conn.send(json.dumps({"type": "session.created", "event_id": "e0", "session": {"id": "s1"}}))
            async for message in conn:
                await conn.send(json.dumps({"type": "echo", "event_id": "e1", "got": json.loads(message)}))

        async def main():
            async with ws_server.serve(handler, "127.0.0.1", 0) as server:
                self.port = server.sockets[0].getsockname()[1]
                self.ready.set()
                await asyncio.Future()

        self.loop.run_until_complete(main())


@pytest.fixture(scope="module")
def realtime_mock():
    return RealtimeMock()


def test_openai_realtime_sdk_through_the_proxy(start_proxy, realtime_mock):
    p = start_proxy({
        "auth_keys": [CLIENT_KEY],
        "providers": [{"type": "openai", "host": "127.0.0.1/openai", "endpoint": f"127.0.0.1:{realtime_mock.port}",
                       "tls": False, "api_key": REALTIME_KEY}],
    })

    async def talk():
        client = openai.AsyncOpenAI(api_key=CLIENT_KEY, base_url=f"{p.base}/openai/v1")
        async with client.realtime.connect(model="gpt-realtime") as conn:
            first = await asyncio.wait_for(conn.recv(), 10)
            await conn.send({"type": "response.create"})
            second = await asyncio.wait_for(conn.recv(), 10)
            return first, second

    first, second = asyncio.run(talk())
    assert first.type == "session.created"
    assert second.type == "echo"
    path, headers = realtime_mock.seen[-1]
    assert path.startswith("/v1/realtime?") and "model=gpt-realtime" in path, path
    assert headers["authorization"] == f"Bearer {REALTIME_KEY}"
    assert all(CLIENT_KEY not in v for v in headers.values()), headers
    line = next(l for l in _wait_log(p, "status=101").splitlines() if "status=101" in l)
    assert "bytes_up=" in line and "bytes_down=" in line, line


def _wait_log(p, needle: str, limit: float = 5.0) -> str:
    import time

    deadline = time.monotonic() + limit
    while needle not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    return p.stderr()


def test_connect_tunnel_carries_a_tls_handshake(start_proxy, tls_files):
    # A loopback TLS server that answers one line.
    server_ctx = tls_files.server_context(["http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            line = tls.recv(100)
            tls.sendall(b"tls says: " + line)

    threading.Thread(target=serve_one, daemon=True).start()
    p = start_proxy({
        "auth_keys": [CLIENT_KEY],
        "connect_tunnel_enabled": True,
        "providers": [{"type": "openai", "host": "api.local", "endpoint": f"127.0.0.1:{port}", "tls": True,
                       "api_key": OPENAI_REAL_KEY}],
    })
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
        creds = base64.b64encode(f"user:{CLIENT_KEY}".encode()).decode()
        raw.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Proxy-Authorization: Basic {creds}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(1024)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_pem))
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"hello")
            assert tls.recv(100) == b"tls says: hello"
    listener.close()
