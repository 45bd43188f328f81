"""End-to-end fixtures: the real `openproxy` binary in front of recording mock
upstreams on 127.0.0.1.

* ``openproxy_bin``  builds the release binary once per session
  (``cargo build --release --locked``) unless ``OPENPROXY_BIN`` names one.
* ``MockUpstream``   a threaded HTTP/1.1 server that records every request
  (method, target, headers, de-chunked body) and answers like the real APIs
  (OpenAI chat completion JSON and SSE, Anthropic message JSON and SSE, Gemini
  generateContent JSON).
* ``ProxyProcess``   one running proxy: config written to a tmp dir, free
  loopback port, readiness polled with a deadline, SIGTERM then SIGKILL at
  teardown. Its stderr is attached to the report of every failing test.
* ``proxy``          the shared session proxy with every route the tests use;
  ``start_proxy``    a factory for tests that need their own configuration.
* ``tls_files``      a throwaway test CA (trustme) and a ``localhost`` /
  ``127.0.0.1`` server certificate, as PEM files; ``other_ca`` a second CA.
* ``TLSMockUpstream`` the same recording mock behind TLS (HTTP/1.1 by ALPN);
  ``H2MockUpstream`` a TLS mock that speaks only HTTP/2 (``h2`` package).
* ``https_proxy``    a proxy listening on ``http_port`` and ``https_port`` at once,
  with routes to the plain mocks and to the TLS mocks (see its docstring).

All addresses are loopback and every wait is bounded.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Keys. Client keys are what SDKs send to the proxy; real keys are what the
# proxy must send upstream. They never equal one another, so a leak is visible.
CLIENT_KEY = "client-key-e2e-4f1c"
SCOPED_CLIENT_KEY = "scoped-client-key-77aa"
WRONG_KEY = "definitely-not-a-valid-key"
OPENAI_REAL_KEY = "sk-real-openai-0123456789"
ANTHROPIC_REAL_KEY = "sk-ant-real-anthropic-abcdef"
GEMINI_REAL_KEY = "real-gemini-key-xyz"
SCOPED_REAL_KEY = "sk-real-scoped-key-555"
OAUTH_TOKEN = "oauth-token-123"
TLS_UPSTREAM_REAL_KEY = "sk-real-tls-upstream-9876"
H2_UPSTREAM_REAL_KEY = "sk-real-h2-upstream-5432"

CLIENT_SECRETS = (CLIENT_KEY, SCOPED_CLIENT_KEY, WRONG_KEY)

BUILD_TIMEOUT = 30 * 60  # a cold release build on a small machine
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# helpers


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port on which nothing listens (connections are refused)."""
    return free_port()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Polls `predicate` until it returns something truthy or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# the binary


@pytest.fixture(scope="session")
def openproxy_bin() -> Path:
    env_bin = os.environ.get("OPENPROXY_BIN")
    if env_bin:
        path = Path(env_bin)
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.exit(f"OPENPROXY_BIN={env_bin} is not an executable file", returncode=2)
        return path
    cmd = ["cargo", "build", "--release", "--locked", "--message-format=json-render-diagnostics"]
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=None,  # cargo's progress and diagnostics go straight to the terminal
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.exit(f"`{' '.join(cmd)}` took longer than {BUILD_TIMEOUT}s", returncode=2)
    if proc.returncode != 0:
        pytest.exit(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}", returncode=2)
    executable = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "openproxy" and msg.get("executable"):
            executable = msg["executable"]
    if executable is None:
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
        executable = target_dir / "release" / "openproxy"
    path = Path(executable)
    if not path.is_file():
        pytest.exit(f"cargo build succeeded but {path} does not exist", returncode=2)
    return path


# --------------------------------------------------------------------------
# mock upstream


