//! Configurable limits: `max_connections` pauses accepting and resumes when
//! a connection ends, `upstream_max_connecting` keeps a burst from opening a
//! socket per request, `tls_handshake_timeout` drops a silent TLS client, and
//! `h2_max_concurrent_streams` is what the HTTP/2 server advertises.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tls::*;
use crate::support::*;

const GET: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n\r\n";

/// Sends one keep-alive GET and waits (bounded by `limit`) for its status line.
async fn ask(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream.write_all(GET).await.ok()?;
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(limit, read).await.ok()??;
    let text = String::from_utf8_lossy(&seen);
    text.lines().next().map(str::to_string)
}

#[tokio::test]
async fn at_max_connections_accepting_pauses_until_one_closes() {
    let up = MockUpstream::start("ok").await;
    let proxy = TestProxy::start(
        &one_provider("openai", "h.local", up.port(), "")
            .replace("auth_keys:", "workers: 1\nmax_connections: 2\nauth_keys:"),
    );
    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr).await.unwrap();
    for stream in [&mut a, &mut b] {
        assert_eq!(ask(stream, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }
    // The kernel completes the third connection; the proxy does not take it.
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let waiting = tokio::spawn(async move { (ask(&mut c, Duration::from_secs(10)).await, Instant::now()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a third connection was served at max_connections: 2");
    // Those already open are served as before.
    assert_eq!(ask(&mut b, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    let closed_at = Instant::now();
    drop(a);
    let (answer, at) = waiting.await.unwrap();
    assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"), "the waiting client was not served after a close");
    assert!(at >= closed_at);
}

/// A TLS upstream that speaks HTTP/1.1 (each answer closes its connection)
/// until `silent` is set; then it takes TCP connections and never says a
/// word, so a handshake to it hangs. Counts the connections it was offered.
struct Upstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    silent: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn h1_then_silent(ca: &TestCa) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, silent) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[b"http/1.1"]));
    let (count, quiet) = (accepted.clone(), silent.clone());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if quiet.load(Ordering::SeqCst) {
                held.push(stream);
                continue;
            }
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Upstream { port, accepted, silent, task }
}

#[tokio::test]
async fn a_burst_opens_at_most_upstream_max_connecting_sockets_at_once() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, _, _) = ca.write(dir.path());
    let up = h1_then_silent(&ca).await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nupstream_max_connecting: 2\n\
         workers: 1\nconnect_timeout: 5\nretry: {{attempts: 0}}\nca_file: {}\nproviders:\n  \
         - {{type: openai, host: h.local, endpoint: \"localhost:{}\", tls: true, api_key: real-key}}\n",
        ca_file.display(),
        up.port
    );
    let proxy = TestProxy::start(&yaml);
    // Once the endpoint is known to speak HTTP/1.1, new connections to it are
    // dialled side by side, not one shared HTTP/2 dial waited for.
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(ask(&mut first, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    up.silent.store(true, Ordering::SeqCst);
    let before = up.accepted.load(Ordering::SeqCst);
    let mut burst = Vec::new();
    for _ in 0..20 {
        let addr = proxy.addr;
        burst.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            ask(&mut stream, Duration::from_secs(10)).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.accepted.load(Ordering::SeqCst) < before + 2 {
        assert!(Instant::now() < deadline, "the proxy never dialled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Twenty requests wait; only two handshakes are in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), before + 2);
    up.task.abort();
    drop(proxy);
    for request in burst {
        let _ = request.await;
    }
}

#[tokio::test]
async fn tls_handshake_timeout_drops_a_silent_client_and_streams_are_advertised() {
    let ca = TestCa::new();
    let up = MockUpstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let yaml = format!(
        "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\n\
         tls_handshake_timeout: 0.5\nh2_max_concurrent_streams: 7\nauth_keys: [client-key]\nproviders:\n  \
         - {{type: openai, host: localhost, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        cert.display(),
        key.display(),
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a client silent past tls_handshake_timeout was kept");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the timeout: {:?}", started.elapsed());

    let tls = tls_connect(proxy.addr, ca.client_config(&[b"h2"])).await;
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("https://localhost/v1/models")
        .header("authorization", "Bearer client-key")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // Known once the server's SETTINGS arrived, which the answer came after.
    assert_eq!(client.current_max_send_streams(), 7);
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_waits_instead_of_spinning() {
    use std::os::unix::process::CommandExt;
    let up = MockUpstream::start("ok").await;
    let yaml = one_provider("openai", "h.local", up.port(), "").replace("auth_keys:", "workers: 1\nauth_keys:");
    let proxy = TestProxy::start_with(&yaml, "info", |command| {
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes one system call, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 64, 64)
                    .map_err(std::io::Error::from)
            });
        }
    });
    // More connections than descriptors: the kernel completes them all, the
    // proxy runs out taking them in.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    wait_for_log(&proxy, "accept failed; pausing", Duration::from_secs(5)).await;
    let (before, started) = (cpu_ticks(proxy.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(proxy.pid()) - before;
    let ticks_per_second = 100; // USER_HZ on Linux
    let share = used as f64 / (started.elapsed().as_secs_f64() * f64::from(ticks_per_second));
    assert!(share < 0.3, "the proxy used {:.0}% of a core while out of descriptors", share * 100.0);
    // Once descriptors free up, it serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        if ask(&mut stream, Duration::from_secs(2)).await.as_deref() == Some("HTTP/1.1 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "not serving after descriptors were freed");
    }
}
