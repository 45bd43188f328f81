//! The immutable snapshot the request path reads: routes, providers, client
//! keys and limits, built whole from a validated [`Config`] and swapped in as
//! one `Arc`. Health flags and pools live outside it so reloads keep them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, HealthCheckSettings};
use crate::provider::{HealthRegistry, Provider};
use crate::proxy::route::Router;
use crate::upstream::{client_tls_config, Endpoint};

/// Upstream response heads may be larger than what we accept from clients.
const UPSTREAM_MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    pub providers: Vec<Arc<Provider>>,
    /// Global client keys.
    pub auth_keys: Vec<Box<[u8]>>,
    pub max_header_size: usize,
    pub upstream_max_head: usize,
    pub connect_timeout: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub health_check: HealthCheckSettings,
    /// The HTTPS listener's TLS settings, rebuilt (certificates re-read) on reload.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Snapshot {
    /// Everything the config names that can fail outside validation (CA files,
    /// endpoint names) fails here, before anything is swapped in.
    pub fn build(config: Config, health: &HealthRegistry) -> Result<Snapshot, Vec<String>> {
        let mut errors = Vec::new();
        let mut tls_configs: HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>> = HashMap::new();
        let mut providers = Vec::with_capacity(config.providers.len());
        for cfg in &config.providers {
            let tls = if cfg.tls {
                let ca = cfg.ca_file.clone().or_else(|| config.ca_file.clone());
                let built = match tls_configs.get(&ca) {
                    Some(tls) => Ok(tls.clone()),
                    None => client_tls_config(ca.as_deref()).inspect(|tls| {
                        tls_configs.insert(ca.clone(), tls.clone());
                    }),
                };
                match built {
                    Ok(tls) => Some((tls, ca.map(|p| p.display().to_string()).unwrap_or_default())),
                    Err(e) => {
                        errors.push(format!("{}: {e}", cfg.label()));
                        continue;
                    }
                }
            } else {
                None
            };
            let endpoint = Endpoint::new(&cfg.endpoint, cfg.port, tls.as_ref().map(|(c, r)| (c.clone(), r.as_str())));
            let provider = endpoint.and_then(|ep| Provider::new(cfg, Arc::new(ep), health.flag_for(cfg)));
            match provider {
                Ok(p) => providers.push(Arc::new(p)),
                Err(e) => errors.push(format!("{}: {e}", cfg.label())),
            }
        }
        let tls = match &config.https {
            Some(https) => match crate::server::tls::server_config(&https.cert_file, &https.private_key_file) {
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
            max_header_size: config.http_max_header_size,
            upstream_max_head: UPSTREAM_MAX_HEAD.max(config.http_max_header_size),
            connect_timeout: config.connect_timeout,
            graceful_shutdown_timeout: config.graceful_shutdown_timeout,
            health_check: config.health_check.clone(),
            tls,
            providers,
            config,
        })
    }
}