@dataclass
class Recorded:
    method: str
    target: str  # path with query, exactly as received
    headers: list[tuple[str, str]]  # in order, names as sent
    body: bytes
    chunked: bool
    received_at: float  # time.monotonic()

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The value of `name` (case-insensitive); several values are joined with ", "."""
        values = self.header_all(name)
        return ", ".join(values) if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {text}\n\n".encode()


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def openai_stream_pieces(prompt: str) -> list[str]:
    return ["Hello", " from", " the", " mock: ", prompt]


def anthropic_stream_pieces(prompt: str) -> list[str]:
    return ["Streamed", " reply", " to: ", prompt]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockUpstream/1.0"
    timeout = 60  # idle kept-alive connections from the proxy's pool end eventually
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # --- request side -------------------------------------------------

    def _read_body(self) -> tuple[bytes, bool]:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    raise ConnectionError("EOF inside chunked body")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers until the empty line
                    while True:
                        line = self.rfile.readline(65537)
                        if line in (b"\r\n", b"\n", b""):
                            break
                    return bytes(body), True
                body += self.rfile.read(size)
                self.rfile.readline(3)  # CRLF after the chunk data
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), False

    def _handle(self) -> None:
        body, chunked = self._read_body()
        rec = Recorded(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            chunked=chunked,
            received_at=time.monotonic(),
        )
        self.server.mock._record(rec)
        self.server.mock._respond(self, rec)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    # --- response side ------------------------------------------------

    def send_json(self, status: int, payload: Any, extra_headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def send_sse(self, events: list[bytes], delay: float) -> None:
        """Chunked `text/event-stream`, one HTTP chunk per event, `delay` apart."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        mock = self.server.mock
        for i, event in enumerate(events):
            if i and delay:
                time.sleep(delay)
            # Recorded before the write: once the last event is out, the client may
            # finish and read this list before a later append would have run.
            mock._sent_event(time.monotonic())
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: bursts of concurrent requests open many connections at once
    mock: "MockUpstream"


class _TLSServer(_Server):
    """`_Server` behind TLS. The handshake runs in the connection's own thread
    (not in the accept loop), so a client that fails it blocks nobody; each
    failure is recorded on the mock (`MockUpstream.tls_errors`)."""

    ssl_context: ssl.SSLContext

    def finish_request(self, request, client_address) -> None:
        try:
            request.settimeout(10)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.mock._tls_error(e)
            return
        with self.mock._cond:
            self.mock.alpn.append(tls.selected_alpn_protocol())
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            self.shutdown_request(tls)

    def handle_error(self, request, client_address) -> None:
        pass  # the proxy closing a pooled connection is not an error worth a traceback


