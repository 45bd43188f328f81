"""The official OpenAI SDK through the real proxy binary."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import (
    CLIENT_KEY,
    OPENAI_REAL_KEY,
    WRONG_KEY,
    assert_no_client_secret,
    free_port,
    openai_stream_pieces,
    wait_until,
)

MESSAGES = [{"role": "user", "content": "ping through the proxy"}]


def client(proxy, api_key: str = CLIENT_KEY, prefix: str = "/openai", **kwargs) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}{prefix}/v1", api_key=api_key, max_retries=0, timeout=20.0, **kwargs)


def assert_forwarded_openai(rec, mock, stream: bool) -> None:
    assert rec.method == "POST"
    assert rec.target == "/v1/chat/completions", "the /openai prefix must be stripped"
    assert rec.header("authorization") == f"Bearer {OPENAI_REAL_KEY}"
    assert len(rec.header_all("authorization")) == 1
    assert rec.header("host") == mock.endpoint
    assert len(rec.header_all("host")) == 1
    assert_no_client_secret(rec)
    body = rec.json()
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == MESSAGES
    assert bool(body.get("stream")) is stream
    # The SDK's own headers travel on untouched.
    assert rec.header("content-type") == "application/json"
    assert (rec.header("user-agent") or "").startswith("OpenAI/Python")


def test_chat_completion(proxy, mocks):
    resp = client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert resp.choices[0].message.content == "Echo: ping through the proxy"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.total_tokens == 12
    assert_forwarded_openai(mocks.openai.only_request(), mocks.openai, stream=False)


def test_chat_completion_response_headers_pass_through(proxy, mocks):
    raw = client(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers.get("x-request-id") == "req_mock_openai"
    assert raw.parse().id == "chatcmpl-e2e0001"


def test_chat_completion_streaming(proxy, mocks):
    stream = client(proxy).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert pieces == openai_stream_pieces("ping through the proxy")
    assert finish == "stop"
    assert_forwarded_openai(mocks.openai.only_request(), mocks.openai, stream=True)


def test_route_by_host_header(proxy, mocks):
    """No prefix: the Host header alone (`openai.test`) picks the provider."""
    c = client(proxy, prefix="", default_headers={"Host": "openai.test"})
    resp = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert resp.choices[0].message.content == "Echo: ping through the proxy"
    rec = mocks.openai.only_request()
    assert rec.target == "/v1/chat/completions"
    assert rec.header("host") == mocks.openai.endpoint
    assert rec.header("authorization") == f"Bearer {OPENAI_REAL_KEY}"
    assert_no_client_secret(rec)


def test_streaming_is_not_buffered(proxy, mocks):
    """Each SSE event reaches the client while the upstream is still producing:
    the first event arrives before the mock has even sent its last one."""
    delay = 0.5
    c = client(proxy, default_headers={"x-mock-chunk-delay": str(delay)})
    started = time.monotonic()
    arrivals: list[float] = []
    with c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            arrivals.append(time.monotonic())
    sent = mocks.openai.event_send_times
    events = len(openai_stream_pieces("x")) + 3  # role chunk, pieces, finish chunk, [DONE]
    assert len(sent) == events
    assert len(arrivals) == events - 1  # [DONE] is consumed by the SDK
    total_upstream = sent[-1] - sent[0]
    assert total_upstream >= delay * (events - 2)
    # The first chunk arrived long before the upstream finished...
    assert arrivals[0] < sent[-1] - delay, f"first chunk at +{arrivals[0] - started:.2f}s, upstream finished at +{sent[-1] - started:.2f}s"
    assert arrivals[0] < sent[1], "the first chunk must arrive before the mock sends the second"
    # ...and every chunk arrived soon after the mock sent it.
    for got, put in zip(arrivals, sent):
        assert got - put < delay * 0.8, f"chunk held back {got - put:.2f}s"


def test_wrong_key_is_refused_with_our_message(proxy, mocks):
    with pytest.raises(openai.AuthenticationError) as info:
        client(proxy, api_key=WRONG_KEY).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    err = info.value
    assert err.status_code == 401
    assert "invalid or missing API key" in err.message
    assert isinstance(err.body, dict) and err.body.get("message") == "invalid or missing API key"
    assert err.body.get("type") and "code" in err.body
    assert mocks.total_requests() == 0


def test_missing_key_is_refused(proxy, mocks):
    r = httpx.post(f"{proxy.base}/openai/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=10)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["message"] == "invalid or missing API key"
    assert set(err) == {"message", "type", "code"}
    assert mocks.total_requests() == 0


def test_proxy_authorization_is_accepted_and_stripped(proxy, mocks):
    """`Proxy-Authorization: Bearer <client key>` authenticates any route; the
    client's own Authorization (some other value) must not reach the upstream."""
    r = httpx.post(
        f"{proxy.base}/openai/v1/chat/completions",
        headers={"Proxy-Authorization": f"Bearer {CLIENT_KEY}", "Authorization": "Bearer something-else-entirely"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    rec = mocks.openai.only_request()
    assert rec.header_all("authorization") == [f"Bearer {OPENAI_REAL_KEY}"]
    assert "something-else-entirely" not in str(rec.headers)
    assert_no_client_secret(rec)


def test_upstream_error_status_passes_through(proxy, mocks):
    """An upstream 429 reaches the SDK as the upstream said it."""
    c = client(proxy, default_headers={"x-mock-status": "429"})
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "mock openai says 429" in info.value.message
    assert len(mocks.openai.requests) == 1


def test_stream_usage_inject_counts_tokens_the_sdk_never_asked_for(start_proxy, mocks):
    """With `stream_usage: inject`, a stream the SDK did not ask usage for is
    asked upstream, counted, and reaches the SDK exactly as it would have
    without the option; a stream that asks for usage gets it."""
    admin = free_port()
    p = start_proxy(
        {
            "admin_port": admin,
            "auth_keys": [{"key": CLIENT_KEY, "name": "sdk"}],
            "providers": [
                {
                    "type": "openai",
                    "name": "oai",
                    "host": "127.0.0.1",
                    "endpoint": mocks.openai.endpoint,
                    "tls": False,
                    "api_key": OPENAI_REAL_KEY,
                    "stream_usage": "inject",
                }
            ],
        }
    )
    sdk = client(p, prefix="")
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks), "the usage-only chunk reached the SDK"
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(openai_stream_pieces("ping through the proxy"))
    sent = mocks.openai.only_request().json()
    assert sent["stream_options"] == {"include_usage": True}

    def tokens():
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        series = 'openproxy_tokens_total{direction="output",provider="oai",model="gpt-4o-mini",client="sdk"} 3'
        return series in text and 'direction="input",provider="oai",model="gpt-4o-mini",client="sdk"} 9' in text

    wait_until(tokens, timeout=10, what="the injected usage to be counted")

    mocks.reset()
    asked = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage.prompt_tokens == 9
