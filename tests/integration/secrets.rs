//! No secret anywhere: a run at `RUST_LOG=trace` with provider keys (plain
//! and from `$(command)`), client keys (global, named, a provider's own) and
//! keys sent in queries, paths and wrong headers, over HTTP/1.1 and HTTP/2 on
//! both sides, with refusals, upstream failures, a reload that fails and
//! `check` on a broken file. Every byte the proxy wrote — its log, every
//! answer's head and body, /metrics, /status, /healthz, /readyz, `check`'s
//! output — is searched for every secret. Each secret holds `SECRET`, which
//! nothing else in the run does.

use std::time::Duration;

use http_body_util::BodyExt;

use crate::support::tls::*;
use crate::support::*;

struct Run {
    dir: tempfile::TempDir,
    admin: u16,
    https: u16,
    log_format: &'static str,
}

fn config(run: &Run, plain: u16, h2_upstream: u16, broken: bool) -> String {
    let dir = run.dir.path();
    let weight = if broken { "sk-weight-SECRET10" } else { "1" };
    let unknown = if broken { "      sk-unknown-SECRET11: 1\n" } else { "" };
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nhttps_port: {https}\nhttps_bind_address: 127.0.0.1\n\
         cert_file: {d}/cert.pem\nprivate_key_file: {d}/key.pem\nca_file: {d}/ca.pem\nadmin_port: {admin}\n\
         log_format: {format}\n\
         auth_keys: [client-SECRET4, {{key: client-named-SECRET5, name: team-a}}]\n\
         providers:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{plain}\", tls: false, api_key: sk-prov-openai-SECRET1}}\n  \
         - type: openai\n    name: cmd\n    host: c.local\n    endpoint: \"localhost:{h2_upstream}\"\n    \
           api_key: \"$(cat {d}/provider-key.txt)\"\n    auth_keys: [prov-client-SECRET6]\n    weight: {weight}\n{unknown}  \
         - {{type: gemini, name: gem, host: g.local, endpoint: \"127.0.0.1:{plain}\", tls: false, api_key: \"$(cat {d}/gemini-key.txt)\"}}\n  \
         - {{type: anthropic, name: dead, host: d.local, endpoint: \"127.0.0.1:{dead}\", tls: false, api_key: sk-ant-dead-SECRET9}}\n",
        https = run.https,
        admin = run.admin,
        format = run.log_format,
        d = dir.display(),
        dead = free_port(),
    )
}

/// Everything an HTTP/1.1 exchange sent back, head and body.
async fn raw(proxy: &TestProxy, request: &str) -> String {
    raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await
}

fn get(path: &str, host: &str, fields: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n")
}

async fn h2_answers(run: &Run, ca: &TestCa) -> String {
    let addr = format!("127.0.0.1:{}", run.https).parse().unwrap();
    let mut client = h2_client(addr, ca).await;
    let mut seen = String::new();
    for (path, key) in [
        ("/v1/models?key=qkey-SECRET8", "prov-client-SECRET6"),
        ("/v1/chat/completions", "wrong-SECRET7"),
        ("/v1/models", "client-named-SECRET5"),
    ] {
        let request = hyper::Request::builder()
            .method("POST")
            .uri(format!("https://c.local{path}"))
            .header("authorization", format!("Bearer {key}"))
            .body(TestBody::bytes("{}"))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        seen.push_str(&format!("{:?}\n", response.headers()));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        seen.push_str(&String::from_utf8_lossy(&body));
    }
    seen
}

#[tokio::test]
async fn no_secret_reaches_any_output_even_at_trace_level() {
    no_secret_in_a_run("text").await;
}

#[tokio::test]
async fn no_secret_reaches_json_logs_either() {
    no_secret_in_a_run("json").await;
}