class MockUpstream:
    """A recording upstream. Responses are chosen by path:

    * ``POST /v1/chat/completions``           OpenAI chat completion (SSE if ``"stream": true``)
    * ``POST /v1/messages``                   Anthropic message (SSE if ``"stream": true``)
    * ``POST /v1beta/models/<m>:generateContent``  Gemini
    * anything else                            ``200 {"ok": true, "path": ...}``

    A request header ``x-mock-chunk-delay: <seconds>`` sets the pause between SSE
    events (default 0.05 s). ``x-mock-status: <code>`` makes the mock answer
    that status with a provider-shaped error.
    """

    def __init__(self, name: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        if ssl_context is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
        else:
            self._server = _TLSServer(("127.0.0.1", 0), _Handler)
            self._server.ssl_context = ssl_context
        self._server.mock = self
        self.port = self._server.server_address[1]
        self._cond = threading.Condition()
        self._requests: list[Recorded] = []
        self.event_send_times: list[float] = []
        self.tls_errors: list[Exception] = []  # failed TLS handshakes (TLS mocks only)
        self.alpn: list[str | None] = []  # ALPN protocol of each TLS connection
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"mock-{name}", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def tls_endpoint(self) -> str:
        """The endpoint by name, matching the `localhost` certificate of TLS mocks."""
        return f"localhost:{self.port}"

    def reset(self) -> None:
        with self._cond:
            self._requests.clear()
            self.event_send_times.clear()
            self.tls_errors.clear()
            self.alpn.clear()

    def _tls_error(self, e: Exception) -> None:
        with self._cond:
            self.tls_errors.append(e)
            self._cond.notify_all()

    def wait_for_tls_error(self, timeout: float = 5.0) -> list[Exception]:
        with self._cond:
            if not self._cond.wait_for(lambda: self.tls_errors, timeout=timeout):
                raise AssertionError(f"mock {self.name}: no failed TLS handshake within {timeout}s")
            return list(self.tls_errors)

    @property
    def requests(self) -> list[Recorded]:
        with self._cond:
            return list(self._requests)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[Recorded]:
        """Waits (bounded) until at least `count` requests were recorded."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout=timeout):
                raise AssertionError(f"mock {self.name}: expected {count} request(s) within {timeout}s, got {len(self._requests)}")
            return list(self._requests)

    def only_request(self) -> Recorded:
        reqs = self.wait_for(1)
        assert len(reqs) == 1, f"mock {self.name}: expected exactly one request, got {[(r.method, r.target) for r in reqs]}"
        return reqs[0]

    def _record(self, rec: Recorded) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()

    def _sent_event(self, at: float) -> None:
        with self._cond:
            self.event_send_times.append(at)

    # --- scripted answers ---------------------------------------------

    def _respond(self, h: _Handler, rec: Recorded) -> None:
        status = rec.header("x-mock-status")
        if status:
            h.send_json(int(status), {"error": {"message": f"mock {self.name} says {status}", "type": "mock_error", "code": None}})
            return
        delay = float(rec.header("x-mock-chunk-delay") or 0.05)
        try:
            payload = rec.json() if rec.body else {}
        except ValueError:
            payload = {}
        path = rec.path
        if rec.method == "POST" and path == "/v1/chat/completions":
            self._openai(h, payload, delay)
        elif rec.method == "POST" and path == "/v1/messages":
            self._anthropic(h, payload, delay)
        elif rec.method == "POST" and path.startswith("/v1beta/models/") and path.endswith(":generateContent"):
            self._gemini(h, payload, path)
        else:
            h.send_json(200, {"ok": True, "mock": self.name, "method": rec.method, "path": path})

    def _openai(self, h: _Handler, req: dict, delay: float) -> None:
        model = req.get("model", "gpt-4o-mini")
        prompt = _last_user_text(req.get("messages", []))
        created = int(time.time())
        cid = "chatcmpl-e2e0001"
        if not req.get("stream"):
            h.send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_e2e",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"Echo: {prompt}", "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                },
                {"x-request-id": "req_mock_openai"},
            )
            return

        # As OpenAI does when asked for usage: every chunk carries "usage":
        # null, and one more chunk with no choices carries the usage.
        with_usage = bool((req.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish: str | None) -> bytes:
            body = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_e2e",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if with_usage:
                body["usage"] = None
            return _sse(body)

        events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        events += [chunk({"content": piece}, None) for piece in openai_stream_pieces(prompt)]
        events.append(chunk({}, "stop"))
        if with_usage:
            usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
            events.append(
                _sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fp_e2e",
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        events.append(_sse("[DONE]"))
        h.send_sse(events, delay)

    def _anthropic(self, h: _Handler, req: dict, delay: float) -> None:
        model = req.get("model", "claude-3-5-haiku-20241022")
        prompt = _last_user_text(req.get("messages", []))
        mid = "msg_01E2EMOCK"
        if not req.get("stream"):
            h.send_json(
                200,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": f"Echo: {prompt}"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 12, "output_tokens": 4},
                },
                {"request-id": "req_mock_anthropic"},
            )
            return
        pieces = anthropic_stream_pieces(prompt)
        events = [
            _sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 12, "output_tokens": 1},
                    },
                },
                "message_start",
            ),
            _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            _sse({"type": "ping"}, "ping"),
        ]
        events += [
            _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}, "content_block_delta")
            for p in pieces
        ]
        events += [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": len(pieces)}},
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        h.send_sse(events, delay)

    def _gemini(self, h: _Handler, req: dict, path: str) -> None:
        model = path[len("/v1beta/models/") : -len(":generateContent")]
        texts = [p.get("text", "") for c in req.get("contents", []) for p in c.get("parts", [])]
        h.send_json(
            200,
            {
                "candidates": [
                    {
                        "content": {"parts": [{"text": f"Echo: {' '.join(texts)}"}], "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7},
                "modelVersion": model,
            },
        )


class H2MockUpstream(MockUpstream):
    """A recording upstream that speaks only HTTP/2 over TLS (ALPN ``h2``), one
    thread per connection. ``POST /v1/chat/completions`` gets the OpenAI-shaped
    JSON answer (``"Echo: <prompt>"``); anything else ``200 {"ok": true, ...}``.
    Recorded headers include the pseudo-headers (``:authority`` ...).
    ``connections`` counts accepted TCP connections."""

    def __init__(self, name: str, ssl_context: ssl.SSLContext) -> None:
        import h2.config  # noqa: F401 - fail early when the package is missing

        self.name = name
        self._ssl_context = ssl_context
        self._cond = threading.Condition()
        self._requests: list[Recorded] = []
        self.event_send_times: list[float] = []
        self.tls_errors: list[Exception] = []
        self.alpn: list[str | None] = []
        self.connections = 0
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"mock-{name}", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        super().reset()
        with self._cond:
            self.connections = 0

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        import h2.config
        import h2.connection
        import h2.events

        try:
            raw.settimeout(10)
            tls = self._ssl_context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            self._tls_error(e)
            return
        with self._cond:
            self.alpn.append(tls.selected_alpn_protocol())
        tls.settimeout(60)
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        try:
            tls.sendall(conn.data_to_send())
            while not self._stopping.is_set():
                data = tls.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = (list(event.headers), bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        self._answer(conn, event.stream_id, headers, bytes(body))
                    elif isinstance(event, h2.events.StreamReset):
                        streams.pop(event.stream_id, None)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        tls.sendall(conn.data_to_send())
                        return
                tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            return
        finally:
            tls.close()

    def _answer(self, conn, stream_id: int, headers: list[tuple[str, str]], body: bytes) -> None:
        pseudo = dict((k, v) for k, v in headers if k.startswith(":"))
        rec = Recorded(
            method=pseudo.get(":method", ""),
            target=pseudo.get(":path", ""),
            headers=headers,
            body=body,
            chunked=False,
            received_at=time.monotonic(),
        )
        self._record(rec)
        try:
            req = rec.json() if body else {}
        except ValueError:
            req = {}
        if rec.method == "POST" and rec.path == "/v1/chat/completions":
            prompt = _last_user_text(req.get("messages", []))
            payload = {
                "id": "chatcmpl-h2mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.get("model", "gpt-4o-mini"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"Echo: {prompt}"}, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            }
        else:
            payload = {"ok": True, "mock": self.name, "method": rec.method, "path": rec.path}
        data = json.dumps(payload).encode()
        conn.send_headers(
            stream_id,
            [(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(data))), ("x-mock-protocol", "h2")],
        )
        conn.send_data(stream_id, data, end_stream=True)


# --------------------------------------------------------------------------
# the proxy process


_RUNNING: list["ProxyProcess"] = []


class ProxyProcess:
    def __init__(self, binary: Path, config: dict, workdir: Path, name: str = "proxy", https: "TLSFiles | None" = None) -> None:
        self.port = free_port()
        config = {"http_port": self.port, "http_bind_address": "127.0.0.1", **config}
        # With `https`, also serve TLS on a second port with the test certificate.
        self.https_port: int | None = None
        if https is not None:
            self.https_port = free_port()
            config = {
                "https_port": self.https_port,
                "https_bind_address": "127.0.0.1",
                "cert_file": str(https.cert_pem),
                "private_key_file": str(https.key_pem),
                **config,
            }
        self.config = config
        workdir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no YAML library needed, and quoting is exact.
        self.config_path = workdir / f"{name}.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPROXY_")}
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            [str(binary), "start", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            env=env,
            cwd=workdir,
        )
        _RUNNING.append(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_base(self) -> str:
        """`https://localhost:<https_port>`: the name the test certificate is for."""
        assert self.https_port is not None, "this proxy has no https_port"
        return f"https://localhost:{self.https_port}"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError as e:
            return f"(stderr unavailable: {e})"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = [port for port in (self.port, self.https_port) if port is not None]
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"openproxy exited with code {code} before listening\n--- config ---\n{self.config_path.read_text()}\n--- stderr ---\n{self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                    pending.pop(0)
                    if not pending:
                        return
                    continue
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(f"openproxy did not accept connections on port {pending[0]} within {STARTUP_TIMEOUT}s\n--- stderr ---\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._stderr.close()
        if self in _RUNNING:
            _RUNNING.remove(self)
        return self.proc.returncode


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proxy in list(_RUNNING):
            report.sections.append((f"openproxy stderr (port {proxy.port})", proxy.stderr()[-20000:]))


# --------------------------------------------------------------------------
# fixtures


@dataclass
class Mocks:
    openai: MockUpstream
    anthropic: MockUpstream
    oauth: MockUpstream
    gemini: MockUpstream
    scoped: MockUpstream
    forward: MockUpstream
    all: list[MockUpstream] = field(default_factory=list)

    def reset(self) -> None:
        for m in self.all:
            m.reset()

    def total_requests(self) -> int:
        return sum(len(m.requests) for m in self.all)


@pytest.fixture(scope="session")
def _mocks() -> Iterator[Mocks]:
    names = ["openai", "anthropic", "oauth", "gemini", "scoped", "forward"]
    made = {n: MockUpstream(n) for n in names}
    mocks = Mocks(**made, all=list(made.values()))
    yield mocks
    for m in mocks.all:
        m.close()


@pytest.fixture
def mocks(_mocks: Mocks) -> Mocks:
    """The session mocks, with their recordings cleared for this test."""
    _mocks.reset()
    return _mocks


@pytest.fixture(scope="session")
def down_port() -> int:
    return closed_port()


def _provider(kind: str, host: str, endpoint: str, **extra: Any) -> dict:
    return {"type": kind, "host": host, "endpoint": endpoint, "tls": False, **extra}


@pytest.fixture(scope="session")
def proxy(openproxy_bin: Path, _mocks: Mocks, down_port: int, tmp_path_factory) -> Iterator[ProxyProcess]:
    """The shared proxy. Routes (all on Host 127.0.0.1[:port] unless noted):

    /openai           -> openai mock        (key OPENAI_REAL_KEY)
    Host openai.test  -> openai mock        (same provider settings, routed by name)
    /anthropic        -> anthropic mock     (key ANTHROPIC_REAL_KEY)
    /anthropic-oauth  -> oauth mock         (api_key "$(printf oauth-token-123)")
    /gemini           -> gemini mock        (key GEMINI_REAL_KEY)
    /scoped           -> scoped mock        (openai, own auth_keys [SCOPED_CLIENT_KEY])
    /forward          -> forward mock       (type forward)
    /down             -> closed port        (openai)
    """
    m = _mocks
    config = {
        "auth_keys": [CLIENT_KEY],
        "health_check": {"enabled": False, "interval": 60},
        "connect_timeout": 3,
        "providers": [
            _provider("openai", "127.0.0.1/openai", m.openai.endpoint, api_key=OPENAI_REAL_KEY),
            _provider("openai", "openai.test", m.openai.endpoint, api_key=OPENAI_REAL_KEY),
            _provider("anthropic", "127.0.0.1/anthropic", m.anthropic.endpoint, api_key=ANTHROPIC_REAL_KEY),
            _provider("anthropic", "127.0.0.1/anthropic-oauth", m.oauth.endpoint, api_key=f"$(printf {OAUTH_TOKEN})"),
            _provider("gemini", "127.0.0.1/gemini", m.gemini.endpoint, api_key=GEMINI_REAL_KEY),
            _provider("openai", "127.0.0.1/scoped", m.scoped.endpoint, api_key=SCOPED_REAL_KEY, auth_keys=[SCOPED_CLIENT_KEY]),
            _provider("forward", "127.0.0.1/forward", m.forward.endpoint),
            _provider("openai", "127.0.0.1/down", f"127.0.0.1:{down_port}", api_key="sk-never-used"),
        ],
    }
    p = ProxyProcess(openproxy_bin, config, tmp_path_factory.mktemp("proxy"), name="main")
    yield p
    p.stop()


@pytest.fixture
def start_proxy(openproxy_bin: Path, tmp_path: Path) -> Iterator[Callable[[dict], ProxyProcess]]:
    """Starts extra proxies with a test's own configuration; all stopped at teardown."""
    started: list[ProxyProcess] = []

    def start(config: dict, https: TLSFiles | None = None) -> ProxyProcess:
        p = ProxyProcess(openproxy_bin, config, tmp_path, name=f"proxy{len(started)}", https=https)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


# --------------------------------------------------------------------------
# TLS: a throwaway CA, certificates, TLS mocks and a proxy serving HTTPS


@dataclass
class TLSFiles:
    """A test CA and a server certificate for `localhost` and `127.0.0.1`."""

    ca: Any  # trustme.CA
    ca_pem: Path
    cert_pem: Path  # the leaf (then any intermediates): what cert_file wants
    key_pem: Path  # PKCS#8

    def client_context(self) -> ssl.SSLContext:
        """A fresh client context trusting only this CA (httpx sets ALPN on it,
        so each client gets its own)."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def server_context(self, alpn: list[str]) -> ssl.SSLContext:
        """A server context with a fresh `localhost` / `127.0.0.1` leaf of this CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
        ctx.set_alpn_protocols(alpn)
        return ctx


def _make_tls_files(directory: Path) -> TLSFiles:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = TLSFiles(ca=ca, ca_pem=directory / "ca.pem", cert_pem=directory / "certificate.pem", key_pem=directory / "private-key.pem")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    files.cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key_pem))
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    return _make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> TLSFiles:
    """A second, unrelated CA (and leaf): trusting it must not help with `tls_files`."""
    return _make_tls_files(tmp_path_factory.mktemp("tls-other"))


