//! Hot upgrade (SIGUSR2), done as nginx and Envoy do it. The running process
//! starts the binary now at its own path with its own arguments, and the new
//! process inherits the listening sockets across exec: their descriptors stay
//! open (close-on-exec cleared in the child only) and are named in
//! `OPENPROXY_LISTEN_FDS` as `fd:scheme:address` items. The new process
//! loads its config, accepts on those same sockets (the kernel queue is
//! shared, so no connection is refused or dropped in between), writes the pid
//! file, and writes one byte to the pipe named in `OPENPROXY_READY_FD`. Only
//! then does the old process stop accepting and drain. A new process that
//! exits, or stays silent for [`READY_WITHIN`], is stopped, and the old one
//! keeps serving.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::AsyncReadExt;

use crate::server::listener::Scheme;
use crate::server::sockets::Inherited;

pub const LISTEN_FDS: &str = "OPENPROXY_LISTEN_FDS";
pub const READY_FD: &str = "OPENPROXY_READY_FD";
/// How long a new process has to load its config and start serving.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// What a predecessor handed this process, if it was started by one.
#[derive(Debug, Default)]
pub struct Handover {
    pub sockets: Inherited,
    ready: Option<OwnedFd>,
}

impl Handover {
    /// Takes the descriptors the environment names, and removes the names
    /// (a later upgrade sets its own). Call first thing in `main`, while the
    /// process has one thread and has opened nothing of its own.
    pub fn take_from_env() -> Result<Handover, String> {
        let listen = std::env::var_os(LISTEN_FDS);
        let ready = std::env::var_os(READY_FD);
        std::env::remove_var(LISTEN_FDS);
        std::env::remove_var(READY_FD);
        let mut handover = Handover::default();
        let mut seen = Vec::new();
        if let Some(list) = listen {
            let list = list.to_str().ok_or_else(|| format!("{LISTEN_FDS} is not UTF-8"))?.to_string();
            for item in list.split(',').filter(|i| !i.is_empty()) {
                let (fd, scheme, addr) = parse_item(item).ok_or_else(|| format!("{LISTEN_FDS}: bad item {item:?}"))?;
                let socket = adopt_listener(take_fd(fd, &mut seen)?, addr)?;
                handover.sockets.push((addr, scheme, socket));
            }
        }
        if let Some(fd) = ready {
            let fd = fd.to_str().and_then(|f| f.parse().ok()).ok_or_else(|| format!("{READY_FD}: not a number"))?;
            let fd = take_fd(fd, &mut seen)?;
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| format!("{READY_FD}: {e}"))?;
            handover.ready = Some(fd);
        }
        Ok(handover)
    }

    /// Tells the predecessor this process serves: it stops accepting and drains.
    pub fn report_ready(&mut self) {
        if let Some(fd) = self.ready.take() {
            if let Err(e) = std::fs::File::from(fd).write_all(b"1") {
                tracing::warn!(error = %e, "cannot tell the previous process that this one is ready");
            }
        }
    }
}

fn parse_item(item: &str) -> Option<(RawFd, Scheme, SocketAddr)> {
    let (fd, rest) = item.split_once(':')?;
    let (scheme, addr) = rest.split_once(':')?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        "admin" => Scheme::Admin,
        _ => return None,
    };
    Some((fd.parse().ok()?, scheme, addr.parse().ok()?))
}

fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
        Scheme::Admin => "admin",
    }
}

/// Owns an inherited descriptor after checking that it is open, is not one
/// of the standard three, and was not named before.
fn take_fd(fd: RawFd, seen: &mut Vec<RawFd>) -> Result<OwnedFd, String> {
    if fd < 3 || seen.contains(&fd) {
        return Err(format!("inherited descriptor {fd} is invalid or named twice"));
    }
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| format!("inherited descriptor {fd}: {e}"))?;
    seen.push(fd);
    // SAFETY: `fd` is open (F_GETFD succeeded) and nothing else in this
    // process owns it: this runs at the start of `main`, on its only thread,
    // before any code opened or adopted a descriptor, and each number is
    // taken once (`seen`); 0–2 are refused. The predecessor opened it for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks that `fd` is a TCP socket listening on `addr`, and readies it.
fn adopt_listener(fd: OwnedFd, addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let raw = fd.as_raw_fd();
    let socket = socket2::Socket::from(fd);
    let why = |what: &str| format!("inherited descriptor {raw} for {addr}: {what}");
    let local = socket.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| why("not an IP socket"))?;
    let listening = socket.is_listener().unwrap_or(false) && socket.r#type().ok() == Some(socket2::Type::STREAM);
    if !listening || local.ip() != addr.ip() || (addr.port() != 0 && local.port() != addr.port()) {
        return Err(why(&format!("not a TCP socket listening there (it is {local})")));
    }
    socket.set_cloexec(true).map_err(|e| why(&e.to_string()))?;
    socket.set_nonblocking(true).map_err(|e| why(&e.to_string()))?;
    Ok(socket.into())
}

