//! HTTP/2 and TLS limits: rapid reset floods, oversized header lists,
//! certificate types and chains, and certificates re-read on SIGHUP.

use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use http_body_util::BodyExt;

use crate::support::tls::*;
use crate::support::*;

fn https_config(cert: &std::path::Path, key: &std::path::Path, upstream: u16, extra: &str) -> String {
    format!(
        "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\nauth_keys: [client-key]\n{extra}providers:\n  - type: openai\n    host: localhost\n    endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    api_key: real-key\n",
        cert.display(),
        key.display()
    )
}

async fn raw_h2(
    proxy: &TestProxy,
    ca: &TestCa,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tls = tls_connect(proxy.addr, ca.client_config(&[b"h2"])).await;
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    (client, tokio::spawn(conn))
}

fn get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("https://localhost{path}"))
        .header("authorization", "Bearer client-key")
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_is_cut_off_and_others_are_served() {
    let ca = TestCa::new();
    let up = MockUpstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let proxy = TestProxy::start(&https_config(&cert, &key, up.port(), ""));
    let (mut client, conn) = raw_h2(&proxy, &ca).await;
    let mut opened = 0;
    for _ in 0..5000 {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        match client.send_request(get("/v1/flood"), false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    let reason = match ended {
        Ok(Ok(Err(e))) => e.reason(),
        other => panic!("the flooding connection was not closed: {other:?} after {opened} streams"),
    };
    // The client may see the GOAWAY, or only the reset socket that follows it.
    assert!(matches!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM) | None), "reason {reason:?} after {opened} streams");
    wait_for_log(&proxy, "ENHANCE_YOUR_CALM", Duration::from_secs(5)).await;
    assert!(up.recorded().len() < opened, "every reset stream still reached the upstream");
    let mut good = h2_client(proxy.addr, &ca).await;
    let req = hyper::Request::builder()
        .uri("https://localhost/v1/models")
        .header("authorization", "Bearer client-key")
        .body(TestBody::empty())
        .unwrap();
    assert_eq!(good.send_request(req).await.unwrap().status(), 200, "others are still served");
}

#[tokio::test]
async fn oversized_h2_header_list_is_refused_and_reaches_no_upstream() {
    let ca = TestCa::new();
    let up = MockUpstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let proxy = TestProxy::start(&https_config(&cert, &key, up.port(), "http_max_header_size: 2048\n"));
    // Just over the limit: that stream gets 431, the connection lives on.
    let (client, _conn) = raw_h2(&proxy, &ca).await;
    let mut client = client.ready().await.unwrap();
    let mut req = get("/v1/big");
    req.headers_mut().insert("x-big", "a".repeat(4200).parse().unwrap());
    let (response, _) = client.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 431);
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(get("/v1/small"), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200, "the connection keeps serving");
    // Far over it: h2 drops the whole connection with GOAWAY.
    let (client, conn) = raw_h2(&proxy, &ca).await;
    let mut client = client.ready().await.unwrap();
    let mut req = get("/v1/huge");
    req.headers_mut().insert("x-big", "a".repeat(64 * 1024).parse().unwrap());
    let (response, _) = client.send_request(req, true).unwrap();
    let err = response.await.expect_err("a huge header list must not be answered");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    assert!(tokio::time::timeout(Duration::from_secs(5), conn).await.is_ok(), "connection closed");
    assert_eq!(up.recorded().iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(), vec!["/v1/small"]);
}

/// A certificate for `localhost` whose key is made by `alg`, signed by a fresh CA.
fn ca_with(alg: &'static rcgen::SignatureAlgorithm) -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    TestCa { ca_pem: ca.pem(), cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem() }
}

async fn assert_serves_with(ca: &TestCa) {
    let up = MockUpstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let proxy = TestProxy::start(&https_config(&cert, &key, up.port(), ""));
    let mut client = h2_client(proxy.addr, ca).await;
    let req = hyper::Request::builder()
        .uri("https://localhost/v1/models")
        .header("authorization", "Bearer client-key")
        .body(TestBody::empty())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn ecdsa_and_ed25519_keys() {
    assert_serves_with(&ca_with(&rcgen::PKCS_ECDSA_P384_SHA384)).await;
    assert_serves_with(&ca_with(&rcgen::PKCS_ED25519)).await;
}

#[tokio::test]
async fn rsa_key_from_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.key");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        panic!("openssl is needed to make an RSA key for this test");
    }
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let leaf_key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    assert_serves_with(&TestCa { ca_pem: ca.pem(), cert_pem: leaf.pem(), key_pem }).await;
}

#[tokio::test]
async fn certificate_chain_with_intermediate() {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).unwrap();
    let mid_key = rcgen::KeyPair::generate().unwrap();
    let mut mid_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    mid_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mid = rcgen::CertifiedIssuer::signed_by(mid_params, mid_key, &root).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &mid).unwrap();
    // The client trusts only the root: the proxy must send the intermediate.
    let ca = TestCa {
        ca_pem: root.pem(),
        cert_pem: format!("{}{}", leaf.pem(), mid.pem()),
        key_pem: leaf_key.serialize_pem(),
    };
    assert_serves_with(&ca).await;
}

#[tokio::test]
async fn sighup_loads_renewed_certificates() {
    let first = TestCa::new();
    let second = TestCa::new();
    let up = MockUpstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = first.write(dir.path());
    let proxy = TestProxy::start(&https_config(&cert, &key, up.port(), ""));
    // Only the first CA's clients can connect now.
    let _ = h2_client(proxy.addr, &first).await;
    second.write(dir.path());
    proxy.signal("HUP");
    wait_for_log(&proxy, "configuration reloaded", Duration::from_secs(10)).await;
    // From the reload on the renewed certificate is served (h2_client panics otherwise).
    let mut client = h2_client(proxy.addr, &second).await;
    let req = hyper::Request::builder()
        .uri("https://localhost/v1/models")
        .header("authorization", "Bearer client-key")
        .body(TestBody::empty())
        .unwrap();
    let body = client.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("ok"));
}

#[tokio::test]
async fn tls_12_and_13_are_both_served() {
    let ca = TestCa::new();
    let up = MockUpstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let proxy = TestProxy::start(&https_config(&cert, &key, up.port(), ""));
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.ca_pem.as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut tls = tls_connect(proxy.addr, std::sync::Arc::new(config)).await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer client-key\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{version:?}");
    }
}
