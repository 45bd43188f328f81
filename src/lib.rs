//! OpenProxy: an LLM API proxy in one binary.
//!
//! One request's way through the modules:
//!
//! ```text
//! server::workers: one single-threaded runtime per core, each with its own
//! SO_REUSEPORT socket and upstream pools; a connection stays on its thread.
//!
//! server::listener ──accept──► (TLS + ALPN) ──► server::h1 (http1 codec)  ─┐
//!                                               server::h2 (h2 crate)     ─┤ message::RequestHead
//!                                                                          │ + body::Body
//!                                                                          ▼
//! proxy::handle   admit: route (Host + prefix) → auth (client key) → select
//!                 respond: rewrite (credentials swapped) → upstream → error
//!                 rendering → access log; written once for both protocols
//!        │
//!        ▼
//! upstream        Pools: idle HTTP/1.1 connections and one shared HTTP/2
//!                 connection per endpoint; exchange returns message::Response
//!        │        as soon as its head arrives
//!        ▼
//! server::h1_write / server::h2 stream the body back frame by frame; after a
//! 101 (WebSocket) or a CONNECT's 200 the body is the upstream connection
//! itself, and server::tunnel bridges bytes both ways (server::h2_tunnel
//! turns an HTTP/2 stream into those bytes, RFC 8441 into an Upgrade)
//! ```
//!
//! Dependencies point one way (no module imports one above it):
//!
//! ```text
//! main, app → lifecycle → reload, upgrade, health → server → proxy → state → route → provider
//!   → upstream → message, body → http1, net, headers, tls; error sits beside
//!   proxy; config feeds state; select and authority are leaves.
//! ```
//!
//! - `config`: YAML → validated `Config` (no I/O beyond reading the file).
//! - `state`: the immutable `Snapshot` (routes, providers, keys, `Limits`) and
//!   `App`, the snapshot plus health (shared) and pools (per worker) that
//!   outlive reloads.
//! - `route`, `select`, `authority`: the routing table, weighted selection,
//!   the one authority syntax.
//! - `provider`: one provider, its type's rules (`kind`) and keys (`secret`).
//! - `http1`: the pure HTTP/1.1 codec: bytes ↔ heads and body frames.
//! - `body`: the neutral body, read and written over HTTP/1.1 and HTTP/2.
//! - `message`: the neutral request head and response.
//! - `net`: upstream byte streams (TCP or TLS) and connections.
//! - `headers`: hop-by-hop, trailer and credential header policy.
//! - `tls`: server and client TLS settings from PEM files.
//! - `upstream`: endpoints, connecting, pooling, one exchange over h1 or h2.
//! - `error`: every proxy-made answer, shaped like the route's provider API.
//! - `health`: active checks; `lifecycle`: the signal loop, pid file and
//!   systemd notifications; `reload`: SIGHUP; `upgrade`: SIGUSR2, handing
//!   the listening sockets (`server::sockets`) to a new process.

pub mod app;
pub mod authority;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod headers;
pub mod health;
pub mod http1;
pub mod lifecycle;
pub mod message;
pub mod metrics;
pub mod net;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod select;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod usage;
