//! TLS with rustls for every listener (gRPC, HTTP, PostgreSQL), from one
//! certificate, key and optional client-certificate CA; each listener's
//! acceptor names its own ALPN protocol ([`acceptor`]).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The rustls server configuration for `cert` and `key` (PEM); with
/// `client_ca`, clients must present a certificate signed by it.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::Config(format!("--tls-cert {}: {e}", cert.display())))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| Error::Config(format!("--tls-key {}: {e}", key.display())))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| Error::Config(format!("--tls-client-ca {}: {e}", ca.display())))?
            {
                let c = c.map_err(|e| Error::Config(format!("--tls-client-ca {}: {e}", ca.display())))?;
                roots.add(c).map_err(|e| Error::Config(format!("--tls-client-ca {}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Config(format!("--tls-client-ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config =
        builder.with_single_cert(certs, key).map_err(|e| Error::Config(format!("--tls-cert/--tls-key: {e}")))?;
    Ok(Arc::new(config))
}

/// An acceptor of `config` that names `protocol` in ALPN (`http/1.1`,
/// `h2`, `postgresql`).
pub(crate) fn acceptor(config: &rustls::ServerConfig, protocol: &[u8]) -> tokio_rustls::TlsAcceptor {
    let mut config = config.clone();
    config.alpn_protocols = vec![protocol.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
