//! Test harness: the real `openproxy` binary started on a config, recording
//! mock upstreams (hyper for ordinary answers, raw TCP for byte-exact scripts),
//! and a raw client for what no well-behaved client would send.

pub mod frames;
pub mod load;
pub mod tls;
pub mod wire;

use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A free loopback port (bound then released; the race is harmless in tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The proxy binary running on a config; killed on drop.
pub struct TestProxy {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl TestProxy {
    /// Starts the proxy on `yaml`, where `{port}` is replaced by a free port,
    /// and waits (bounded) until it accepts connections and has logged that it
    /// started (its last step before it installs its signal handlers).
    pub fn start(yaml: &str) -> TestProxy {
        TestProxy::start_logging(yaml, "debug")
    }

    /// [`TestProxy::start`] with `RUST_LOG` set to `level`.
    pub fn start_logging(yaml: &str, level: &str) -> TestProxy {
        TestProxy::start_with(yaml, level, |_| {})
    }

    /// [`TestProxy::start_logging`], with `setup` applied to the command first.
    /// A "free" port can be taken by another test's proxy between our probe
    /// and the bind: then it starts again on another.
    pub fn start_with(yaml: &str, level: &str, setup: impl Fn(&mut Command)) -> TestProxy {
        let mut tries = 0;
        loop {
            match TestProxy::try_start(yaml, level, &setup) {
                Ok(proxy) => return proxy,
                Err(logs) if logs.contains("Address already in use") && tries < 5 => tries += 1,
                Err(logs) => panic!("the proxy did not start:\n{logs}"),
            }
        }
    }

    fn try_start(yaml: &str, level: &str, setup: &impl Fn(&mut Command)) -> Result<TestProxy, String> {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml.replace("{port}", &port.to_string())).unwrap();
        let log = dir.path().join("proxy.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_openproxy"));
        command.args(["start", "-c"]).arg(&config).env("RUST_LOG", level);
        command.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        setup(&mut command);
        let child = command.spawn().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut proxy = TestProxy { child, addr, dir, log };
        let started = format!("openproxy {} started", env!("CARGO_PKG_VERSION"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() || !proxy.logs().contains(&started) {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", proxy.logs()));
            }
            if Instant::now() > deadline {
                return Err(format!("not started within 10 s:\n{}", proxy.logs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// Sends a signal to the proxy process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits (bounded) until the proxy no longer accepts new connections: its
    /// listeners have closed, so it has begun to drain.
    pub async fn wait_until_refusing(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the proxy still accepts connections:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the proxy, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident memory of the proxy now, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let mut status = String::new();
        std::fs::File::open(format!("/proc/{}/status", self.pid())).unwrap().read_to_string(&mut status).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// File descriptors the proxy holds open: each accepted client is one.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |dir| dir.count())
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy binary started on a config file already holding its ports,
/// with stderr going where the test wants (a pipe it reads late, or never);
/// killed on drop, however the test ends.
pub struct Spawned {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts it on `yaml` and waits (bounded) until each of `ready` accepts.
    pub async fn start(yaml: &str, stderr: Stdio, ready: &[SocketAddr]) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_openproxy"))
            .args(["start", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let spawned = Spawned { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in ready {
            while TcpStream::connect(addr).await.is_err() {
                assert!(Instant::now() < deadline, "the proxy did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        spawned
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin listener's `/metrics`, sample lines by series (name and labels
/// as written).
pub async fn scrape(admin: u16) -> std::collections::HashMap<String, f64> {
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let (_, _, text) = send(addr, "GET", "/metrics", &[("host", "admin")], "").await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(series, value)| (series.to_string(), value.parse().unwrap())))
        .collect()
}

/// Waits (bounded by `limit`) until the proxy's log contains `needle`.
pub async fn wait_for_log(proxy: &TestProxy, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !proxy.logs().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the log within {limit:?}:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a mock upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a hyper mock answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
        }
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A recording HTTP/1.1 upstream on hyper (an independent implementation).
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Answers every request with `{"ok":true,"mock":"<name>"}`.
    pub async fn start(name: &str) -> MockUpstream {
        let body = format!(r#"{{"ok":true,"mock":"{name}"}}"#);
        MockUpstream::with(move |_| Reply::json(200, &body)).await
    }

    pub async fn with(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let handler: Handler = Arc::new(handler);
        let (reqs, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                *conns.lock().unwrap() += 1;
                let (reqs, handler) = (reqs.clone(), handler.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (reqs, handler) = (reqs.clone(), handler.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let collected = body.collect().await?;
                            let trailers = collected.trailers().cloned();
                            let recorded = Recorded {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body: collected.to_bytes(),
                                trailers,
                            };
                            let reply = handler(&recorded);
                            reqs.lock().unwrap().push(recorded);
                            let mut resp = hyper::Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, hyper::Error>(resp.body(Full::new(reply.body)).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockUpstream { addr, requests, connections, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn connection_count(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw TCP upstream: each accepted connection is handed to `script`, which
/// reads and writes bytes as the test wants. What it read is up to the script.
pub struct RawUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start<F, Fut>(script: F) -> RawUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(script(stream));
            }
        });
        RawUpstream { addr, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads from `stream` until a full request head (through the blank line) is in.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends raw bytes and reads until the proxy closes or `limit` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_close(&mut stream, limit).await
}

pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal config for one provider of `kind` at `upstream`.
pub fn one_provider(kind: &str, host: &str, upstream: u16, extra: &str) -> String {
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [\"client-key\"]\nproviders:\n  - type: {kind}\n    host: \"{host}\"\n    endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    api_key: \"real-key\"\n{extra}"
    )
}

/// A reqwest-free HTTP/1.1 client on hyper for well-formed requests, one
/// request per connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    Client::connect(addr).await.send(method, path, headers, body).await
}

/// One keep-alive HTTP/1.1 client connection on hyper: each request is sent
/// after the previous answer was read whole.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, http::HeaderMap, String) {
        let mut req = hyper::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}
