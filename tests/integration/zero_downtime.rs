//! Nothing a client sends fails because of a reload, a hot upgrade or a
//! shutdown: a steady mixed load (`support::load`) runs through SIGHUPs that
//! change an endpoint, the client keys and the listeners, a broken config,
//! two SIGUSR2 upgrades (the second after the binary file was replaced), an
//! upgrade whose new process cannot start, and a SIGTERM; every answer and
//! every stream must arrive whole.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::load::{sse_text, Load, Target};
use crate::support::tls::TestCa;
use crate::support::*;
use crate::websocket::echo_upstream;

const WAIT: Duration = Duration::from_secs(20);

/// An upstream that echoes request bodies and names itself in `x-upstream`.
async fn echo(name: &'static str) -> MockUpstream {
    MockUpstream::with(move |r| Reply {
        status: 200,
        headers: vec![("x-upstream".into(), name.into())],
        body: r.body.clone(),
    })
    .await
}

/// An SSE upstream: `SSE_EVENTS` events 20 ms apart, chunked, then close.
async fn sse_upstream() -> RawUpstream {
    RawUpstream::start(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for event in sse_text().split_inclusive("\n\n") {
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    })
    .await
}

struct Setup {
    dir: tempfile::TempDir,
    binary: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    http: u16,
    https: u16,
    ca: Arc<TestCa>,
}

impl Drop for Setup {
    /// A failed test must not leave proxies behind (upgraded generations are
    /// nobody's children): every process still running our binary goes.
    fn drop(&mut self) {
        for pid in self.running() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("openproxy");
        std::fs::copy(env!("CARGO_BIN_EXE_openproxy"), &binary).unwrap();
        let ca = Arc::new(TestCa::new());
        ca.write(dir.path());
        Setup {
            config: dir.path().join("config.yml"),
            pid_file: dir.path().join("openproxy.pid"),
            log: dir.path().join("proxy.log"),
            binary,
            http: free_port(),
            https: free_port(),
            ca,
            dir,
        }
    }

    /// Writes the config: `echo` serves `localhost`, with these client keys;
    /// the HTTPS listener only when `https`.
    fn write(&self, echo: u16, sse: u16, ws: u16, keys: &str, https: bool) {
        let d = self.dir.path().display();
        let provider = |host: &str, port: u16| {
            format!(
                "  - {{type: openai, host: {host}, endpoint: \"127.0.0.1:{port}\", tls: false, api_key: real-key}}\n"
            )
        };
        let https = match https {
            true => format!("https_port: {}\nhttps_bind_address: 127.0.0.1\n", self.https),
            false => String::new(),
        };
        let yaml = format!(
            "http_port: {}\nhttp_bind_address: 127.0.0.1\n{https}\
             cert_file: {d}/cert.pem\nprivate_key_file: {d}/key.pem\nworkers: 2\ngraceful_shutdown_timeout: 15\n\
             auth_keys: [{keys}]\nproviders:\n{}{}{}",
            self.http,
            provider("localhost", echo),
            provider("sse.local", sse),
            provider("ws.local", ws),
        );
        std::fs::write(&self.config, yaml).unwrap();
    }

    fn spawn(&self) -> Child {
        self.spawn_with(&[])
    }

