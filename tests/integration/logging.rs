//! The log writer never holds up a request: with stderr a pipe nobody reads,
//! requests are still answered, the lines that do not fit are dropped and
//! counted, and once stderr takes lines again the writer says how many.

use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn a_stderr_nobody_reads_never_holds_up_a_request() {
    let up = MockUpstream::start("ok").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "http_port: {port}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nworkers: 1\nauth_keys: [client-key]\n\
         providers:\n  - {{type: openai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        up.port()
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut proxy = Spawned::start(&yaml, Stdio::piped(), &[addr, admin_addr]).await;
    // Not read until the end: a pipe holds 64 KiB, then every write to it blocks.
    let mut stderr = proxy.child.stderr.take().unwrap();

    // Each access line carries the path (up to 512 bytes): 2,500 such lines
    // are far more than the pipe and the writer's buffer hold.
    let path = format!("/v1/{}", "abcd/".repeat(100));
    let mut client = Client::connect(addr).await;
    for i in 0..2500 {
        let answer = client.send("GET", &path, &[("host", "h.local"), ("authorization", "Bearer client-key")], "");
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .unwrap_or_else(|_| panic!("request {i} waited for the log"));
        assert_eq!(status, 200);
    }
    let dropped = scrape(admin).await["openproxy_log_lines_dropped_total"];
    assert!(dropped > 0.0, "nothing dropped: the test did not fill the pipe");

    // Read stderr now: the writer goes on and reports the lines it dropped.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text().contains("log lines were dropped") {
        assert!(Instant::now() < deadline, "no report of dropped lines");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Lines come whole, never cut by another.
    let report = text();
    let access: Vec<&str> = report.lines().filter(|l| l.contains("openproxy::access")).collect();
    assert!(!access.is_empty());
    for line in access {
        assert!(line.contains(&path) && line.contains("bytes_out="), "cut line: {line:.120}");
    }
    drop(proxy);
    let _ = reader.join();
}
