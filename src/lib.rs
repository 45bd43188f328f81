//! OpenProxy: an LLM API proxy in one binary.
//!
//! One request's way through the modules:
//!
//! ```text
//! server::listener ──accept──► server::h1 (reads heads with the http1 codec)
//!        │  neutral proxy::RequestHead + body::Body
//!        ▼
//! proxy::prepare   route (Host + path prefix) → auth (client key, constant time)
//!                  → select (health, fallback, priority, weight)
//! proxy::forward   headers rewrite (hop-by-hop out, credentials swapped, Host set)
//!        │
//!        ▼
//! upstream::Pools  idle HTTP/1.1 connections per endpoint (TLS by rustls)
//!        │  upstream::exchange: head + streamed body out, response head back
//!        ▼
//! server::h1_write streams the response body back frame by frame
//! ```
//!
//! - `config`: YAML → validated `Config` (no I/O beyond reading the file).
//! - `state`: the immutable `Snapshot` built from it, swapped whole on reload.
//! - `provider`: one provider (type rules in `kind`, keys in `secret`) and its health flag.
//! - `http1`: the pure HTTP/1.1 codec: bytes ↔ heads and body frames.
//! - `wire`: writing neutral bodies onto an HTTP/1.1 stream.
//! - `health`: active checks; `lifecycle`: signals, reload, pid file.
//! - `error`: every proxy-made answer, shaped like the route's provider API.

pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod http1;
pub mod http2;
pub mod lifecycle;
pub mod provider;
pub mod proxy;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod wire;