    fn spawn_with(&self, env: &[(&str, &Path)]) -> Child {
        let child = Command::new(&self.binary)
            .envs(env.iter().copied())
            .args(["start", "-c"])
            .arg(&self.config)
            .arg("-p")
            .arg(&self.pid_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while self.pid() != Some(child.id()) {
            assert!(Instant::now() < deadline, "the proxy did not start:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// The steady load, with client key `key-1`, on this setup's listeners.
    fn load(&self) -> Load {
        let target = |port| format!("127.0.0.1:{port}").parse().unwrap();
        Load::start(Target {
            http: target(self.http),
            https: target(self.https),
            ca: self.ca.clone(),
            key: "key-1".into(),
        })
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    fn signal(&self, sig: &str) {
        self.signal_pid(sig, self.pid().expect("a pid file"));
    }

    fn signal_pid(&self, sig: &str, pid: u32) {
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success());
    }

    async fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.logs().matches(needle).count() < count {
            assert!(Instant::now() < deadline, "no {count}× {needle:?} in the log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signals SIGUSR2 and waits until the pid file names a new process.
    async fn upgrade(&self) -> u32 {
        let old = self.pid().unwrap();
        self.signal("USR2");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(new) = self.pid().filter(|p| *p != old) {
                return new;
            }
            assert!(Instant::now() < deadline, "no new process:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Processes running our copy of the binary.
    fn running(&self) -> Vec<u32> {
        let ours = self.binary.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
            if exe.to_string_lossy().starts_with(&ours) && !zombie {
                pids.push(pid);
            }
        }
        pids
    }

    async fn wait_until_only(&self, pid: u32) {
        let deadline = Instant::now() + WAIT;
        while self.running() != vec![pid] {
            assert!(Instant::now() < deadline, "processes {:?}, expected only {pid}:\n{}", self.running(), self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A request with `key` on `port`: (status, x-upstream).
async fn probe(port: u16, key: &str) -> (u16, String) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let auth = format!("Bearer {key}");
    let (status, headers, _) =
        send(addr, "POST", "/v1/echo", &[("host", "localhost"), ("authorization", &auth)], "x").await;
    (status, headers.get("x-upstream").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default())
}

/// Replaces the binary file the way package managers do: a copy renamed over it.
fn replace_binary(binary: &Path) {
    let fresh = binary.with_extension("new");
    std::fs::copy(env!("CARGO_BIN_EXE_openproxy"), &fresh).unwrap();
    std::fs::rename(&fresh, binary).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_sees_a_failure_through_reloads_and_upgrades() {
    let (a, b, sse, (ws, ..)) = (echo("a").await, echo("b").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", false);
    let mut first = setup.spawn();
    let mut load = setup.load();
    load.progress(3).await;

    // SIGHUP that adds a listener: the HTTPS one, then HTTP/2 clients join.
    setup.write(a.port(), sse.port(), ws, "key-1", true);
    setup.signal("HUP");
    setup.wait_for_log_count("configuration reloaded", 1).await;
    load.start_h2();
    load.progress(3).await;

    // SIGHUP: another endpoint, another client key.
    assert_eq!(probe(setup.http, "key-2").await.0, 401);
    setup.write(b.port(), sse.port(), ws, "key-1, key-2", true);
    setup.signal("HUP");
    setup.wait_for_log_count("configuration reloaded", 2).await;
    assert_eq!(probe(setup.http, "key-2").await, (200, "b".into()));
    load.progress(3).await;

    // SIGHUP with a broken file: nothing changes.
    let good = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, "providers: [").unwrap();
    setup.signal("HUP");
    setup.wait_for_log_count("reload failed", 1).await;
    assert_eq!(probe(setup.http, "key-2").await, (200, "b".into()));
    std::fs::write(&setup.config, &good).unwrap();
    load.progress(3).await;

    // Two upgrades; before the second, the binary file is replaced.
    let second = setup.upgrade().await;
    setup.wait_until_only(second).await;
    let _ = first.wait();
    assert_eq!(probe(setup.http, "key-2").await, (200, "b".into()), "the new process has the latest config");
    load.progress(3).await;
    replace_binary(&setup.binary);
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");
    let third = setup.upgrade().await;
    setup.wait_until_only(third).await;
    load.progress(3).await;

    // An upgrade whose new process cannot load its config: the running one stays.
    std::fs::write(&setup.config, "providers: [").unwrap();
    setup.signal("USR2");
    setup.wait_for_log_count("hot upgrade failed", 1).await;
    assert_eq!(setup.pid(), Some(third));
    std::fs::write(&setup.config, &good).unwrap();
    setup.wait_until_only(third).await;
    load.progress(3).await;

    let counts = load.stop().await;
    let failures = counts.failures.lock().unwrap().clone();
    eprintln!("load: {}", counts.summary());
    assert!(failures.is_empty(), "{} failures: {failures:#?}\n{}", failures.len(), counts.summary());
    setup.signal("TERM");
    let deadline = Instant::now() + WAIT;
    while !setup.running().is_empty() {
        assert!(Instant::now() < deadline, "still running: {:?}", setup.running());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_what_is_in_flight_and_exits_0() {
    let (a, sse, (ws, ..)) = (echo("a").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", true);
    let mut proxy = setup.spawn();
    let mut load = setup.load();
    load.start_h2();
    load.progress(3).await;
    // Two SSE clients stream without pause: both streams are mid-way now.
    let streams_before = load.counts.sse.load(std::sync::atomic::Ordering::SeqCst);
    load.stop_starting();
    setup.signal("TERM");
    let counts = load.stop().await;
    let failures = counts.failures.lock().unwrap().clone();
    eprintln!("load: {}", counts.summary());
    assert!(failures.is_empty(), "{} failures: {failures:#?}\n{}", failures.len(), counts.summary());
    let finished = counts.sse.load(std::sync::atomic::Ordering::SeqCst) - streams_before;
    assert!(finished >= 2, "the streams in flight at SIGTERM finished whole ({finished})");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = proxy.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", setup.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", setup.logs());
    assert!(setup.pid().is_none(), "the pid file is removed");
}

#[tokio::test]
async fn systemd_hears_ready_and_the_new_main_pid_and_a_second_usr2_waits() {
    let (a, sse, (ws, ..)) = (echo("a").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", false);
    let good = std::fs::read_to_string(&setup.config).unwrap();
    let socket_path = setup.dir.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let heard = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut first_child = setup.spawn_with(&[("NOTIFY_SOCKET", &socket_path)]);
    let first = setup.pid().unwrap();
    assert_eq!(heard(), format!("MAINPID={first}\nREADY=1"));

    // The config becomes a FIFO: the new process blocks reading it, so the
    // upgrade is still under way when the second SIGUSR2 comes.
    std::fs::remove_file(&setup.config).unwrap();
    nix::unistd::mkfifo(&setup.config, nix::sys::stat::Mode::S_IRWXU).unwrap();
    setup.signal("USR2");
    setup.wait_for_log_count("hot upgrade: started the new process", 1).await;
    setup.signal("USR2");
    setup.wait_for_log_count("already under way", 1).await;
    let config = setup.config.clone();
    tokio::task::spawn_blocking(move || std::fs::write(config, good)).await.unwrap().unwrap();
    let second = heard();
    let pid: u32 = second.strip_prefix("MAINPID=").and_then(|r| r.strip_suffix("\nREADY=1")).unwrap().parse().unwrap();
    assert_ne!(pid, first);
    setup.wait_until_only(pid).await;
    assert!(first_child.wait().unwrap().success(), "the old process drained and exited 0");
    assert_eq!(setup.pid(), Some(pid));
    assert_eq!(setup.logs().matches("hot upgrade: started the new process").count(), 1, "only one upgrade ran");
    setup.signal("TERM");
    assert_eq!(heard(), "STOPPING=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_keeps_the_running_listener_and_config() {
    let (a, b, sse, (ws, ..)) = (echo("a").await, echo("b").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", false);
    let mut proxy = setup.spawn();
    // Someone else holds the port on another loopback address.
    let squatter = std::net::TcpListener::bind(("127.0.0.2", setup.http)).unwrap();
    setup.write(b.port(), sse.port(), ws, "key-1", false);
    let yaml = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, yaml.replace("http_bind_address: 127.0.0.1", "http_bind_address: 0.0.0.0")).unwrap();
    setup.signal("HUP");
    setup.wait_for_log_count("reload failed", 1).await;
    assert!(setup.logs().contains("keeping the running configuration"), "{}", setup.logs());
    assert_eq!(probe(setup.http, "key-1").await, (200, "a".into()), "the old listener and config serve");
    // Without the squatter the same change applies: 0.0.0.0 is bound beside
    // our 127.0.0.1 before that one closes.
    drop(squatter);
    setup.signal("HUP");
    setup.wait_for_log_count("configuration reloaded", 1).await;
    assert_eq!(probe(setup.http, "key-1").await, (200, "b".into()));
    assert!(setup.logs().contains("removed Http listener 127.0.0.1"), "{}", setup.logs());
    setup.signal("TERM");
    assert!(proxy.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_fails_late_takes_no_client_with_it() {
    let (a, sse, (ws, ..)) = (echo("a").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", false);
    let mut proxy = setup.spawn();
    let pid = setup.pid().unwrap();
    let load = setup.load();
    load.progress(2).await;
    // The new process cannot write the pid file: a directory is in its way.
    std::fs::remove_file(&setup.pid_file).unwrap();
    std::fs::create_dir(&setup.pid_file).unwrap();
    for n in 1..=10 {
        assert!(Command::new("kill").args(["-USR2", &pid.to_string()]).status().unwrap().success());
        setup.wait_for_log_count("hot upgrade failed", n).await;
        load.progress(1).await;
    }
    let counts = load.stop().await;
    let failures = counts.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failures: {failures:#?}\n{}", failures.len(), counts.summary());
    setup.wait_until_only(pid).await;
    std::fs::remove_dir(&setup.pid_file).unwrap();
    setup.signal_pid("TERM", pid);
    assert!(proxy.wait().unwrap().success());
}

/// A SIGTERM that meets an upgrade under way stops the service: the old
/// process drains, the new one is asked to stop too (SIGTERM, not a kill:
/// it may have taken clients) and drains, and the pid file goes with the
/// last one. Unless the new process was ready first: then it serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_upgrade_stops_cleanly_or_leaves_the_new_process_serving() {
    let (a, sse, (ws, ..)) = (echo("a").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", false);
    let kill = |sig: &str, pid: u32| {
        Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    };
    let started = format!("openproxy {} started", env!("CARGO_PKG_VERSION"));
    for round in 0..3 {
        let mut old = setup.spawn();
        kill("USR2", old.id());
        // The old process is frozen while the new one starts and reports
        // ready; on waking it finds the SIGTERM too.
        let deadline = Instant::now() + WAIT;
        let new = loop {
            let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", old.id(), old.id()));
            if let Some(pid) = children.unwrap_or_default().split_whitespace().next() {
                break pid.parse::<u32>().unwrap();
            }
            assert!(Instant::now() < deadline, "no successor");
            std::thread::yield_now();
        };
        kill("STOP", old.id());
        setup.wait_for_log_count(&started, 2).await;
        kill("TERM", old.id());
        kill("CONT", old.id());
        assert!(old.wait().unwrap().success());
        if setup.logs().contains("the new process is serving") {
            // Ready first: the upgrade went through, and the new one serves.
            assert_eq!(setup.pid(), Some(new), "round {round}");
            assert_eq!(probe(setup.http, "key-1").await.0, 200);
            kill("TERM", new);
        }
        let deadline = Instant::now() + WAIT;
        while !setup.running().is_empty() {
            assert!(Instant::now() < deadline, "round {round}: {:?}:\n{}", setup.running(), setup.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(setup.pid(), None, "round {round}: no pid file names a dead process:\n{}", setup.logs());
        assert_eq!(setup.logs().matches("INFO openproxy::app: stopped").count(), 2, "both drained:\n{}", setup.logs());
    }
}

#[tokio::test]
async fn an_upgrade_starts_the_file_at_the_original_path_even_after_a_move() {
    let (a, sse, (ws, ..)) = (echo("a").await, sse_upstream().await, echo_upstream().await);
    let setup = Setup::new();
    setup.write(a.port(), sse.port(), ws, "key-1", false);
    let mut first = setup.spawn();
    // A deploy that moves the running file aside and puts the new one in place.
    std::fs::rename(&setup.binary, setup.binary.with_extension("old")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_openproxy"), &setup.binary).unwrap();
    let second = setup.upgrade().await;
    assert!(first.wait().unwrap().success());
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert_eq!(exe, setup.binary, "the new file runs, not the one moved aside");
}
