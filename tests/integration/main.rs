//! The integration tests, one binary: each module drives the real `openproxy`
//! binary (started per test) against mock upstreams on loopback, and all of
//! them share `support`.

mod support;

mod admin;
mod auth;
mod cli;
mod connect;
mod failover;
mod floods;
mod h2_tunnels;
mod hardening;
mod http1_edges;
mod http1_framing;
mod http1_strict;
mod https_h2;
mod https_limits;
mod limits;
mod logging;
mod observability_edges;
mod review;
mod review2;
mod routing;
mod secrets;
mod selection;
mod streaming;
mod timeouts;
mod upstream_reuse;
mod usage;
mod websocket;
mod zero_downtime;
