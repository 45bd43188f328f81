#!/usr/bin/env python3
"""Chaos run: a few thousand mixed requests (plain JSON and SSE streams)
through the release binary to three mock providers, while one provider is
killed and restarted and another answers a share of requests with 429.
Reports client-visible failures (before and after the first response byte)
and how many requests each provider saw. Loopback only; bounded; stops by
itself. Not part of the tests.

    python3 e2e/chaos/chaos.py [--requests 3000] [--concurrency 20]
"""
import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "e2e" / "bench"))
from bench import free_port, wait_port  # noqa: E402


def start_mock(port: int, log: Path, rate_limit: float = 0.0) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "mock.py"), "--port", str(port), "--log", str(log)]
    if rate_limit:
        cmd += ["--rate-limit", str(rate_limit)]
    proc = subprocess.Popen(cmd)
    wait_port(port)
    return proc


async def one(client: httpx.AsyncClient, i: int, stats: dict) -> None:
    stream = i % 2 == 0
    body = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}], "stream": stream}
    started = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            started = True
            if r.status_code != 200:
                stats[f"status {r.status_code}"] = stats.get(f"status {r.status_code}", 0) + 1
                await r.aread()
                return
            text = (await r.aread()).decode()
            complete = "[DONE]" in text if stream else text.endswith("}")
            key = "ok" if complete else "cut after first byte"
            stats[key] = stats.get(key, 0) + 1
    except httpx.HTTPError as e:
        key = ("cut after first byte" if started else "failed before first byte") + f" ({type(e).__name__})"
        stats[key] = stats.get(key, 0) + 1


async def load(base: str, total: int, concurrency: int, stats: dict, progress: list) -> None:
    queue = iter(range(total))
    headers = {"authorization": "Bearer client-key"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        async def worker():
            for i in queue:
                await one(client, i, stats)
                progress[0] += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def chaos(args, tmp: Path) -> dict:
    ports = [free_port() for _ in range(3)]
    logs = [tmp / f"provider{i}.log" for i in range(3)]
    mocks = [start_mock(ports[0], logs[0]), start_mock(ports[1], logs[1]), start_mock(ports[2], logs[2], 0.3)]
    proxy_port = free_port()
    providers = "".join(
        f"  - type: openai\n    host: localhost\n    endpoint: \"127.0.0.1:{p}\"\n    tls: false\n    api_key: real-key\n"
        for p in ports
    )
    config = tmp / "openproxy.yml"
    config.write_text(
        f"http_port: {proxy_port}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\n"
        f"first_byte_timeout: 2\nstream_idle_timeout: 2\nconnect_timeout: 1\n"
        f"passive_health: {{failures: 3, cooldown: 1}}\nproviders:\n{providers}"
    )
    binary = ROOT / "target" / "release" / "openproxy"
    proxy = subprocess.Popen([str(binary), "start", "-c", str(config)], env=dict(os.environ, RUST_LOG="warn"),
                             stderr=open(tmp / "proxy.log", "w"))
    wait_port(proxy_port)
    stats: dict = {}
    progress = [0]
    task = asyncio.create_task(load(f"http://localhost:{proxy_port}", args.requests, args.concurrency, stats, progress))
    try:
        while progress[0] < args.requests * 0.25 and not task.done():
            await asyncio.sleep(0.01)
        mocks[1].send_signal(signal.SIGKILL)  # provider 1 dies mid-traffic
        mocks[1].wait()
        killed_at = progress[0]
        while progress[0] < args.requests * 0.6 and not task.done():
            await asyncio.sleep(0.01)
        mocks[1] = start_mock(ports[1], logs[1])  # and comes back on the same port
        restarted_at = progress[0]
        await asyncio.wait_for(task, timeout=300)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=30)
        for m in mocks:
            m.kill()
            m.wait()
    seen = [len(log.read_text().splitlines()) for log in logs]
    return {"stats": stats, "seen": seen, "killed_at": killed_at, "restarted_at": restarted_at,
            "log": (tmp / "proxy.log").read_text()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    if not (ROOT / "target" / "release" / "openproxy").exists():
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as d:
        started = time.monotonic()
        result = asyncio.run(chaos(args, Path(d)))
        took = time.monotonic() - started
    stats = result["stats"]
    print(f"{args.requests} requests ({args.concurrency} concurrent, half SSE) in {took:.1f} s")
    print(f"provider 1 killed after {result['killed_at']} responses, restarted after {result['restarted_at']}")
    for key in sorted(stats):
        print(f"  {key:45} {stats[key]}")
    print("requests seen by provider 0 (steady), 1 (killed and restarted), 2 (30% 429s):", result["seen"])
    ejections = result["log"].count("provider ejected")
    print(f"ejections logged: {ejections}")
    causes: dict = {}
    for line in result["log"].splitlines():
        if "upstream request failed" in line and "error=" in line:
            cause = line.split("error=", 1)[1].split(": ", 1)[-1][:80]
            causes[cause] = causes.get(cause, 0) + 1
    for cause, n in sorted(causes.items(), key=lambda kv: -kv[1]):
        print(f"  upstream failure seen by the proxy: {cause} x{n}")
    before = sum(v for k, v in stats.items() if "before first byte" in k or k.startswith("status"))
    print(f"client-visible failures before the first byte: {before}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