/// This binary's path as it was at start (`/proc/self/exe` follows a rename,
/// and a deploy that moves the running file aside must not bring it back).
static STARTED_AS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Notes the binary's path; call at start, before anyone can move the file.
pub fn remember_own_path() {
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        let _ = STARTED_AS.set(exe);
    }
}

/// The binary to start: the path this process was started from (a file
/// replaced there since is the one started; Linux shows the running one's
/// target with a ` (deleted)` suffix, which is not part of the name).
fn own_path() -> Result<PathBuf, String> {
    let exe = match STARTED_AS.get() {
        Some(path) => path.clone(),
        None => std::fs::read_link("/proc/self/exe").map_err(|e| format!("cannot find this binary's path: {e}"))?,
    };
    let bytes = exe.as_os_str().as_bytes();
    let path = PathBuf::from(OsString::from_vec(bytes.strip_suffix(b" (deleted)").unwrap_or(bytes).to_vec()));
    if !path.exists() {
        return Err(format!("no binary at {} any more", path.display()));
    }
    Ok(path)
}

/// A new process started to take over, not yet ready.
#[derive(Debug)]
pub struct Successor {
    child: tokio::process::Child,
    ready: tokio::net::unix::pipe::Receiver,
    pid: u32,
    /// Once ready it lives on; until then, dropping this stops it.
    confirmed: bool,
}

impl Drop for Successor {
    /// Given up (this process is stopping): the new one stops too, gracefully,
    /// as it may have taken clients already.
    fn drop(&mut self) {
        if let (false, Ok(pid)) = (self.confirmed, i32::try_from(self.pid)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Starts the successor with the sockets `handover` lists.
pub fn spawn(handover: &[(RawFd, SocketAddr, Scheme)]) -> Result<Successor, String> {
    let path = own_path()?;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))?;
    let listen: Vec<String> =
        handover.iter().map(|(fd, addr, scheme)| format!("{fd}:{}:{addr}", scheme_name(*scheme))).collect();
    let inherit: Vec<RawFd> = handover.iter().map(|h| h.0).chain([write.as_raw_fd()]).collect();
    let mut command = tokio::process::Command::new(&path);
    command
        .args(std::env::args_os().skip(1))
        .env(LISTEN_FDS, listen.join(","))
        .env(READY_FD, write.as_raw_fd().to_string());
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes one fcntl(2) call per
    // descriptor of a vector built before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    // The child holds the only write end now: if it dies, the read sees the end.
    drop(write);
    let pid = child.id().unwrap_or(0);
    let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(read).map_err(|e| format!("pipe: {e}"))?;
    tracing::info!(pid, binary = %path.display(), "hot upgrade: started the new process");
    Ok(Successor { child, ready, pid, confirmed: false })
}

impl Successor {
    /// Waits until the new process reports ready (its pid), or says why not;
    /// a new process that is not ready in time is stopped.
    pub async fn wait_ready(mut self) -> Result<u32, String> {
        let mut byte = [0u8; 1];
        let pid = self.pid;
        match tokio::time::timeout(READY_WITHIN, self.ready.read(&mut byte)).await {
            Ok(Ok(1)) => {
                self.confirmed = true;
                return Ok(pid);
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!("the new process (pid {pid}) was not ready within {READY_WITHIN:?}; stopped it"))
            }
        }
        // The pipe ended: the new process has exited (or is about to).
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => {
                self.confirmed = true; // nothing left to stop
                Err(format!("the new process (pid {pid}) exited before it was ready ({status})"))
            }
            _ => Err(format!("the new process (pid {pid}) closed its ready pipe without reporting ready; stopped it")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_items_parse_both_schemes_and_ipv6() {
        assert_eq!(parse_item("7:http:127.0.0.1:8080"), Some((7, Scheme::Http, "127.0.0.1:8080".parse().unwrap())));
        assert_eq!(parse_item("9:https:[::1]:8443"), Some((9, Scheme::Https, "[::1]:8443".parse().unwrap())));
        assert_eq!(parse_item("x:http:127.0.0.1:1"), None);
        assert_eq!(parse_item("7:ftp:127.0.0.1:1"), None);
        assert_eq!(parse_item("7:http"), None);
    }
}
