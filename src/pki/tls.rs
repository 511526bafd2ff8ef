//! rustls configurations for every Bulwark socket: mutual TLS against the cluster CA, ring
//! provider passed explicitly, TLS 1.3 and 1.2, ALPN "h2" (gRPC).
//!
//! `ca_cert_pem` may hold several certificates; all are trusted. That is how a CA rotation keeps
//! old and new identities working side by side.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::pem::{certs_from_pem, key_from_pem};
use super::{CertifiedKey, PkiError};

const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const ALPN_H2: &[u8] = b"h2";

/// A member's own certificate and key, replaceable while it serves: every TLS configuration
/// built from it presents the current one at each new handshake, so a renewed certificate is
/// taken into use without restarting or dropping open connections.
#[derive(Debug)]
pub struct LiveIdentity {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl LiveIdentity {
    pub fn new(identity: &CertifiedKey) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(LiveIdentity {
            current: RwLock::new(signing_identity(identity)?),
        }))
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &CertifiedKey) -> Result<(), PkiError> {
        let replacement = signing_identity(identity)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = replacement;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Refuses a key that does not belong to the certificate, as rustls' `with_single_cert` does.
fn signing_identity(identity: &CertifiedKey) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
        certs_from_pem(&identity.cert_pem)?,
        key_from_pem(&identity.key_pem)?,
        &provider(),
    )?))
}

impl ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for LiveIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server side of the client port: presents `identity`, and requires
/// every client to present a certificate chaining to `ca_cert_pem` with the clientAuth usage.
pub fn server_tls_config(
    ca_cert_pem: &str,
    identity: &Arc<LiveIdentity>,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config(ca_cert_pem, identity, false)
}

/// The peer port's server side: like [`server_tls_config`], but a client may also connect
/// without a certificate. Such a caller can only fetch the CA certificate or join with a token;
/// every Raft call checks for a member certificate itself. A certificate that *is* presented must
/// still chain to the cluster CA.
pub fn peer_server_tls_config(
    ca_cert_pem: &str,
    identity: &Arc<LiveIdentity>,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config(ca_cert_pem, identity, true)
}

/// A server config presenting `identity` and verifying client certificates against
/// `ca_cert_pem`; `allow_anonymous` also lets clients without a certificate finish the handshake.
fn server_config(
    ca_cert_pem: &str,
    identity: &Arc<LiveIdentity>,
    allow_anonymous: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca_cert_pem)?, provider.clone());
    // The builder requires a client certificate unless told otherwise.
    let verifier = if allow_anonymous {
        verifier.allow_unauthenticated().build()?
    } else {
        verifier.build()?
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// For a joining node that has no certificate yet: trusts only `ca_cert_pem`, presents nothing.
pub fn anonymous_client_tls_config(ca_cert_pem: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// For the one call a joining node makes before it trusts anything: fetching the CA certificate.
/// The server's certificate is NOT verified here (handshake signatures still are); the caller must
/// pin what it receives against the join token's digest before using it for anything.
pub fn unverified_client_tls_config() -> Arc<ClientConfig> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("TLS 1.3 and 1.2 are supported by ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client side: trusts only `ca_cert_pem` (no system roots), checks the server's name
/// against its SANs, and presents `identity`.
pub fn client_tls_config(
    ca_cert_pem: &str,
    identity: &Arc<LiveIdentity>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_client_cert_resolver(identity.clone());
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