async fn no_secret_in_a_run(log_format: &'static str) {
    let ca = TestCa::new();
    let run = Run { dir: tempfile::tempdir().unwrap(), admin: free_port(), https: free_port(), log_format };
    ca.write(run.dir.path());
    std::fs::write(run.dir.path().join("provider-key.txt"), "sk-prov-cmd-SECRET2\n").unwrap();
    std::fs::write(run.dir.path().join("gemini-key.txt"), "gem-cmd-SECRET3").unwrap();
    let plain = MockUpstream::start("ok").await;
    let h2_upstream = TlsUpstream::start(&ca, &[b"h2"], UpstreamScript::default()).await;
    let proxy = TestProxy::start_logging(&config(&run, plain.port(), h2_upstream.addr.port(), false), "trace");
    let mut seen = String::new();

    let bearer = |key: &str| format!("Authorization: Bearer {key}\r\n");
    for request in [
        get("/v1/models", "h.local", &bearer("client-SECRET4")),
        get("/v1/models?key=qkey-SECRET8&x=1", "h.local", &bearer("client-named-SECRET5")),
        get("/v1/models", "c.local", &bearer("prov-client-SECRET6")),
        get("/v1beta/models/gemini-pro:generateContent?key=client-SECRET4", "g.local", ""),
        get("/v1beta/models/client-SECRET4:generateContent", "g.local", "x-goog-api-key: client-SECRET4\r\n"),
        get("/v1/models", "h.local", &bearer("wrong-SECRET7")),
        get("/v1/models?key=wrong-SECRET7", "g.local", ""),
        get("/v1/models", "h.local", &(bearer("client-SECRET4") + &bearer("wrong-SECRET7"))),
        get("/v1/models", "h.local", &(bearer("client-SECRET4") + "bad line wrong-SECRET7\r\n")),
        get("/v1/messages", "d.local", "x-api-key: client-SECRET4\r\n"),
        get("/openai/../v1/models", "h.local", &bearer("client-SECRET4")),
        get("/v1/models", "nowhere.local", &bearer("client-SECRET4")),
    ] {
        let answer = raw(&proxy, &request).await;
        assert!(answer.starts_with("HTTP/1.1 "), "{request:?}: {answer}");
        seen.push_str(&answer);
    }
    assert!(seen.contains("HTTP/1.1 200") && seen.contains("HTTP/1.1 401") && seen.contains("HTTP/1.1 502"));
    seen.push_str(&h2_answers(&run, &ca).await);
    assert!(h2_upstream
        .recorded()
        .iter()
        .any(|(r, _)| r.header("authorization") == Some("Bearer sk-prov-cmd-SECRET2")));

    // A reload that fails on values that look like secrets, then `check` on it.
    let good = std::fs::read_to_string(proxy.config_path()).unwrap();
    let broken =
        config(&run, plain.port(), h2_upstream.addr.port(), true).replace("{port}", &proxy.addr.port().to_string());
    std::fs::write(proxy.config_path(), &broken).unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "reload failed", Duration::from_secs(10)).await;
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_openproxy"))
        .args(["check", "-c"])
        .arg(proxy.config_path())
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(!check.status.success());
    seen.push_str(&String::from_utf8_lossy(&check.stdout));
    seen.push_str(&String::from_utf8_lossy(&check.stderr));
    std::fs::write(proxy.config_path(), good).unwrap();

    let admin = format!("127.0.0.1:{}", run.admin).parse().unwrap();
    for path in ["/metrics", "/status", "/healthz", "/readyz"] {
        let (status, headers, body) = send(admin, "GET", path, &[("host", "admin")], "").await;
        seen.push_str(&format!("{status} {headers:?} {body}\n"));
    }
    // The log last, once a last request's line is in it (the writer thread
    // gathers lines for a few milliseconds).
    raw(&proxy, &get("/v1/last-one", "h.local", &bearer("client-SECRET4"))).await;
    wait_for_log(&proxy, "/v1/last-one", Duration::from_secs(5)).await;
    seen.push_str(&proxy.logs());

    let reached = ["openproxy_requests_total", "/v1/last-one", "reload failed", "\"providers\"", "h2::"];
    assert!(reached.iter().all(|r| seen.contains(r)), "the run did not reach the log, metrics or status");
    let leaks: Vec<&str> = seen.lines().filter(|l| l.contains("SECRET")).collect();
    assert!(
        leaks.is_empty(),
        "{} lines show a secret, first ones:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(15)].join("\n")
    );
}
