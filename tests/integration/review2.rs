//! Found by a second hostile review, of the first review's fixes: the log
//! writer's own "lines were dropped" warning feeding itself forever on a
//! stderr that fails, and a slow but steady reader still cut by
//! client_send_timeout (the kernel takes bytes in bursts; over TLS the
//! flush drains rustls's buffer uncounted too).

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::*;
use crate::support::*;

/// stderr a pipe whose reader is gone (a log shipper that died, `| head`):
/// each write fails with EPIPE and its lines are now counted as dropped. The
/// writer then logs "log lines were dropped", queued in its own buffer; that
/// line fails too and is counted, which makes the next warning... The writer
/// never sleeps again: every 5 ms one more line is "dropped" on an idle proxy.
#[tokio::test]
async fn review2_an_idle_proxy_on_a_broken_stderr_drops_no_lines() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let yaml = one_provider("openai", "h.local", up.port(), "").replace("{port}", &free_port().to_string());
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    // The reader is gone before the proxy writes its first line.
    drop(read_end);
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let proxy = Spawned::start(&format!("admin_port: {admin}\n{yaml}"), Stdio::from(write_end), &[admin_addr]).await;
    let dropped = || async { scrape(admin).await.get("openproxy_log_lines_dropped_total").copied().unwrap_or(0.0) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = dropped().await;
    // No request in between: nothing is logged but what the writer says itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = dropped().await;
    drop(proxy);
    assert!(after - before <= 2.0, "an idle proxy dropped {} lines in 0.5 s ({before} -> {after})", after - before);
}

/// A 4 MiB answer to a client reading 1 KiB every 20 ms (50 KiB/s) through a
/// 4 KiB receive buffer, with `client_send_timeout: 0.5`. Returns the
/// proxy's log after `secs` seconds of steady reading. The proxy's socket
/// buffer grows to 4 MiB on loopback and is full at once, so the proxy waits
/// on the client from the start; a cut does not show to the client (it keeps
/// reading what the kernel holds), only in the access line, written when the
/// proxy lets go of the answer.
async fn slow_steady_reader(tls: bool, secs: u64) -> String {
    let up = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let size = 4 * 1024 * 1024;
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&vec![b'x'; size]).await;
    })
    .await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let listen = if tls {
        format!(
            "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\n",
            cert.display(),
            key.display()
        )
    } else {
        "http_port: {port}\nhttp_bind_address: 127.0.0.1\n".to_string()
    };
    let proxy = TestProxy::start_logging(
        &format!(
            "{listen}client_send_timeout: 0.5\nauth_keys: [client-key]\nproviders:\n  - type: openai\n    \
             host: localhost\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    api_key: real-key\n",
            up.port()
        ),
        "info",
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(proxy.addr).await.unwrap();
    let mut client: Box<dyn Stream> = if tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"])).connect(name, tcp).await.unwrap())
    } else {
        Box::new(tcp)
    };
    let request = "GET /v1/files/big HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer client-key\r\n\r\n";
    client.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut total = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert!(n > 0, "the connection ended after {total} bytes");
        total += n;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.logs()
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// First review's `a_slow_but_steady_reader_is_not_cut` can never fail (the
/// kernel keeps feeding its client what it holds after a cut); this one
/// looks at the log, and the reader is cut at 0.5 s: with ~3 MiB queued in
/// the socket, the kernel takes no byte more until a third of its buffer
/// drained (about 26 s at 50 KiB/s), so "bytes taken by write" stays still
/// although the client reads steadily.
#[tokio::test]
async fn review2_a_slow_but_steady_plain_reader_is_not_cut_by_client_send_timeout() {
    let logs = slow_steady_reader(false, 4).await;
    let line = logs.lines().find(|l| l.contains("/v1/files/big"));
    assert!(line.is_none(), "the proxy let go of a client reading 50 KiB/s:\n{}", line.unwrap());
}

/// The same over TLS, where it would fail even with a fix that only looks at
/// the kernel's acceptance: `Counting` sees bytes taken by rustls into its
/// own buffer (up to 64 KiB); `write_now` then flushes, and the flush drains
/// that buffer to the socket with no byte counted.
#[tokio::test]
async fn review2_a_slow_but_steady_tls_reader_is_not_cut_by_client_send_timeout() {
    let logs = slow_steady_reader(true, 4).await;
    let line = logs.lines().find(|l| l.contains("/v1/files/big"));
    assert!(line.is_none(), "the proxy let go of a TLS client reading 50 KiB/s:\n{}", line.unwrap());
}

/// `max_connections: 1`, one connection open. A second client is accepted
/// and its loop waits for a place holding it. A reload that removes the
/// listener (the port moves) sets `stop`, and the waiting loop serves the
/// held connection with no place at all: two connections served at once
/// under a limit of one (and the count no longer covers it).
#[tokio::test]
async fn review2_a_reload_does_not_serve_a_waiting_connection_past_max_connections() {
    let up = MockUpstream::start("ok").await;
    let yaml = |port: &str| {
        format!(
            "http_port: {port}\nhttp_bind_address: 127.0.0.1\nworkers: 1\nmax_connections: 1\n\
             auth_keys: [client-key]\nproviders:\n  - {{type: openai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: x}}\n",
            up.port()
        )
    };
    let proxy = TestProxy::start(&yaml("{port}"));
    let request = "GET /v1/models HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\n\r\n";
    let mut first = Client::connect(proxy.addr).await;
    let (status, _, _) =
        first.send("GET", "/v1/models", &[("host", "h.local"), ("authorization", "Bearer client-key")], "").await;
    assert_eq!(status, 200);
    // The second is accepted (the loop has one in hand) but not served.
    let mut second = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    second.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served past the limit before any reload");
    let moved = free_port();
    std::fs::write(proxy.config_path(), yaml(&moved.to_string())).unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "configuration reloaded", Duration::from_secs(5)).await;
    // The first connection is still open (and usable): the second must wait.
    let served = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    let answer = match served {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    };
    drop(first);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "served with max_connections: 1 and another connection open:\n{answer}"
    );
}
