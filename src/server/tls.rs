//! The server side of TLS: certificate chain and key from PEM files (RSA,
//! ECDSA or Ed25519), TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`. Built into
//! each snapshot, so SIGHUP picks up renewed certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file {} is not valid PEM: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {} holds no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("private_key_file {}: no usable private key ({e})", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file / private_key_file: {e}"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}
