"""HTTPS and HTTP/2 through the real proxy binary.

Downstream: the proxy serves `https_port` (and `http_port` at the same time)
with a certificate from a throwaway test CA; clients negotiate HTTP/2 or
HTTP/1.1 by ALPN. Upstream: the proxy talks TLS to mocks whose certificates only
the test CA vouches for, trusting it through `ca_file`, and HTTP/2 to an
upstream that offers only `h2`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest
from openai import OpenAI

from conftest import (
    CLIENT_KEY,
    H2_UPSTREAM_REAL_KEY,
    OPENAI_REAL_KEY,
    TLS_UPSTREAM_REAL_KEY,
    assert_no_client_secret,
    openai_stream_pieces,
    wait_until,
)

CHAT_PATH = "/openai/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "ping over tls"}]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def chat(prompt: str, stream: bool = False) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    if stream:
        body["stream"] = True
    return body


def https_client(proxy, tls_files, http2: bool, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=proxy.https_base, verify=tls_files.client_context(), http2=http2, timeout=15.0, **kwargs)


def sse_content(text: str) -> str:
    """The concatenated `delta.content` of an OpenAI SSE body."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[len("data: ") :])["choices"]:
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


def assert_swapped(rec, prompt: str, key: str = OPENAI_REAL_KEY) -> None:
    assert rec.method == "POST"
    assert rec.target == "/v1/chat/completions", "the route prefix must be stripped"
    assert rec.header_all("authorization") == [f"Bearer {key}"]
    assert_no_client_secret(rec)
    assert rec.json()["messages"] == [{"role": "user", "content": prompt}]


# --- downstream: HTTPS and HTTP/2 ----------------------------------------


def test_https_request_negotiates_http2_routes_and_swaps_key(https_proxy, mocks, tls_files):
    with https_client(https_proxy, tls_files, http2=True) as c:
        r = c.post(CHAT_PATH, headers=AUTH, json=chat("hello h2"))
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/2"
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hello h2"
    assert r.headers.get("x-request-id") == "req_mock_openai"
    rec = mocks.openai.only_request()
    assert_swapped(rec, "hello h2")
    # `:authority` (localhost:<https_port>) played the role of Host for routing;
    # upstream gets the provider's own Host.
    assert rec.header_all("host") == [mocks.openai.endpoint]


def test_https_by_ip_address_and_plain_http_port_at_once(https_proxy, mocks, tls_files):
    """The certificate's IP SAN serves `https://127.0.0.1:<port>`, and the plain
    `http_port` of the same process keeps working beside `https_port`."""
    with httpx.Client(verify=tls_files.client_context(), http2=True, timeout=15.0) as c:
        r = c.post(f"https://127.0.0.1:{https_proxy.https_port}{CHAT_PATH}", headers=AUTH, json=chat("by ip"))
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/2"
    assert r.json()["choices"][0]["message"]["content"] == "Echo: by ip"
    with httpx.Client(timeout=15.0) as c:
        r = c.post(f"{https_proxy.base}{CHAT_PATH}", headers=AUTH, json=chat("plain port"))
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/1.1"
    assert r.json()["choices"][0]["message"]["content"] == "Echo: plain port"
    recs = mocks.openai.wait_for(2)
    assert len(recs) == 2
    assert_swapped(recs[0], "by ip")
    assert_swapped(recs[1], "plain port")


def test_http1_only_client_over_https(https_proxy, mocks, tls_files):
    with https_client(https_proxy, tls_files, http2=False) as c:
        r1 = c.post(CHAT_PATH, headers=AUTH, json=chat("h1 one"))
        r2 = c.post(CHAT_PATH, headers=AUTH, json=chat("h1 two"))  # same kept-alive TLS connection
    for r, prompt in ((r1, "h1 one"), (r2, "h1 two")):
        assert r.status_code == 200, r.text
        assert r.http_version == "HTTP/1.1"
        assert r.json()["choices"][0]["message"]["content"] == f"Echo: {prompt}"
    recs = mocks.openai.wait_for(2)
    assert [rec.json()["messages"][0]["content"] for rec in recs] == ["h1 one", "h1 two"]
    for rec in recs:
        assert rec.header_all("authorization") == [f"Bearer {OPENAI_REAL_KEY}"]
        assert_no_client_secret(rec)


