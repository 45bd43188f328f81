//! Found by a hostile review of the limits, log writer and usage work: a
//! stack overflow at shutdown with a stream open, idle accept loops holding
//! max_connections places, a key cut by the path limit, log lines lost on a
//! non-blocking stderr, inject rewriting a client's body. Each failed before
//! its fix. (Slow but steady readers are in `review2.rs`, which looks at
//! the access line: a client cannot see that it was cut.)

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::*;

/// An OpenAI-like stream that never ends on its own: one event, then one
/// every 50 ms (no usage), until the proxy lets go.
async fn endless_stream() -> RawUpstream {
    RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
        let first = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        if stream.write_all(format!("{head}{first}").as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if stream.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\".\"}}]}\n\n").await.is_err() {
                return;
            }
        }
    })
    .await
}

fn stream_config(upstream: u16, extra: &str) -> String {
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\n{extra}\nauth_keys: [\"client-key\"]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{upstream}\", tls: false, api_key: real-key}}\n"
    )
}

/// A stream still running when `graceful_shutdown_timeout` runs out is cut,
/// and the proxy exits 0 having said `stopped`. The worker runtime drops the
/// connection task; its answer body (`Counted`) sees its reader gone,
/// spawns a task to read on, which the closed runtime drops at once, whose
/// `Counted` spawns again... until the stack overflows.
#[tokio::test]
async fn review_stream_cut_at_the_graceful_deadline_exits_cleanly() {
    let up = endless_stream().await;
    let mut proxy = TestProxy::start(&stream_config(up.port(), "graceful_shutdown_timeout: 0.3"));
    let _client = crate::usage::open_stream(proxy.addr).await;
    proxy.signal("TERM");
    let code = proxy.wait_exit(Duration::from_secs(10));
    let logs = proxy.logs();
    assert_eq!(code, Some(0), "the proxy did not exit cleanly:\n{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

/// Same, for a client that left: the proxy reads on for the usage (5 s),
/// and a SIGTERM meanwhile must still end in a clean exit with the access
/// line written.
#[tokio::test]
async fn review_sigterm_while_reading_on_for_usage_exits_cleanly() {
    let up = endless_stream().await;
    let admin = free_port();
    let mut proxy =
        TestProxy::start(&stream_config(up.port(), &format!("graceful_shutdown_timeout: 2\nadmin_port: {admin}")));
    let client = crate::usage::open_stream(proxy.addr).await;
    drop(client);
    // The proxy lets go of the client once a write to it fails (events come
    // every 50 ms); its connection count says so.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addr = format!("127.0.0.1:{admin}").parse().unwrap();
        let (_, _, text) = send(addr, "GET", "/metrics", &[("host", "admin")], "").await;
        if text.contains("openproxy_client_connections{protocol=\"http1\"} 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the client connection never closed:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.signal("TERM");
    let code = proxy.wait_exit(Duration::from_secs(10));
    let logs = proxy.logs();
    assert_eq!(code, Some(0), "the proxy did not exit cleanly:\n{logs}");
    assert!(logs.contains("path=/v1/chat/completions"), "the access line is lost:\n{logs}");
}

/// `max_connections` below the number of accept loops (one per worker per
/// listener): the loop that took the only place waits in `accept` holding
/// it, so a client the kernel gives another worker's socket waits forever
/// although the proxy has no connection open at all.
#[tokio::test]
async fn review_max_connections_smaller_than_the_accept_loops_still_serves_everyone() {
    let proxy = TestProxy::start(
        "http_port: {port}\nhttp_bind_address: 127.0.0.1\nworkers: 2\nmax_connections: 1\n\
         auth_keys: [k]\nproviders:\n  - {type: openai, host: h.local, endpoint: \"127.0.0.1:9\", tls: false, api_key: x}\n",
    );
    // One client at a time, each on a new connection (so a new 4-tuple, and
    // the kernel's SO_REUSEPORT hash spreads them over both workers).
    let mut stuck = 0;
    for _ in 0..8 {
        let request = b"GET / HTTP/1.1\r\nhost: nowhere.local\r\nconnection: close\r\n\r\n";
        let answer = raw_exchange(proxy.addr, request, Duration::from_secs(2)).await;
        if !answer.starts_with("HTTP/1.1 ") {
            stuck += 1;
        }
    }
    assert_eq!(stuck, 0, "{stuck} of 8 clients were never answered by an idle proxy");
}

/// A client key as the last segment of a long path: the access log cuts the
/// path at 512 characters *before* it replaces key segments with
/// `redacted`, so the cut key no longer matches and all but its last
/// character are logged.
#[tokio::test]
async fn review_a_client_key_cut_by_the_path_limit_is_not_logged() {
    let up = MockUpstream::start("ok").await;
    let config = one_provider("openai", "h.local", up.port(), "").replace("\"client-key\"", "\"client-key-SECRET\"");
    let proxy = TestProxy::start(&config);
    // 1 + 494 + 1 = 496 characters before the 17 of the key: the cut at 512
    // leaves 16 of them.
    let path = format!("/{}/client-key-SECRET", "a".repeat(494));
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key-SECRET\r\nconnection: close\r\n\r\n"
    );
    let answer = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    wait_for_log(&proxy, "aaaa", Duration::from_secs(5)).await;
    let logs = proxy.logs();
    let line = logs.lines().find(|l| l.contains("aaaa")).unwrap();
    assert!(!line.contains("client-key-SECRE"), "most of the key is in the log:\n{line}");
}

/// `stream_usage: inject` promises "the client's other bytes unchanged". A
/// request with a `stream_options` object (without `include_usage`) is
/// re-serialised through `serde_json::Value` instead: keys come out sorted
/// and an integer past u64 becomes a float.
#[tokio::test]
async fn review_inject_keeps_the_clients_other_bytes_when_stream_options_is_an_object() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), "    stream_usage: inject\n"));
    let request = r#"{"model":"gpt-4o","stream":true,"stream_options":{"x":1},"seed":123456789012345678901234}"#;
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let (status, _, _) = send(proxy.addr, "POST", "/v1/chat/completions", &auth, request).await;
    assert_eq!(status, 200);
    let sent = String::from_utf8_lossy(&up.recorded()[0].body).into_owned();
    assert!(sent.contains("\"include_usage\":true"), "{sent}");
    assert!(sent.starts_with(r#"{"model":"gpt-4o","stream":true,"#), "keys reordered: {sent}");
    assert!(sent.contains(r#""seed":123456789012345678901234"#), "the seed changed: {sent}");
}

/// stderr may be a pipe some other process made non-blocking (the flag is
/// on the shared file description: a supervisor, a container runtime or a
/// shell pipeline can set it). When it fills, `write(2)` says `EAGAIN`, and
/// the writer thread throws the whole batch away: lines vanish without
/// being counted in `openproxy_log_lines_dropped_total` or warned about.
#[tokio::test]
async fn review_every_access_line_is_written_or_counted_on_a_nonblocking_stderr() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::io::Read;
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let port = free_port();
    let yaml = one_provider("openai", "h.local", up.port(), "").replace("{port}", &port.to_string());
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    fcntl(std::os::fd::AsRawFd::as_raw_fd(&write_end), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut proxy =
        Spawned::start(&format!("admin_port: {admin}\n{yaml}"), std::process::Stdio::from(write_end), &[addr]).await;
    // Nobody reads the pipe yet: 64 KiB of it fill up after a few hundred lines.
    const REQUESTS: usize = 1500;
    let mut client = Client::connect(addr).await;
    for _ in 0..REQUESTS {
        let (status, _, _) =
            client.send("GET", "/v1/models", &[("host", "h.local"), ("authorization", "Bearer client-key")], "").await;
        assert_eq!(status, 200);
    }
    // Let the writer meet the full pipe.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::fs::File::from(read_end).read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dropped = scrape(admin).await.get("openproxy_log_lines_dropped_total").copied().unwrap_or(0.0);
    let pid = nix::unistd::Pid::from_raw(proxy.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let _ = proxy.child.wait();
    let logs = reader.join().unwrap();
    let written = logs.lines().filter(|l| l.contains("path=/v1/models")).count();
    assert_eq!(
        written + dropped as usize,
        REQUESTS,
        "{written} access lines written, {dropped} counted as dropped, of {REQUESTS}"
    );
}
