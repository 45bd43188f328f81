"""Routing, credentials and proxy-made errors, spoken in plain HTTP (httpx)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from conftest import (
    CLIENT_KEY,
    GEMINI_REAL_KEY,
    SCOPED_CLIENT_KEY,
    SCOPED_REAL_KEY,
    WRONG_KEY,
    assert_no_client_secret,
    closed_port,
    wait_until,
)

GEMINI_PATH = "/v1beta/models/gemini-1.5-flash:generateContent"
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi gemini"}]}]}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}


def http(proxy) -> httpx.Client:
    return httpx.Client(base_url=proxy.base, timeout=10.0)


# --- Gemini -------------------------------------------------------------


def test_gemini_query_key_is_swapped(proxy, mocks):
    with http(proxy) as c:
        r = c.post(f"/gemini{GEMINI_PATH}", params={"alt": "json", "key": CLIENT_KEY}, json=GEMINI_BODY)
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hi gemini"
    rec = mocks.gemini.only_request()
    assert rec.path == GEMINI_PATH
    assert rec.query == {"alt": ["json"]}, f"`key` must be removed from the query, got {rec.target!r}"
    assert rec.header_all("x-goog-api-key") == [GEMINI_REAL_KEY]
    assert rec.header("host") == mocks.gemini.endpoint
    assert rec.json() == GEMINI_BODY
    assert_no_client_secret(rec)


def test_gemini_query_key_only(proxy, mocks):
    with http(proxy) as c:
        r = c.post(f"/gemini{GEMINI_PATH}?key={CLIENT_KEY}", json=GEMINI_BODY)
    assert r.status_code == 200, r.text
    rec = mocks.gemini.only_request()
    assert rec.target == GEMINI_PATH
    assert rec.header_all("x-goog-api-key") == [GEMINI_REAL_KEY]
    assert_no_client_secret(rec)


def test_gemini_header_key_is_swapped(proxy, mocks):
    with http(proxy) as c:
        r = c.post(f"/gemini{GEMINI_PATH}", headers={"x-goog-api-key": CLIENT_KEY}, json=GEMINI_BODY)
    assert r.status_code == 200, r.text
    rec = mocks.gemini.only_request()
    assert rec.target == GEMINI_PATH
    assert rec.header_all("x-goog-api-key") == [GEMINI_REAL_KEY]
    assert_no_client_secret(rec)


def test_gemini_wrong_key_has_gemini_shape(proxy, mocks):
    with http(proxy) as c:
        r = c.post(f"/gemini{GEMINI_PATH}", params={"key": WRONG_KEY}, json=GEMINI_BODY)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": {"code": 401, "message": "invalid or missing API key", "status": "UNAUTHENTICATED"}}
    assert mocks.total_requests() == 0


# --- routing ------------------------------------------------------------


def test_unknown_host_is_404_plain_json(proxy, mocks):
    with http(proxy) as c:
        r = c.post("/v1/chat/completions", headers={"Host": "nobody.example", "Authorization": f"Bearer {CLIENT_KEY}"}, json=CHAT)
    assert r.status_code == 404
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    assert "nobody.example" in body["error"]["message"]
    assert mocks.total_requests() == 0


def test_every_client_credential_header_is_stripped(proxy, mocks):
    """Whatever credential headers a client sends, only the provider key leaves."""
    headers = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": CLIENT_KEY,
        "x-goog-api-key": CLIENT_KEY,
        "Proxy-Authorization": f"Bearer {CLIENT_KEY}",
        "x-custom-header": "kept",
    }
    with http(proxy) as c:
        r = c.post("/openai/v1/chat/completions?key=abc", headers=headers, json=CHAT)
    assert r.status_code == 200, r.text
    rec = mocks.openai.only_request()
    assert rec.path == "/v1/chat/completions"
    assert rec.header_all("authorization") == ["Bearer sk-real-openai-0123456789"]
    names = rec.header_names()
    assert "x-api-key" not in names and "x-goog-api-key" not in names and "proxy-authorization" not in names
    assert rec.header("x-custom-header") == "kept"
    assert_no_client_secret(rec)


def test_provider_auth_keys(proxy, mocks):
    """A provider's own auth_keys open it; global keys open it too."""
    with http(proxy) as c:
        for key in (SCOPED_CLIENT_KEY, CLIENT_KEY):
            r = c.post("/scoped/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)
            assert r.status_code == 200, r.text
        # The provider-specific key does not open other routes.
        r = c.post("/openai/v1/chat/completions", headers={"Authorization": f"Bearer {SCOPED_CLIENT_KEY}"}, json=CHAT)
        assert r.status_code == 401
    recs = mocks.scoped.wait_for(2)
    assert len(recs) == 2
    for rec in recs:
        assert rec.header_all("authorization") == [f"Bearer {SCOPED_REAL_KEY}"]
        assert_no_client_secret(rec)
    assert mocks.openai.requests == []


def test_forward_route_passes_client_headers(proxy, mocks):
    """`forward` does no credential swap: the client's Authorization reaches the
    backend, Proxy-Authorization (addressed to us) does not."""
    with http(proxy) as c:
        r = c.get(
            "/forward/internal/status?x=1",
            headers={"Proxy-Authorization": f"Bearer {CLIENT_KEY}", "Authorization": "Bearer backend-token"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/internal/status"
    rec = mocks.forward.only_request()
    assert rec.method == "GET"
    assert rec.target == "/internal/status?x=1"
    assert rec.header_all("authorization") == ["Bearer backend-token"]
    assert "proxy-authorization" not in rec.header_names()
    assert rec.header("host") == mocks.forward.endpoint


def test_forward_route_without_proxy_key_is_refused(proxy, mocks):
    with http(proxy) as c:
        r = c.get("/forward/internal/status", headers={"Authorization": "Bearer backend-token"})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"type", "message"}
    assert mocks.total_requests() == 0


def test_chunked_request_body_is_streamed_upstream(proxy, mocks):
    """A body without Content-Length (chunked upload) arrives intact."""
    payload = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * 300_000 + b'"}]}'

    def gen():
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    with http(proxy) as c:
        r = c.post(
            "/openai/v1/chat/completions",
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
            content=gen(),
        )
    assert r.status_code == 200, r.text
    rec = mocks.openai.only_request()
    assert rec.body == payload
    assert r.json()["choices"][0]["message"]["content"] == "Echo: " + "a" * 300_000


def test_keep_alive_serves_several_requests(proxy, mocks):
    with http(proxy) as c:
        for i in range(5):
            r = c.post("/openai/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, json={**CHAT, "n": i})
            assert r.status_code == 200, r.text
    recs = mocks.openai.wait_for(5)
    assert [rec.json()["n"] for rec in recs] == [0, 1, 2, 3, 4]


# --- upstream failures --------------------------------------------------


def test_upstream_down_is_502_openai_shaped(proxy, mocks):
    c = openai.OpenAI(base_url=f"{proxy.base}/down/v1", api_key=CLIENT_KEY, max_retries=0, timeout=15.0)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"502 took {elapsed:.1f}s"
    err = info.value
    assert err.status_code == 502
    assert isinstance(err.body, dict)
    assert set(err.body) == {"message", "type", "code"}
    assert err.body["message"].startswith("upstream request failed")
    assert mocks.total_requests() == 0


def test_no_healthy_provider_is_503(start_proxy, mocks):
    """With health checks on and the only provider unreachable, the proxy stops
    trying it and answers 503 in the route's (Anthropic) shape."""
    dead = closed_port()
    p = start_proxy(
        {
            "auth_keys": [CLIENT_KEY],
            "health_check": {"enabled": True, "interval": 0.2},
            "providers": [
                {
                    "type": "anthropic",
                    "host": "127.0.0.1/a",
                    "endpoint": f"127.0.0.1:{dead}",
                    "tls": False,
                    "api_key": "sk-ant-x",
                    "health_check": {"method": "GET", "path": "/v1/models"},
                }
            ],
        }
    )
    with httpx.Client(base_url=p.base, timeout=10.0) as c:

        def status():
            r = c.post("/a/v1/messages", headers={"x-api-key": CLIENT_KEY}, json={})
            assert r.status_code in (502, 503), r.text
            return r if r.status_code == 503 else None

        r = wait_until(status, timeout=10, interval=0.1, what="the provider to be marked unhealthy")
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    assert "no healthy provider" in body["error"]["message"]


def test_fallback_provider_takes_over(start_proxy, mocks):
    """A fallback provider serves only when the primary is unhealthy."""
    dead = closed_port()
    p = start_proxy(
        {
            "auth_keys": [CLIENT_KEY],
            "health_check": {"enabled": True, "interval": 0.2},
            "providers": [
                {
                    "type": "openai",
                    "host": "127.0.0.1/o",
                    "endpoint": f"127.0.0.1:{dead}",
                    "tls": False,
                    "api_key": "sk-primary",
                    "health_check": {"method": "GET", "path": "/v1/models"},
                },
                {
                    "type": "openai",
                    "host": "127.0.0.1/o",
                    "endpoint": mocks.scoped.endpoint,
                    "tls": False,
                    "api_key": "sk-fallback",
                    "is_fallback": True,
                },
            ],
        }
    )
    with httpx.Client(base_url=p.base, timeout=10.0) as c:

        def served():
            r = c.post("/o/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, json=CHAT)
            assert r.status_code in (200, 502), r.text
            return r if r.status_code == 200 else None

        wait_until(served, timeout=10, interval=0.1, what="the fallback provider to serve")
    rec = mocks.scoped.requests[-1]
    assert rec.header_all("authorization") == ["Bearer sk-fallback"]
    assert_no_client_secret(rec)


def test_sigterm_stops_the_proxy(start_proxy, mocks):
    p = start_proxy({"auth_keys": [CLIENT_KEY], "providers": [{"type": "openai", "host": "127.0.0.1", "endpoint": mocks.openai.endpoint, "tls": False, "api_key": "k"}]})
    started = time.monotonic()
    code = p.stop()
    assert time.monotonic() - started < 5
    assert code == 0, p.stderr()