@pytest.mark.parametrize(("offered", "chosen"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["http/1.1", "h2"], "h2")])
def test_alpn_choice_and_served_certificate(https_proxy, tls_files, offered, chosen):
    """ALPN picks h2 whenever offered, http/1.1 otherwise; the certificate is
    the configured leaf (valid for localhost and 127.0.0.1, issued by the CA)."""
    ctx = tls_files.client_context()
    ctx.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", https_proxy.https_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == chosen
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            cert = tls.getpeercert()
            der = tls.getpeercert(binary_form=True)
    sans = set(cert["subjectAltName"])
    assert ("DNS", "localhost") in sans and ("IP Address", "127.0.0.1") in sans
    assert der == ssl.PEM_cert_to_DER_cert(tls_files.cert_pem.read_text()), "the proxy must serve cert_file"


def test_client_that_does_not_trust_the_ca_fails_the_handshake(https_proxy, mocks, tls_files, other_ca):
    # The system roots (httpx's default) do not know the test CA...
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{https_proxy.https_base}{CHAT_PATH}", headers=AUTH, json=chat("x"), timeout=10)
    # ...and neither does another CA.
    with httpx.Client(verify=other_ca.client_context(), http2=True, timeout=10) as c:
        with pytest.raises(httpx.ConnectError):
            c.post(f"{https_proxy.https_base}{CHAT_PATH}", headers=AUTH, json=chat("x"))
    assert mocks.total_requests() == 0
    # The same request with the right CA goes through: it was the certificate.
    with https_client(https_proxy, tls_files, http2=True) as c:
        assert c.post(CHAT_PATH, headers=AUTH, json=chat("x")).status_code == 200


def test_fifty_concurrent_streams_on_one_http2_connection(https_proxy, mocks, tls_files):
    """50 streaming requests at once on one HTTP/2 connection: each gets its
    own answer, and all 50 reached the upstream before the first one could have
    finished (each stream lasts >= 7 x 0.2 s), so the proxy served them side by
    side rather than one after another."""
    n, delay = 50, 0.2
    stream_time = delay * (len(openai_stream_pieces("x")) + 2)

    async def run() -> tuple[list[httpx.Response], list[str], int]:
        async with httpx.AsyncClient(
            base_url=https_proxy.https_base, verify=tls_files.client_context(), http2=True, timeout=30.0
        ) as c:
            warm = await c.post(CHAT_PATH, headers=AUTH, json=chat("warm-up"))
            assert warm.status_code == 200 and warm.http_version == "HTTP/2"
            mocks.openai.reset()

            async def one(i: int) -> tuple[httpx.Response, str]:
                headers = {**AUTH, "x-mock-chunk-delay": str(delay)}
                async with c.stream("POST", CHAT_PATH, headers=headers, json=chat(f"prompt #{i}", stream=True)) as r:
                    body = (await r.aread()).decode()
                return r, body

            results = await asyncio.gather(*(one(i) for i in range(n)))
            connections = len(c._transport._pool.connections)  # httpx 0.28 / httpcore 1.x
        return [r for r, _ in results], [b for _, b in results], connections

    started = time.monotonic()
    responses, bodies, connections = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert connections == 1, f"the client used {connections} connections"
    for i, (r, body) in enumerate(zip(responses, bodies)):
        assert r.status_code == 200, body
        assert r.http_version == "HTTP/2"
        assert r.headers["content-type"].startswith("text/event-stream")
        assert sse_content(body) == "".join(openai_stream_pieces(f"prompt #{i}")), f"request {i} got someone else's answer"
        assert body.rstrip().endswith("data: [DONE]")
    recs = mocks.openai.wait_for(n)
    assert len(recs) == n
    assert sorted(rec.json()["messages"][0]["content"] for rec in recs) == sorted(f"prompt #{i}" for i in range(n))
    for rec in recs:
        assert rec.header_all("authorization") == [f"Bearer {OPENAI_REAL_KEY}"]
        assert_no_client_secret(rec)
    spread = max(rec.received_at for rec in recs) - min(rec.received_at for rec in recs)
    assert spread < stream_time, f"upstream requests spread over {spread:.2f}s: streams were not served concurrently"
    assert elapsed < n * stream_time / 4, f"50 streams took {elapsed:.1f}s"


# --- the openai SDK over HTTPS ----------------------------------------------


