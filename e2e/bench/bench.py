#!/usr/bin/env python3
"""OpenProxy against a direct connection and nginx doing the same job, in one
run on loopback: the same fixed upstream, the same client-key check and key
swap, access logs on for both proxies (one line per request), 2 nginx workers.

    python3 e2e/bench/bench.py            # every scenario, 3 alternating rounds
    QUICK=1 python3 e2e/bench/bench.py    # shorter and smaller, under a minute
    OPENPROXY_BIN=/tmp/old/openproxy python3 e2e/bench/bench.py   # another build
    OPENPROXY_EXTRA="log_format: json" python3 e2e/bench/bench.py  # extra config lines
    python3 e2e/bench/bench.py --only keepalive,https-h2 --rounds 5 --no-logs

Needs Debian's `wrk`, `nghttp2-client` (h2load), `nginx-light` and `openssl`
(`apt-get install wrk nghttp2-client nginx-light`), and builds the release
binary and the streaming upstream (`cargo build --release --example
bench-upstream`) if they are missing. Prints per scenario the median with
min-max over the rounds, CPU microseconds per request of each proxy (from
/proc), memory per idle connection / per active stream, then one
`ratio <scenario> openproxy/nginx ...` line per scenario. Numbers are for
comparing subjects within one run on this machine, not across machines.
"""
import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BODY_1K = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + "x" * 930 + '"}]}'
ANSWER = '{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"' + "y" * 1180 + '"},"finish_reason":"stop"}]}'
AUTH = "Bearer client-key"
QUICK = os.environ.get("QUICK") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def make_cert(tmp: Path) -> tuple[Path, Path]:
    ca_key, ca, key, csr, cert, ext = (tmp / n for n in ("ca.key", "ca.pem", "key.pem", "leaf.csr", "cert.pem", "leaf.ext"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *curve, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


class Ports:
    def __init__(self):
        self.backend, self.stream_up = free_port(), free_port()  # nginx JSON backend, streaming upstream
        self.direct_tls = free_port()  # the backend over TLS (the HTTPS "direct" subject)
        self.nginx, self.nginx_tls = free_port(), free_port()
        self.op, self.op_tls = free_port(), free_port()


def nginx_conf(tmp: Path, name: str, workers: int, log: bool, body: str) -> Path:
    conf = tmp / f"{name}.conf"
    access = f"access_log {tmp}/{name}-access.log;" if log else "access_log off;"
    conf.write_text(
        f"worker_processes {workers};\nerror_log {tmp}/{name}-error.log;\npid {tmp}/{name}.pid;\n"
        f"worker_rlimit_nofile 20000;\nevents {{ worker_connections 10000; }}\n"
        f"http {{\n  {access}\n  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n  client_max_body_size 0;\n{body}\n}}\n"
    )
    return conf


def backend_conf(tmp: Path, p: Ports, cert: Path, key: Path) -> Path:
    answer = ANSWER.replace("'", "")
    return nginx_conf(tmp, "backend", 1, False, f"""
  server {{ listen 127.0.0.1:{p.backend} reuseport; location / {{ default_type application/json; return 200 '{answer}'; }} }}
  server {{ listen 127.0.0.1:{p.direct_tls} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key};
           location / {{ default_type application/json; return 200 '{answer}'; }} }}""")


def proxy_conf(tmp: Path, p: Ports, cert: Path, key: Path, log: bool) -> Path:
    check = f'if ($http_authorization != "{AUTH}") {{ return 401; }}'
    location = (
        f"{check} proxy_http_version 1.1; proxy_set_header Connection \"\"; "
        f'proxy_set_header Authorization "Bearer sk-real"; proxy_buffering off; proxy_request_buffering off;'
    )
    return nginx_conf(tmp, "proxy", 2, log, f"""
  upstream backend {{ server 127.0.0.1:{p.backend}; keepalive 64; }}
  upstream streaming {{ server 127.0.0.1:{p.stream_up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{p.nginx}; listen 127.0.0.1:{p.nginx_tls} ssl http2;
           ssl_certificate {cert}; ssl_certificate_key {key};
           location / {{ {location} proxy_pass http://backend; }}
           location /s/ {{ {location} proxy_pass http://streaming/; }} }}""")


def openproxy_conf(tmp: Path, p: Ports, cert: Path, key: Path) -> Path:
    conf = tmp / "openproxy.yml"
    provider = "  - type: openai\n    host: {host}\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n    api_key: sk-real\n"
    # OPENPROXY_EXTRA: top-level config lines to add, e.g. "log_format: json".
    extra = os.environ.get("OPENPROXY_EXTRA", "").replace("\\n", "\n")
    conf.write_text(
        (extra + "\n" if extra else "")
        + f"http_port: {p.op}\nhttp_bind_address: 127.0.0.1\nhttps_port: {p.op_tls}\nhttps_bind_address: 127.0.0.1\n"
        f"cert_file: {cert}\nprivate_key_file: {key}\nauth_keys: [client-key]\nproviders:\n"
        + provider.format(host="localhost", port=p.backend)
        + provider.format(host="localhost/s", port=p.stream_up)
    )
    return conf


def pids_of(proc: subprocess.Popen) -> list[int]:
    """The process and its children (nginx's workers)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [proc.pid] + [int(x) for x in out]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# --- load generators -------------------------------------------------------

def parse_latency(text: str, pct: str) -> float:
    """wrk's latency line for `pct` (e.g. 99%) in milliseconds."""
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url: str, conns: int, seconds: float, headers: list[str], post: bool, tmp: Path) -> dict:
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{BODY_1K}]]\nwrk.headers["Content-Type"] = "application/json"\n')
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if post:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not rps or not total or errors:
        raise RuntimeError(f"wrk failed for {url}:\n{out}")
    return {"rps": float(rps.group(1)), "p99": parse_latency(out, "99%"), "requests": int(total.group(1))}


