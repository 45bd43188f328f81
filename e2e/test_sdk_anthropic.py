"""The official Anthropic SDK through the real proxy binary."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic import Anthropic

from conftest import (
    ANTHROPIC_REAL_KEY,
    CLIENT_KEY,
    OAUTH_TOKEN,
    WRONG_KEY,
    anthropic_stream_pieces,
    assert_no_client_secret,
)

MODEL = "claude-3-5-haiku-20241022"
MESSAGES = [{"role": "user", "content": "hello claude"}]
CLIENT_BETA = "prompt-caching-2024-07-31"


def client(proxy, prefix: str = "/anthropic", api_key: str = CLIENT_KEY, **kwargs) -> Anthropic:
    return Anthropic(base_url=f"{proxy.base}{prefix}", api_key=api_key, max_retries=0, timeout=20.0, **kwargs)


def assert_forwarded_anthropic(rec, mock, stream: bool) -> None:
    assert rec.method == "POST"
    assert rec.target == "/v1/messages"
    assert rec.header("host") == mock.endpoint
    assert rec.header("anthropic-version"), "the SDK's anthropic-version must travel on"
    assert_no_client_secret(rec)
    body = rec.json()
    assert body["model"] == MODEL and body["messages"] == MESSAGES and body["max_tokens"] == 64
    assert bool(body.get("stream")) is stream


def test_messages_create(proxy, mocks):
    msg = client(proxy).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert msg.content[0].text == "Echo: hello claude"
    assert msg.stop_reason == "end_turn"
    rec = mocks.anthropic.only_request()
    assert_forwarded_anthropic(rec, mocks.anthropic, stream=False)
    assert rec.header_all("x-api-key") == [ANTHROPIC_REAL_KEY]
    assert "authorization" not in rec.header_names()
    assert mocks.oauth.requests == []


def test_messages_stream(proxy, mocks):
    with client(proxy).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == anthropic_stream_pieces("hello claude")
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(pieces)
    rec = mocks.anthropic.only_request()
    assert_forwarded_anthropic(rec, mocks.anthropic, stream=True)
    assert rec.header_all("x-api-key") == [ANTHROPIC_REAL_KEY]


def test_bearer_client_key_is_accepted(proxy, mocks):
    """Anthropic clients may also authenticate with `Authorization: Bearer`."""
    c = Anthropic(base_url=f"{proxy.base}/anthropic", auth_token=CLIENT_KEY, max_retries=0, timeout=20.0)
    msg = c.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert msg.content[0].text == "Echo: hello claude"
    rec = mocks.anthropic.only_request()
    assert rec.header_all("x-api-key") == [ANTHROPIC_REAL_KEY]
    assert "authorization" not in rec.header_names()
    assert_no_client_secret(rec)


def test_oauth_command_key(proxy, mocks):
    """`api_key: "$(printf oauth-token-123)"` is an OAuth token: Bearer auth and the
    oauth beta flag appended to the client's own flags."""
    c = client(proxy, prefix="/anthropic-oauth")
    msg = c.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, extra_headers={"anthropic-beta": CLIENT_BETA})
    assert msg.content[0].text == "Echo: hello claude"
    rec = mocks.oauth.only_request()
    assert_forwarded_anthropic(rec, mocks.oauth, stream=False)
    assert rec.header_all("authorization") == [f"Bearer {OAUTH_TOKEN}"]
    assert "x-api-key" not in rec.header_names()
    flags = [f.strip() for v in rec.header_all("anthropic-beta") for f in v.split(",")]
    assert CLIENT_BETA in flags
    assert "oauth-2025-04-20" in flags
    assert len(flags) == len(set(flags)) == 2
    assert mocks.anthropic.requests == []


def test_oauth_command_key_streaming(proxy, mocks):
    c = client(proxy, prefix="/anthropic-oauth")
    with c.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text == "".join(anthropic_stream_pieces("hello claude"))
    rec = mocks.oauth.only_request()
    assert rec.header_all("authorization") == [f"Bearer {OAUTH_TOKEN}"]
    assert [f.strip() for f in (rec.header("anthropic-beta") or "").split(",")] == ["oauth-2025-04-20"]
    assert_no_client_secret(rec)


def test_wrong_key_is_refused(proxy, mocks):
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(proxy, api_key=WRONG_KEY).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    err = info.value
    assert err.status_code == 401
    assert "invalid or missing API key" in err.message
    assert err.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid or missing API key"}}
    assert mocks.total_requests() == 0


def test_wrong_key_on_oauth_route_is_refused(proxy, mocks):
    with pytest.raises(anthropic.AuthenticationError):
        client(proxy, prefix="/anthropic-oauth", api_key=WRONG_KEY).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert mocks.total_requests() == 0


def test_unknown_prefix_on_known_host(proxy, mocks):
    """A path under no configured prefix of a known host is not forwarded anywhere."""
    r = httpx.post(f"{proxy.base}/nowhere/v1/messages", headers={"x-api-key": CLIENT_KEY}, json={}, timeout=10)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["type"] == "no_route" and "message" in err
    assert mocks.total_requests() == 0