def sdk(proxy, tls_files, http2: bool, **kwargs) -> OpenAI:
    return OpenAI(
        base_url=f"{proxy.https_base}/openai/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=20.0,
        http_client=httpx.Client(verify=tls_files.client_context(), http2=http2),
        **kwargs,
    )


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_sdk_chat_completion_over_https(https_proxy, mocks, tls_files, http2):
    with sdk(https_proxy, tls_files, http2) as c:
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.http_response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    resp = raw.parse()
    assert resp.choices[0].message.content == "Echo: ping over tls"
    assert resp.usage.total_tokens == 12
    rec = mocks.openai.only_request()
    assert_swapped(rec, "ping over tls")
    assert (rec.header("user-agent") or "").startswith("OpenAI/Python")
    assert rec.json().get("stream") is None


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_sdk_streaming_over_https_is_incremental(https_proxy, mocks, tls_files, http2):
    """Same timing approach as test_sdk_openai: the first chunk arrives before
    the mock sends its second, and each chunk soon after the mock sent it."""
    delay = 0.3
    arrivals: list[float] = []
    pieces: list[str] = []
    finish = None
    with sdk(https_proxy, tls_files, http2, default_headers={"x-mock-chunk-delay": str(delay)}) as c:
        with c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
            assert stream.response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            for chunk in stream:
                arrivals.append(time.monotonic())
                for choice in chunk.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                    finish = choice.finish_reason or finish
    assert pieces == openai_stream_pieces("ping over tls")
    assert finish == "stop"
    events = len(openai_stream_pieces("x")) + 3  # role chunk, pieces, finish chunk, [DONE]
    sent = list(mocks.openai.event_send_times)  # noted before each write, so complete by now
    assert len(sent) == events
    assert len(arrivals) == events - 1  # [DONE] is consumed by the SDK
    assert sent[-1] - sent[0] >= delay * (events - 2)
    assert arrivals[0] < sent[1], "the first chunk must arrive before the mock sends the second"
    for got, put in zip(arrivals, sent):
        assert got - put < delay * 0.8, f"chunk held back {got - put:.2f}s"
    rec = mocks.openai.only_request()
    assert_swapped(rec, "ping over tls")
    assert rec.json()["stream"] is True


# --- upstream TLS -----------------------------------------------------------