def h2load(url: str, requests: int, conns: int, streams: int, headers: list[str]) -> dict:
    cmd = ["h2load", "-n", str(requests), "-c", str(conns), "-m", str(streams)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not done or not rate or int(done.group(1)) != requests:
        raise RuntimeError(f"h2load failed for {url}:\n{out}")
    # h2load reports mean/sd/max per request; p99 is not available, max is.
    lat = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    to_ms = lambda v, u: float(v) / 1000 if u == "us" else float(v) * 1000 if u == "s" else float(v)  # noqa: E731
    p99 = to_ms(lat.group(3), lat.group(4)) if lat else float("nan")
    return {"rps": float(rate.group(1)), "p99": p99, "requests": requests}


async def first_event(port: int, path: str, sem: asyncio.Semaphore):
    """Opens an SSE stream; returns (reader, writer, ms to the first event, bytes
    read so far), or None when the stream closed before one came."""
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\nConnection: close\r\n\r\n".encode())
    buf = b""
    while b"data:" not in buf:
        chunk = await reader.read(65536)
        if not chunk:
            writer.close()
            return None
        buf += chunk
    return reader, writer, (time.monotonic() - started) * 1000, buf


async def sse_streams(port: int, path: str, count: int) -> dict:
    """Opens `count` SSE streams at once; returns first-event latency p50/p99
    (ms from sending the request) and whether every stream ended with [DONE].
    Reads lazily after the first event so the client costs little CPU."""
    firsts: list[float] = []
    complete = 0
    sem = asyncio.Semaphore(200)  # pace the connects, not the streams

    async def one():
        nonlocal complete
        opened = await first_event(port, path, sem)
        if opened is None:
            return
        reader, writer, ms, buf = opened
        firsts.append(ms)
        while True:
            await asyncio.sleep(0.2)
            chunk = await reader.read(1 << 20)
            buf = buf[-64:] + chunk
            if b"[DONE]" in buf:
                complete += 1
                break
            if not chunk:
                break
        writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    firsts.sort()
    q = lambda f: firsts[min(len(firsts) - 1, int(f * len(firsts)))]  # noqa: E731
    return {"first_p50": q(0.5), "first_p99": q(0.99), "complete": complete}


async def hold_streams(port: int, path: str, count: int, pids: list[int], settle: float) -> dict:
    """Opens `count` slow SSE streams, waits for every first event, then
    measures the subject's RSS per open stream."""
    base = rss_kib(pids)
    opened = []
    firsts: list[float] = []
    sem = asyncio.Semaphore(200)

    async def one():
        stream = await first_event(port, path, sem)
        if stream is not None:
            firsts.append(stream[2])
            opened.append(stream[1])

    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(settle)
    per = (rss_kib(pids) - base) / max(1, len(opened))
    for w in opened:
        w.close()
    firsts.sort()
    return {"kib_per_stream": per, "first_p99": firsts[int(0.99 * (len(firsts) - 1))] if firsts else float("nan")}


def idle_connections(port: int, count: int, pids: list[int]) -> float:
    """RSS per idle keep-alive connection (each has served one request)."""
    base = rss_kib(pids)
    socks = []
    req = f"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\n\r\n".encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
    time.sleep(2.5)  # past the proxies' idle-buffer release (openproxy: 1 s)
    per = (rss_kib(pids) - base) / count
    for s in socks:
        s.close()
    return per


def transfer(port: int, path: str, upload: int, rounds: int) -> float:
    """MiB/s of `rounds` sequential transfers (upload of `upload` bytes, or a download)."""
    started = time.monotonic()
    moved = 0
    for _ in range(rounds):
        s = socket.create_connection(("127.0.0.1", port))
        method = "POST" if upload else "GET"
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\nConnection: close\r\nContent-Length: {upload}\r\n\r\n"
        s.sendall(head.encode())
        if upload:
            block = b"u" * (1 << 20)
            for _ in range(upload >> 20):
                s.sendall(block)
            moved += upload
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            if not upload:
                moved += len(chunk)
        s.close()
    return moved / (1 << 20) / (time.monotonic() - started)


# --- the run ---------------------------------------------------------------

def summarize(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:10.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1 if QUICK else 3)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--no-logs", action="store_true", help="access logs off for both proxies")
    args = parser.parse_args()
    for tool in ("nginx", "h2load", "wrk", "openssl"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install wrk nghttp2-client nginx-light openssl)", file=sys.stderr)
            return 2
    # OPENPROXY_BIN compares another build (say, main's) under the same harness.
    binary = Path(os.environ.get("OPENPROXY_BIN", ROOT / "target" / "release" / "openproxy"))
    upstream_bin = ROOT / "target" / "release" / "examples" / "bench-upstream"
    if not binary.exists() or not upstream_bin.exists():
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "openproxy", "--example", "bench-upstream"], cwd=ROOT, check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    secs = 2 if QUICK else 5
    idle_n, sse_n, slow_n = (500, 200, 500) if QUICK else (5000, 1000, 2000)
    only = set(filter(None, args.only.split(",")))
    results: dict = {}  # (scenario, subject) -> {metric: [values]}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p = Ports()
        cert, key = make_cert(tmp)
        backend = subprocess.Popen(["nginx", "-c", str(backend_conf(tmp, p, cert, key)), "-g", "daemon off;"])
        upstream = subprocess.Popen([str(upstream_bin), str(p.stream_up)])
        nginx = subprocess.Popen(["nginx", "-c", str(proxy_conf(tmp, p, cert, key, not args.no_logs)), "-g", "daemon off;"])
        env = dict(os.environ, RUST_LOG="warn" if args.no_logs else "info")
        op = subprocess.Popen([str(binary), "start", "-c", str(openproxy_conf(tmp, p, cert, key))], env=env,
                              stderr=open(tmp / "openproxy.log", "w"))
        procs = [backend, upstream, nginx, op]
        try:
            for port in (p.backend, p.stream_up, p.direct_tls, p.nginx, p.nginx_tls, p.op, p.op_tls):
                wait_port(port)
            subjects = {
                "direct": {"http": p.backend, "tls": p.direct_tls, "stream": p.stream_up, "prefix": "", "pids": pids_of(backend)},
                "nginx": {"http": p.nginx, "tls": p.nginx_tls, "stream": p.nginx, "prefix": "/s", "pids": pids_of(nginx)},
                "openproxy": {"http": p.op, "tls": p.op_tls, "stream": p.op, "prefix": "/s", "pids": pids_of(op)},
            }
            scenarios = build_scenarios(secs, idle_n, sse_n, slow_n, tmp)
            for r in range(args.rounds):
                for name, fn, who in scenarios:
                    if only and name not in only:
                        continue
                    # Alternate the order of subjects from round to round.
                    order = who if r % 2 == 0 else list(reversed(who))
                    for subject in order:
                        s = subjects[subject]
                        before = cpu_seconds(s["pids"])
                        out = fn(s)
                        used = cpu_seconds(s["pids"]) - before
                        if "requests" in out and subject != "direct":
                            out["cpu_us"] = used / out["requests"] * 1e6
                        out.pop("requests", None)
                        for k, v in out.items():
                            results.setdefault((name, subject), {}).setdefault(k, []).append(v)
                        print(f"round {r + 1} {name:16} {subject:9} " + " ".join(f"{k}={v:.1f}" for k, v in out.items()), flush=True)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGQUIT if proc in (backend, nginx) else signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report(results, args.rounds)
    return 0


