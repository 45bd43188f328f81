//! Building a [`Snapshot`] from a validated [`Config`]: providers with their
//! endpoints, TLS settings and keys, the routing table, and the listener's
//! certificates. Everything that can fail outside validation (CA files,
//! endpoint names, certificates) fails here, before anything is swapped in.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderValue;

use super::{Limits, Snapshot};
use crate::config::{ApiKeyConfig, Config, ProviderConfig, SecretSource};
use crate::provider::secret::{CommandSecret, Secret};
use crate::provider::{ApiKey, HealthRegistry, PassiveHealth, Provider};
use crate::route::Router;
use crate::upstream::{Endpoint, Timeouts};

type ClientTls = Arc<rustls::ClientConfig>;

impl Snapshot {
    pub fn build(config: Config, health: &HealthRegistry) -> Result<Snapshot, Vec<String>> {
        let mut errors = Vec::new();
        let mut tls_configs: HashMap<Option<PathBuf>, ClientTls> = HashMap::new();
        let mut providers = Vec::with_capacity(config.providers.len());
        let mut connecting = HashMap::new();
        for cfg in &config.providers {
            match provider(cfg, &config, &mut tls_configs, &mut connecting, health) {
                Ok(p) => providers.push(Arc::new(p)),
                Err(e) => errors.push(format!("{}: {e}", cfg.label())),
            }
        }
        let tls = match &config.https {
            Some(https) => match crate::tls::server_config(&https.cert_file, &https.private_key_file) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let router = Router::new(
            config
                .providers
                .iter()
                .zip(&providers)
                .map(|(cfg, p)| (cfg.host.as_str(), cfg.host_port, cfg.path_prefix.as_deref(), p.clone())),
        );
        Ok(Snapshot {
            router,
            auth_keys: config.auth_keys.iter().map(|k| k.as_bytes().into()).collect(),
            every_client_key: config
                .auth_keys
                .iter()
                .chain(config.providers.iter().flat_map(|p| &p.auth_keys))
                .map(|k| k.as_bytes().into())
                .collect(),
            auth_key_labels: config
                .auth_keys
                .iter()
                .map(|k| super::client_key_label(k, &config.client_key_names))
                .collect(),
            limits: Limits::from_config(&config),
            health_check: config.health_check.clone(),
            passive_health: PassiveHealth {
                failures: config.passive_health.failures,
                cooldown: config.passive_health.cooldown,
            },
            tls,
            providers,
            config,
        })
    }
}

/// One provider, its upstream TLS settings shared with every provider that
/// trusts the same roots.
fn provider(
    cfg: &ProviderConfig,
    config: &Config,
    tls_configs: &mut HashMap<Option<PathBuf>, ClientTls>,
    connecting: &mut HashMap<Arc<str>, Arc<tokio::sync::Semaphore>>,
    health: &HealthRegistry,
) -> Result<Provider, String> {
    let tls = if cfg.tls {
        let ca = cfg.ca_file.clone().or_else(|| config.ca_file.clone());
        let tls = match tls_configs.get(&ca) {
            Some(tls) => tls.clone(),
            None => {
                let tls = crate::tls::client_config(ca.as_deref())?;
                tls_configs.insert(ca.clone(), tls.clone());
                tls
            }
        };
        Some((tls, ca.map(|p| p.display().to_string()).unwrap_or_default()))
    } else {
        None
    };
    let max_connecting = config.limits.upstream_max_connecting;
    let mut endpoint =
        Endpoint::new(&cfg.endpoint, cfg.port, tls.as_ref().map(|(c, r)| (c.clone(), r.as_str())), max_connecting)?;
    endpoint.connecting = connecting.entry(endpoint.key.clone()).or_insert(endpoint.connecting.clone()).clone();
    let keys = cfg.api_keys.iter().map(api_key).collect::<Result<Vec<_>, _>>()?;
    let mut route_label = cfg.host.clone();
    if let Some(port) = cfg.host_port {
        route_label.push_str(&format!(":{port}"));
    }
    if let Some(prefix) = &cfg.path_prefix {
        route_label.push_str(prefix);
    }
    let metrics = crate::metrics::metrics().for_provider(&route_label, &cfg.metric_name);
    Ok(Provider {
        index: cfg.index,
        kind: cfg.kind,
        metrics,
        route_label,
        endpoint: Arc::new(endpoint),
        weight: cfg.weight,
        priority: cfg.priority,
        is_fallback: cfg.is_fallback,
        keys,
        auth_keys: cfg.auth_keys.iter().map(|k| k.as_bytes().into()).collect(),
        auth_key_labels: cfg.auth_keys.iter().map(|k| super::client_key_label(k, &config.client_key_names)).collect(),
        client_auth: cfg.client_auth,
        health_check: cfg.health_check.clone(),
        health: health.flag_for(identity(cfg)),
        timeouts: Timeouts {
            connect: cfg.timeouts.connect.unwrap_or(config.timeouts.connect),
            first_byte: cfg.timeouts.first_byte.unwrap_or(config.timeouts.first_byte),
            stream_idle: cfg.timeouts.stream_idle.unwrap_or(config.timeouts.stream_idle),
        },
        inject_stream_usage: cfg.inject_stream_usage,
    })
}

/// What makes a provider "the same" across a reload, so it keeps its health
/// and ejection state: route, type, endpoint, keys and the check itself. Keys
/// enter as a hash, so the identity can be held without holding a secret twice.
fn identity(cfg: &ProviderConfig) -> String {
    let mut keys = std::collections::hash_map::DefaultHasher::new();
    cfg.api_keys.iter().for_each(|k| k.source.hash(&mut keys));
    format!(
        "{:?}|{}|{:?}|{:?}|{}|{}|{}|{:?}|{:x}",
        cfg.kind,
        cfg.host,
        cfg.host_port,
        cfg.path_prefix,
        cfg.endpoint,
        cfg.port,
        cfg.tls,
        cfg.health_check,
        keys.finish()
    )
}

fn api_key(cfg: &ApiKeyConfig) -> Result<ApiKey, String> {
    let secret = match &cfg.source {
        SecretSource::Literal(text) => {
            let mut value =
                HeaderValue::from_str(text).map_err(|_| "api key is not a valid header value".to_string())?;
            value.set_sensitive(true);
            Secret::Literal(value)
        }
        SecretSource::Command(cmd) => Secret::Command(CommandSecret::new(cmd.clone())),
    };
    Ok(ApiKey::new(secret, cfg.weight))
}