def test_upstream_tls_trusted_through_ca_file(https_proxy, tls_mocks, tls_files):
    with https_client(https_proxy, tls_files, http2=True) as c:
        r = c.post("/tls-up/v1/chat/completions", headers=AUTH, json=chat("to a tls upstream"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: to a tls upstream"
    rec = tls_mocks.h1.only_request()
    assert_swapped(rec, "to a tls upstream", key=TLS_UPSTREAM_REAL_KEY)
    assert rec.header_all("host") == [tls_mocks.h1.tls_endpoint]
    assert tls_mocks.h1.alpn == ["http/1.1"]
    assert tls_mocks.h1.tls_errors == []


def test_upstream_tls_without_ca_file_is_502(https_proxy, tls_mocks, tls_files):
    """Same upstream, route without `ca_file`: the web roots do not vouch for the
    mock's certificate, so the proxy refuses it (verification is on)."""
    with https_client(https_proxy, tls_files, http2=True) as c:
        r = c.post("/tls-untrusted/v1/chat/completions", headers=AUTH, json=chat("must not arrive"))
    assert r.status_code == 502, r.text
    assert r.json()["error"]["message"].startswith("upstream request failed")
    assert tls_mocks.h1.wait_for_tls_error(), "the proxy must have reached the upstream and aborted its handshake"
    assert tls_mocks.h1.requests == []


def test_upstream_http2_by_alpn(https_proxy, tls_mocks, tls_files):
    """An upstream offering only `h2` is spoken to in HTTP/2; concurrent requests
    share one upstream connection per worker thread."""
    with https_client(https_proxy, tls_files, http2=True) as c:
        r = c.post("/h2-up/v1/chat/completions", headers=AUTH, json=chat("h2 upstream"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: h2 upstream"
    assert r.headers.get("x-mock-protocol") == "h2"
    rec = tls_mocks.h2.only_request()
    assert_swapped(rec, "h2 upstream", key=H2_UPSTREAM_REAL_KEY)
    assert rec.header(":authority") == tls_mocks.h2.tls_endpoint
    assert rec.header(":scheme") == "https"
    assert not {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "host"} & rec.header_names()
    assert tls_mocks.h2.alpn == ["h2"]

    n = 20

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=https_proxy.https_base, verify=tls_files.client_context(), http2=True, timeout=20.0) as c:
            return await asyncio.gather(*(c.post("/h2-up/v1/chat/completions", headers=AUTH, json=chat(f"h2 #{i}")) for i in range(n)))

    responses = asyncio.run(run())
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == f"Echo: h2 #{i}"
    assert len(tls_mocks.h2.wait_for(n + 1)) == n + 1
    # One shared connection per worker thread that served: the first request's
    # and the burst's (the same worker, or two).
    assert tls_mocks.h2.connections <= 2, f"the proxy opened {tls_mocks.h2.connections} connections to the h2 upstream"


def test_top_level_ca_file_and_provider_override(start_proxy, tls_mocks, tls_files, other_ca):
    """Top-level `ca_file` is every provider's default; a provider's own wins
    (it replaces the default rather than adding to it)."""
    endpoint = tls_mocks.h1.tls_endpoint

    def provider(host: str, **extra) -> dict:
        return {"type": "openai", "host": host, "endpoint": endpoint, "tls": True, "api_key": TLS_UPSTREAM_REAL_KEY, **extra}

    p = start_proxy(
        {
            "auth_keys": [CLIENT_KEY],
            "health_check": {"enabled": False, "interval": 60},
            "connect_timeout": 3,
            "ca_file": str(tls_files.ca_pem),
            "providers": [
                provider("127.0.0.1/inherits"),
                provider("127.0.0.1/overridden", ca_file=str(other_ca.ca_pem)),
            ],
        }
    )
    q = start_proxy(
        {
            "auth_keys": [CLIENT_KEY],
            "health_check": {"enabled": False, "interval": 60},
            "connect_timeout": 3,
            "ca_file": str(other_ca.ca_pem),
            "providers": [provider("127.0.0.1/own", ca_file=str(tls_files.ca_pem)), provider("127.0.0.1/inherits-other")],
        }
    )
    with httpx.Client(timeout=15.0) as c:
        ok1 = c.post(f"{p.base}/inherits/v1/chat/completions", headers=AUTH, json=chat("inherits"))
        bad1 = c.post(f"{p.base}/overridden/v1/chat/completions", headers=AUTH, json=chat("overridden"))
        ok2 = c.post(f"{q.base}/own/v1/chat/completions", headers=AUTH, json=chat("own"))
        bad2 = c.post(f"{q.base}/inherits-other/v1/chat/completions", headers=AUTH, json=chat("inherits other"))
    assert ok1.status_code == 200, ok1.text
    assert ok2.status_code == 200, ok2.text
    assert bad1.status_code == 502, bad1.text
    assert bad2.status_code == 502, bad2.text
    recs = tls_mocks.h1.wait_for(2)
    assert sorted(rec.json()["messages"][0]["content"] for rec in recs) == ["inherits", "own"]
    for rec in recs:
        assert rec.header_all("authorization") == [f"Bearer {TLS_UPSTREAM_REAL_KEY}"]
    wait_until(lambda: len(tls_mocks.h1.tls_errors) >= 2, timeout=5, what="two refused upstream handshakes")


# --- shutdown with idle client connections ------------------------------------


@pytest.mark.parametrize(
    "http2",
    [
        pytest.param(False, id="http1.1"),
        pytest.param(True, id="h2"),
    ],
)
def test_sigterm_with_an_idle_https_client_exits_promptly(start_proxy, mocks, tls_files, http2):
    """README: SIGTERM lets in-flight requests finish (up to graceful_shutdown_timeout)
    and exits. An idle kept-alive connection has nothing in flight: it must not
    hold the exit back."""
    p = start_proxy(
        {
            "auth_keys": [CLIENT_KEY],
            "health_check": {"enabled": False, "interval": 60},
            "graceful_shutdown_timeout": 30,
            "providers": [{"type": "openai", "host": "localhost/openai", "endpoint": mocks.openai.endpoint, "tls": False, "api_key": OPENAI_REAL_KEY}],
        },
        https=tls_files,
    )
    with https_client(p, tls_files, http2=http2) as c:
        r = c.post(CHAT_PATH, headers=AUTH, json=chat("then idle"))
        assert r.status_code == 200, r.text
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        started = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        try:
            code = p.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(timeout=5)
            pytest.fail("the proxy was still running 3 s after SIGTERM with only an idle client connection open")
    assert code == 0
    assert time.monotonic() - started < 3