def build_scenarios(secs: float, idle_n: int, sse_n: int, slow_n: int, tmp: Path) -> list:
    auth = [f"Authorization: {AUTH}"]
    three = ["direct", "nginx", "openproxy"]
    two = ["nginx", "openproxy"]
    http = lambda s, path="/v1/chat/completions": f"http://localhost:{s['http']}{path}"  # noqa: E731
    tls = lambda s: f"https://localhost:{s['tls']}/v1/chat/completions"  # noqa: E731
    n_h2 = 20000 if QUICK else 100000
    return [
        ("keepalive", lambda s: wrk(http(s), 64, secs, auth + ["Connection: keep-alive"], True, tmp), three),
        ("keepalive-noconn", lambda s: wrk(http(s), 64, secs, auth, True, tmp), three),
        ("new-connection", lambda s: wrk(http(s), 64, secs, auth + ["Connection: close"], True, tmp), three),
        ("https-h2", lambda s: h2load(tls(s), n_h2, 4, 16, [f"authorization: {AUTH}"]), three),
        ("https-h1", lambda s: wrk(tls(s), 64, secs, auth, True, tmp), three),
        ("sse", lambda s: asyncio.run(sse_streams(s["stream"], f"{s['prefix']}/sse?n=100&gap=10", sse_n)), three),
        ("idle", lambda s: {"kib_per_conn": idle_connections(s["http"], idle_n, s["pids"])}, two),
        ("sse-slow", lambda s: asyncio.run(hold_streams(s["stream"], f"{s['prefix']}/sse?n=5&gap=3000", slow_n, s["pids"], 1.0)), two),
        ("upload-10MiB", lambda s: {"mib_s": transfer(s["stream"], f"{s['prefix']}/upload", 10 << 20, 3 if QUICK else 10)}, three),
        ("download-10MiB", lambda s: {"mib_s": transfer(s["stream"], f"{s['prefix']}/download?bytes={10 << 20}", 0, 3 if QUICK else 10)}, three),
    ]


def report(results: dict, rounds: int) -> None:
    print(f"\nmedians over {rounds} round(s), (min-max):")
    scenarios = sorted({k[0] for k in results}, key=lambda n: list(dict.fromkeys(k[0] for k in results)).index(n))
    for name in scenarios:
        for subject in ("direct", "nginx", "openproxy"):
            metrics = results.get((name, subject))
            if metrics:
                print(f"  {name:16} {subject:9} " + "  ".join(f"{k} {summarize(v)}" for k, v in metrics.items()))
    print()
    for name in scenarios:
        ours, theirs = results.get((name, "openproxy")), results.get((name, "nginx"))
        if not ours or not theirs:
            continue
        parts = []
        for k in ours:
            if k in theirs:
                a, b = statistics.median(ours[k]), statistics.median(theirs[k])
                parts.append(f"{k}={a / b:.2f}" if b else f"{k}=n/a")
        print(f"ratio {name} openproxy/nginx " + " ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
