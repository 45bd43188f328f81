//! SIGHUP: the config file (and the certificates it names) loaded, validated
//! and built off the request path, then swapped in whole, or not at all.
//! Listener changes are applied in the same step, without touching the
//! listeners that stay (or their connections). Upstream pools and health
//! state outlive the swap for endpoints and providers that did not change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Config, ProviderConfig};
use crate::metrics::metrics;
use crate::server::listener::Scheme;
use crate::server::sockets::Sockets;
use crate::server::workers::Workers;
use crate::state::{App, Snapshot};

/// The listeners a config asks for.
pub fn listeners(config: &Config) -> Vec<(SocketAddr, Scheme)> {
    let http = config.http.map(|addr| (addr, Scheme::Http));
    let https = config.https.as_ref().map(|h| (h.addr, Scheme::Https));
    let admin = config.admin.map(|addr| (addr, Scheme::Admin));
    http.into_iter().chain(https).chain(admin).collect()
}

/// Reloads from `config_path`; on any error the running config stays.
pub async fn reload(app: &App, config_path: &Path, sockets: &mut Sockets, workers: &Workers) {
    let path = config_path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load_file(&path)).await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(errors)) => {
            metrics().reloaded(false);
            return tracing::error!("reload failed, keeping the running configuration:\n{errors}");
        }
        Err(e) => {
            metrics().reloaded(false);
            return tracing::error!(error = %e, "reload failed, keeping the running configuration");
        }
    };
    for advice in &config.deprecations {
        tracing::warn!("{advice}");
    }
    let current = app.snapshot.load_full();
    if config.workers != current.config.workers {
        tracing::warn!("workers changed; it takes effect at the next hot upgrade (SIGUSR2) or restart");
    }
    let routes = route_changes(&current.config, &config);
    let wanted = listeners(&config);
    let snapshot = match Snapshot::build(config, &app.health) {
        Ok(snapshot) => Arc::new(snapshot),
        Err(errors) => {
            metrics().reloaded(false);
            return tracing::error!("reload failed, keeping the running configuration:\n{}", errors.join("\n"));
        }
    };
    // New listeners are bound before anything changes; the snapshot is in
    // place before they accept, so an HTTPS one has its certificate.
    let swap = || {
        app.snapshot.store(snapshot.clone());
        // Accept loops waiting at max_connections read it again.
        crate::server::gate::limit_changed();
    };
    match sockets.change(&wanted, workers, swap).await {
        Ok(listeners) => {
            crate::telemetry::set_json(snapshot.config.log_json);
            metrics().reloaded(true);
            metrics().config_loaded(&snapshot.config.source_hash);
            app.health.retain_used();
            let listeners = if listeners.is_empty() { "unchanged".to_string() } else { listeners.join(", ") };
            tracing::info!(providers = snapshot.providers.len(), %routes, %listeners, "configuration reloaded");
        }
        Err(why) if Arc::ptr_eq(&app.snapshot.load_full(), &snapshot) => {
            // The new configuration is in place; only a listener is missing.
            metrics().reloaded(true);
            metrics().config_loaded(&snapshot.config.source_hash);
            tracing::error!(%routes, "configuration reloaded, but a listener could not be served: {why}");
        }
        Err(why) => {
            metrics().reloaded(false);
            tracing::error!("reload failed, keeping the running configuration: {why}");
        }
    }
}

/// What a reload changes in the routing table, in words: routes (`host`
/// with port and prefix) added, removed, or with other providers.
pub fn route_changes(old: &Config, new: &Config) -> String {
    let table = |config: &Config| {
        let mut routes: BTreeMap<String, Vec<ProviderConfig>> = BTreeMap::new();
        for p in &config.providers {
            // Position in the file is not a change.
            let unnumbered = ProviderConfig { index: 0, metric_name: String::new(), ..p.clone() };
            routes.entry(p.route()).or_default().push(unnumbered);
        }
        routes
    };
    let (old, new) = (table(old), table(new));
    let mut words = Vec::new();
    let mut list = |what: &str, names: Vec<&String>| {
        if !names.is_empty() {
            let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            words.push(format!("{what} {}", names.join(" ")));
        }
    };
    list("added", new.keys().filter(|r| !old.contains_key(*r)).collect());
    list("removed", old.keys().filter(|r| !new.contains_key(*r)).collect());
    list("changed", new.iter().filter(|(r, p)| old.get(*r).is_some_and(|o| o != *p)).map(|(r, _)| r).collect());
    if words.is_empty() {
        "unchanged".into()
    } else {
        words.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(providers: &str) -> Config {
        config::from_yaml_str(&format!("http_port: 8080\nproviders:\n{providers}")).unwrap()
    }

    #[test]
    fn route_changes_name_each_route_once() {
        let a = "  - {type: openai, host: a.local, endpoint: x, api_key: k}\n";
        let b = "  - {type: openai, host: b.local/v1, endpoint: x, api_key: k}\n";
        let b2 = "  - {type: openai, host: b.local/v1, endpoint: y, api_key: k}\n";
        let c = "  - {type: forward, host: \"c.local:81\", endpoint: x}\n";
        assert_eq!(route_changes(&config(&format!("{a}{b}")), &config(&format!("{b}{a}"))), "unchanged");
        let changed = route_changes(&config(&format!("{a}{b}")), &config(&format!("{b2}{c}")));
        assert_eq!(changed, "added c.local:81; removed a.local; changed b.local/v1");
    }
}
