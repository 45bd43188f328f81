//! The command line and process lifecycle: `check`, start-up errors, pid file,
//! graceful stop, and configuration reload on SIGHUP.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn openproxy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_openproxy")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn check_describes_a_valid_config() {
    let (_dir, path) = write_config(
        "http_port: 8080\nhttp_bind_address: 127.0.0.1\nproviders:\n  - type: openai\n    host: a.local/v\n    endpoint: api.example.com\n    api_key: sk-secret-value\n    weight: 2\n",
    );
    let (code, stdout, _) = openproxy(&["check", "-c", &path]);
    assert_eq!(code, 0);
    assert!(stdout.contains("http   127.0.0.1:8080"), "{stdout}");
    assert!(stdout.contains("a.local/v -> [0] openai https://api.example.com:443 weight=2"), "{stdout}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(!stdout.contains("sk-secret-value"), "check must not print keys");
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let (_dir, path) = write_config(
        "https_port: 8443\nproviders:\n  - type: openai\n    host: a.local\n    endpoint: api.example.com\n    weight: -1\n  - type: mystery\n    host: b.local\n    endpoint: b.example.com\n",
    );
    let (code, stdout, stderr) = openproxy(&["check", "-c", &path]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for needle in [
        "cert_file",
        "providers[0] (host \"a.local\")",
        "weight",
        "providers[1] (host \"b.local\")",
        "type is not a provider type",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn unknown_keys_are_reported_with_their_line() {
    let (_dir, path) = write_config(
        "http_port: 8080\nproviders:\n  - type: openai\n    host: a\n    endpoint: e\n    api_key: k\n    wieght: 2\n",
    );
    let (code, _, stderr) = openproxy(&["check", "-c", &path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("wieght") && stderr.contains("line 7"), "{stderr}");
}

#[test]
fn start_with_a_bad_config_exits_1() {
    let (_dir, path) = write_config("providers: []\n");
    let (code, _, stderr) = openproxy(&["start", "-c", &path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("configuration is invalid"), "{stderr}");
    let (code, _, stderr) = openproxy(&["start", "-c", "/nonexistent/openproxy.yml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/openproxy.yml"), "{stderr}");
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = openproxy(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("openproxy "), "{stdout}");
    let (code, stdout, _) = openproxy(&["start", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--config") && stdout.contains("--pid-file"), "{stdout}");
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let up = MockUpstream::start("u").await;
    let mut proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn pid_file_is_written_and_removed_on_exit() {
    let config = one_provider("openai", "h.local", 9, "").replace("{port}", &free_port().to_string());
    let (dir, config_path) = write_config(&config);
    let pid_path = dir.path().join("openproxy.pid");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_openproxy"))
        .args(["start", "-c", &config_path, "-p"])
        .arg(&pid_path)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_path).map(|s| s.trim().to_string()).unwrap_or_default() != child.id().to_string()
    {
        assert!(std::time::Instant::now() < deadline, "pid file never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pid file is written before the signal handlers are installed, the
    // start line just before them: wait for it, or SIGINT may find no handler.
    let started = format!("openproxy {} started", env!("CARGO_PKG_VERSION"));
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(&started) {
        assert!(std::time::Instant::now() < deadline, "start never logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "SIGINT exits cleanly");
    assert!(!pid_path.exists(), "pid file removed on exit");
}

#[tokio::test]
async fn sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let up = MockUpstream::start("u").await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let headers = [("host", "h.local"), ("authorization", "Bearer client-key")];
    send(proxy.addr, "GET", "/v1/a", &headers, "").await;
    let original = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(proxy.config_path(), original.replace("real-key", "rotated-key")).unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "configuration reloaded", Duration::from_secs(10)).await;
    send(proxy.addr, "GET", "/v1/b", &headers, "").await;
    let last = up.recorded().last().cloned().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer rotated-key"), "reload never took effect");
    std::fs::write(proxy.config_path(), "providers: [oops\n").unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "reload failed", Duration::from_secs(10)).await;
    let (status, _, _) = send(proxy.addr, "GET", "/v1/c", &headers, "").await;
    assert_eq!(status, 200, "the running config survives a bad reload");
    assert_eq!(up.recorded().last().unwrap().header("authorization"), Some("Bearer rotated-key"));
}

#[test]
fn a_second_instance_on_a_busy_port_fails_instead_of_sharing_it() {
    let proxy = TestProxy::start(&one_provider("openai", "h.local", 9, ""));
    let config = one_provider("openai", "h.local", 9, "").replace("{port}", &proxy.addr.port().to_string());
    let (dir, path) = write_config(&config);
    let log = dir.path().join("second.log");
    let mut second = Command::new(env!("CARGO_BIN_EXE_openproxy"))
        .args(["start", "-c", &path])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(1), "the second instance must not start: {stderr}");
    assert!(stderr.contains(&format!("cannot listen on {}", proxy.addr)) && stderr.contains("in use"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_accepts_its_share_of_connections() {
    let up = MockUpstream::start("u").await;
    let proxy = TestProxy::start(&format!("workers: 3\n{}", one_provider("openai", "h.local", up.port(), "")));
    let comm_of = |task: &std::fs::DirEntry| std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", proxy.pid())).unwrap();
    let workers = tasks.filter_map(Result::ok).filter(|t| comm_of(t).starts_with("worker-")).count();
    assert_eq!(workers, 3, "one thread per configured worker");
    // The kernel spreads connections over the workers' sockets by address
    // hash: a socket that nobody accepts on would strand about a third of these.
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(Client::connect(proxy.addr).await);
    }
    let mut requests = tokio::task::JoinSet::new();
    for mut client in clients {
        let headers = [("host", "h.local"), ("authorization", "Bearer client-key")];
        requests.spawn(async move { client.send("GET", "/v1/models", &headers, "").await.0 });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tokio::time::timeout(Duration::from_secs(10), requests.join_next()).await.expect("served")
    {
        statuses.push(status.unwrap());
    }
    assert_eq!(statuses, vec![200; 30]);
}

/// A log sink that went away (the reader of a stderr pipe exited) must cost
/// log lines, not requests.
#[tokio::test]
async fn requests_are_served_when_stderr_is_a_broken_pipe() {
    let up = MockUpstream::start("u").await;
    let port = free_port();
    let config = one_provider("openai", "h.local", up.port(), "").replace("{port}", &port.to_string());
    let (_dir, path) = write_config(&config);
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_openproxy"))
        .args(["start", "-c", &path])
        .stderr(std::process::Stdio::from(write))
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(read); // the log reader exits
    let headers = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let request = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        client.send("GET", "/v1/models", &headers, "").await.0
    });
    let status = tokio::time::timeout(Duration::from_secs(5), request).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status.ok().and_then(Result::ok),
        Some(200),
        "the request failed because a log line could not be written"
    );
}

/// Two instances started at the same moment on one port: one must refuse,
/// never both run and split the traffic of one SO_REUSEPORT group.
#[test]
fn two_instances_started_at_once_never_share_a_port() {
    for _ in 0..8 {
        let config = one_provider("openai", "h.local", 9, "").replace("{port}", &free_port().to_string());
        let (_dir, path) = write_config(&config);
        let start = || {
            Command::new(env!("CARGO_BIN_EXE_openproxy"))
                .args(["start", "-c", &path])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut both = [start(), start()];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let exited = loop {
            if let Some(i) = (0..2).find(|&i| both[i].try_wait().unwrap().is_some()) {
                break Some(i);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let code = exited.map(|i| both[i].wait().unwrap().code());
        for child in &mut both {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(code, Some(Some(1)), "both instances kept running on one port");
    }
}

#[test]
fn legacy_forms_still_load_with_a_deprecation_warning() {
    let (_dir, path) = write_config(
        "http_port: 8080\nhealth_check_interval: 5\nproviders:\n  - type: openai\n    host: a.local\n    endpoint: e\n    api_key: [\"sk-1\", \"sk-2\"]\n",
    );
    let (code, stdout, stderr) = openproxy(&["check", "-c", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("keys=2"), "{stdout}");
    assert!(stderr.contains("warning: health_check_interval is deprecated"), "{stderr}");
    assert!(stderr.contains("api_key as a list is deprecated"), "{stderr}");
}

#[tokio::test]
async fn the_hidden_enable_health_check_flag_turns_checks_on_with_a_warning() {
    let up = MockUpstream::start("u").await;
    let config = one_provider("openai", "h.local", up.port(), "").replace("{port}", &free_port().to_string());
    let (dir, path) = write_config(&format!("health_check: {{interval: 0.1}}\n{config}"));
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_openproxy"))
        .args(["start", "-c", &path, "--enable-health-check"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // With checks on, a provider without a health_check block is checked by connecting.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while *up.connections.lock().unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "no check connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("--enable-health-check is deprecated"), "{logs}");
}

#[test]
fn every_yaml_example_of_the_spec_passes_check() {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spec");
    let certs = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::support::tls::TestCa::new().write(certs.path());
    std::fs::rename(cert, certs.path().join("certificate.pem")).unwrap();
    std::fs::rename(key, certs.path().join("private-key.pem")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&spec).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (_dir, config) = write_config(&text.replace("\"/certs/", &format!("\"{}/", certs.path().display())));
        let (code, stdout, stderr) = openproxy(&["check", "-c", &config]);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", path.display());
        assert!(!stderr.contains("warning"), "{}: the spec's own forms are current: {stderr}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 2, "both examples of the spec");
}

/// The unit file as shipped: `systemd-analyze verify` accepts it (with the
/// binary path pointed at this build), and every path it writes is one its
/// sandbox (`ProtectSystem=strict`) leaves writable.
#[test]
fn the_systemd_unit_verifies_and_writes_only_where_it_may() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openproxy.service")).unwrap();
    let value = |key: &str| unit.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string);
    let runtime = format!("/run/{}/", value("RuntimeDirectory").expect("a RuntimeDirectory"));
    let start = value("ExecStart").unwrap();
    let pid_arg = start.split_whitespace().skip_while(|a| *a != "-p").nth(1).expect("a pid file");
    assert!(value("ProtectSystem").as_deref() == Some("strict"));
    for written in [pid_arg.to_string(), value("PIDFile").unwrap()] {
        assert!(written.starts_with(&runtime), "{written} is outside {runtime}, read-only under ProtectSystem=strict");
    }
    assert_eq!(value("PIDFile").as_deref(), Some(pid_arg));

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("openproxy.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/openproxy", env!("CARGO_BIN_EXE_openproxy"))).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian: apt-get install systemd) checks the unit file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("openproxy.service"), "{stderr}");
}

#[test]
fn the_shipped_example_configs_pass_check_with_no_keys_set() {
    for name in ["config.example.yml", "config.container.yml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let out = Command::new(env!("CARGO_BIN_EXE_openproxy"))
            .args(["check", "-c"])
            .arg(&path)
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("GEMINI_API_KEY")
            .env_remove("OPENPROXY_CLIENT_KEY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let (_, cert, key) = crate::support::tls::TestCa::new().write(&dir.path().join("certs"));
    assert!(cert.exists() && key.exists());
    let yaml = "https_port: 8443\ncert_file: certs/cert.pem\nprivate_key_file: certs/key.pem\nca_file: certs/ca.pem\n\
                providers:\n  - {type: forward, host: a.local, endpoint: \"127.0.0.1:9\", tls: false}\n";
    std::fs::write(dir.path().join("config.yml"), yaml).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_openproxy"))
            .args(["check", "-c", config])
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let config = dir.path().join("config.yml").display().to_string();
    let (code, out) = check(&config);
    assert_eq!(code, Some(0), "{out}");
    // A missing file is named by the path that was tried.
    std::fs::write(dir.path().join("config.yml"), yaml.replace("certs/cert.pem", "missing.pem")).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, Some(1));
    assert!(out.contains(&dir.path().join("missing.pem").display().to_string()), "{out}");
}

#[test]
fn check_reports_every_kind_of_mistake_at_once_with_its_line() {
    let (_dir, path) = write_config(
        "http_port: 8080\nhttps_port: \"443\"\nworkers: 0\nauth_keys: [client-key]\nproviders:\n  - type: opnai\n    host: api.local/openai\n    endpoint: api.openai.com\n    weigth: 2\n    tls: yes please\n  - type: anthropic\n    host: api.local/anthropic\n    endpoint: api.anthropic.com\n    weight: -1\n    api_key: sk-ant-secret\n",
    );
    let (code, _, stderr) = openproxy(&["check", "-c", &path]);
    assert_eq!(code, 1);
    for (problem, line) in [
        ("https_port: expected a whole number, found text", 2),
        ("workers must be between 1", 3),
        ("providers[0] (host \"api.local/openai\"): type is not a provider type; did you mean `openai`?", 6),
        ("unknown key `weigth`; did you mean `weight`?", 9),
        ("tls: expected true or false, found text", 10),
        ("providers[1] (host \"api.local/anthropic\"): weight must be greater than 0", 14),
    ] {
        let found = stderr.lines().find(|l| l.contains(problem)).unwrap_or_else(|| panic!("{problem}:\n{stderr}"));
        assert!(
            found.ends_with(&format!("(line {line}, column 5)"))
                || found.ends_with(&format!("(line {line}, column 1)")),
            "{found}"
        );
    }
    assert!(!stderr.contains("sk-ant-secret") && !stderr.contains("yes please"), "no value is echoed:\n{stderr}");
}

/// The image's HEALTHCHECK, run as Docker would against the image's config
/// (ports moved to free ones): it passes while the proxy serves, fails after.
#[tokio::test]
async fn the_dockerfile_healthcheck_asks_the_admin_listener() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let line = dockerfile.lines().find(|l| l.trim_start().starts_with("CMD [\"bash\"")).expect("a HEALTHCHECK CMD");
    let admin = free_port();
    let command: Vec<String> = serde_json::from_str(line.trim_start().trim_start_matches("CMD ")).unwrap();
    let command: Vec<String> = command.into_iter().map(|a| a.replace("9090", &admin.to_string())).collect();
    let yaml = std::fs::read_to_string(root.join("config.container.yml")).unwrap();
    let yaml = yaml
        .replace("http_port: 8080", "http_port: {port}")
        .replace("admin_port: 9090", &format!("admin_port: {admin}"));
    let mut proxy = TestProxy::start(&yaml);
    let check = || Command::new(&command[0]).args(&command[1..]).stderr(std::process::Stdio::null()).status().unwrap();
    assert!(check().success());
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!check().success());
}
