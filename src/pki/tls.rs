//! rustls configurations for every Bulwark socket: mutual TLS against the cluster CA, ring
//! provider passed explicitly, TLS 1.3 and 1.2, ALPN "h2" (gRPC).
//!
//! `ca_cert_pem` may hold several certificates; all are trusted. That is how a CA rotation keeps
//! old and new identities working side by side.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::pem::{certs_from_pem, key_from_pem};
use super::{CertifiedKey, PkiError};

const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const ALPN_H2: &[u8] = b"h2";

/// The server side of the client port (and of the peer port): presents `identity`, and requires
/// every client to present a certificate chaining to `ca_cert_pem` with the clientAuth usage.
pub fn server_tls_config(
    ca_cert_pem: &str,
    identity: &CertifiedKey,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    // The builder requires a client certificate unless `allow_unauthenticated` is called; we
    // never call it.
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca_cert_pem)?, provider.clone())
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem(&identity.cert_pem)?,
            key_from_pem(&identity.key_pem)?,
        )?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: trusts only `ca_cert_pem` (no system roots), checks the server's name
/// against its SANs, and presents `identity`.
pub fn client_tls_config(
    ca_cert_pem: &str,
    identity: &CertifiedKey,
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_client_auth_cert(
            certs_from_pem(&identity.cert_pem)?,
            key_from_pem(&identity.key_pem)?,
        )?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_cert_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}