@dataclass
class TLSMocks:
    h1: MockUpstream  # OpenAI-shaped, TLS, ALPN http/1.1 only
    h2: H2MockUpstream  # OpenAI-shaped, TLS, ALPN h2 only

    def reset(self) -> None:
        self.h1.reset()
        self.h2.reset()


@pytest.fixture(scope="session")
def _tls_mocks(tls_files: TLSFiles) -> Iterator[TLSMocks]:
    made = TLSMocks(
        h1=MockUpstream("tls-h1", ssl_context=tls_files.server_context(["http/1.1"])),
        h2=H2MockUpstream("tls-h2", ssl_context=tls_files.server_context(["h2"])),
    )
    yield made
    made.h1.close()
    made.h2.close()


@pytest.fixture
def tls_mocks(_tls_mocks: TLSMocks) -> TLSMocks:
    """The session TLS mocks, with their recordings cleared for this test."""
    _tls_mocks.reset()
    return _tls_mocks


@pytest.fixture(scope="session")
def https_proxy(openproxy_bin: Path, _mocks: Mocks, _tls_mocks: TLSMocks, tls_files: TLSFiles, tmp_path_factory) -> Iterator[ProxyProcess]:
    """A proxy on `http_port` and `https_port` at once (certificate from
    `tls_files`). Routes:

    localhost/openai, 127.0.0.1/openai -> openai mock (plain)  (key OPENAI_REAL_KEY)
    localhost/tls-up        -> TLS HTTP/1.1 mock, ca_file = test CA (TLS_UPSTREAM_REAL_KEY)
    localhost/tls-untrusted -> the same TLS mock, no ca_file (web roots only)
    localhost/h2-up         -> TLS HTTP/2 mock, ca_file = test CA   (H2_UPSTREAM_REAL_KEY)
    """
    m, t = _mocks, _tls_mocks
    ca = str(tls_files.ca_pem)
    config = {
        "auth_keys": [CLIENT_KEY],
        "health_check": {"enabled": False, "interval": 60},
        "connect_timeout": 3,
        "providers": [
            _provider("openai", "localhost/openai", m.openai.endpoint, api_key=OPENAI_REAL_KEY),
            _provider("openai", "127.0.0.1/openai", m.openai.endpoint, api_key=OPENAI_REAL_KEY),
            _provider("openai", "localhost/tls-up", t.h1.tls_endpoint, api_key=TLS_UPSTREAM_REAL_KEY, tls=True, ca_file=ca),
            _provider("openai", "localhost/tls-untrusted", t.h1.tls_endpoint, api_key=TLS_UPSTREAM_REAL_KEY, tls=True),
            _provider("openai", "localhost/h2-up", t.h2.tls_endpoint, api_key=H2_UPSTREAM_REAL_KEY, tls=True, ca_file=ca),
        ],
    }
    p = ProxyProcess(openproxy_bin, config, tmp_path_factory.mktemp("https-proxy"), name="https", https=tls_files)
    yield p
    p.stop()


def assert_no_client_secret(rec: Recorded) -> None:
    """No client key anywhere in what the upstream saw: headers, target or body."""
    for name, value in rec.headers:
        for secret in CLIENT_SECRETS:
            assert secret not in value, f"client key leaked upstream in header {name}: {value!r}"
    for secret in CLIENT_SECRETS:
        assert secret not in rec.target, f"client key leaked upstream in the target {rec.target!r}"
        assert secret.encode() not in rec.body, "client key leaked upstream in the body"
    assert "proxy-authorization" not in rec.header_names()
