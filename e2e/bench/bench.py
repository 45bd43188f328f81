#!/usr/bin/env python3
"""Throughput of OpenProxy against a direct connection and against nginx as a
reverse proxy, measured in one run on loopback with h2load.

    python3 e2e/bench/bench.py [--requests N] [--clients C] [--streams M]

Needs `nginx` and `h2load` (Debian: apt-get install nginx-light nghttp2-client)
and a release build (`cargo build --release`). The backend is nginx answering a
fixed chat-completion JSON; every scenario talks to that same backend. Results
are informational: on a small shared machine, compare ratios from one run, not
absolute numbers across runs.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BODY = '{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def nginx_conf(tmp: Path, name: str, server: str) -> Path:
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"""worker_processes 1;
error_log {tmp}/{name}-error.log;
pid {tmp}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{{backend}}; keepalive 64; }}
  {server}
}}
"""
    )
    return conf


def make_cert(tmp: Path) -> tuple[Path, Path]:
    ca_key, ca, key, csr, cert, ext = (tmp / n for n in ("ca.key", "ca.pem", "key.pem", "leaf.csr", "cert.pem", "leaf.ext"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *curve, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return cert, key


def h2load(url: str, args: argparse.Namespace, h1: bool, headers: list[str]) -> float:
    cmd = ["h2load", "-n", str(args.requests), "-c", str(args.clients)]
    cmd += ["--h1"] if h1 else ["-m", str(args.streams)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not done or not rate or int(done.group(1)) != args.requests:
        raise RuntimeError(f"h2load failed for {url}:\n{out}")
    return float(rate.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per HTTP/2 connection")
    args = parser.parse_args()
    for tool in ("nginx", "h2load", "openssl"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install nginx-light nghttp2-client openssl)", file=sys.stderr)
            return 2
    binary = ROOT / "target" / "release" / "openproxy"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        backend, nginx_proxy, op_http, op_https = (free_port() for _ in range(4))
        cert, key = make_cert(tmp)
        backend_conf = nginx_conf(tmp, "backend", f"server {{ listen 127.0.0.1:{backend}; location / {{ default_type application/json; return 200 '{BODY}'; }} }}")
        proxy_conf = nginx_conf(
            tmp,
            "proxy",
            f"server {{ listen 127.0.0.1:{nginx_proxy}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; "
            f'proxy_set_header Connection ""; proxy_set_header Authorization "Bearer sk-real"; }} }}',
        )
        for conf in (backend_conf, proxy_conf):
            conf.write_text(conf.read_text().replace("{backend}", str(backend)))
            procs.append(subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"]))
        config = tmp / "openproxy.yml"
        config.write_text(
            f"http_port: {op_http}\nhttp_bind_address: 127.0.0.1\nhttps_port: {op_https}\nhttps_bind_address: 127.0.0.1\n"
            f"cert_file: {cert}\nprivate_key_file: {key}\nauth_keys: [client-key]\nproviders:\n"
            f"  - type: openai\n    host: localhost\n    endpoint: \"127.0.0.1:{backend}\"\n    tls: false\n    api_key: sk-real\n"
        )
        env = dict(os.environ, RUST_LOG="warn")
        procs.append(subprocess.Popen([str(binary), "start", "-c", str(config)], env=env))
        try:
            for port in (backend, nginx_proxy, op_http, op_https):
                wait_port(port)
            auth = ["authorization: Bearer client-key"]
            rows = [
                ("direct to backend (h1)", h2load(f"http://127.0.0.1:{backend}/v1/chat/completions", args, True, [])),
                ("nginx reverse proxy (h1)", h2load(f"http://127.0.0.1:{nginx_proxy}/v1/chat/completions", args, True, [])),
                ("openproxy http (h1)", h2load(f"http://localhost:{op_http}/v1/chat/completions", args, True, auth)),
                ("openproxy https (h1)", h2load(f"https://localhost:{op_https}/v1/chat/completions", args, True, auth)),
                ("openproxy https (h2)", h2load(f"https://localhost:{op_https}/v1/chat/completions", args, False, auth)),
            ]
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM if p.args[0] != "nginx" else signal.SIGQUIT)
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    direct, nginx = rows[0][1], rows[1][1]
    print(f"{args.requests} requests, {args.clients} clients" + f", {args.streams} streams/conn for h2")
    print(f"{'scenario':28} {'req/s':>10} {'vs direct':>10} {'vs nginx':>9}")
    for name, rate in rows:
        print(f"{name:28} {rate:10.0f} {rate / direct:10.2f} {rate / nginx:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
