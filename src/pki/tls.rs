//! rustls configurations for every Bulwark socket: mutual TLS against the cluster CA, ring
//! provider passed explicitly, TLS 1.3 and 1.2, ALPN "h2" (gRPC).
//!
//! What is trusted is a [`LiveTrust`]: a bundle of roots that may hold several certificates (all
//! trusted; that is how a CA rotation keeps old and new identities working side by side) and that
//! can be replaced while serving: every configuration built from it verifies each new handshake
//! against the bundle current at that moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

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
    generation: AtomicU64,
}

impl LiveIdentity {
    pub fn new(identity: &CertifiedKey) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(LiveIdentity {
            current: RwLock::new(signing_identity(identity)?),
            generation: AtomicU64::new(0),
        }))
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &CertifiedKey) -> Result<(), PkiError> {
        let replacement = signing_identity(identity)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = replacement;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Changes each time the identity is replaced: holders of long-lived client connections
    /// open new ones, which present the new certificate.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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

/// The roots this member trusts, replaceable while it serves (a CA rotation adds the new root,
/// then retires the old one). Configurations built from it check every new handshake against
/// the roots current at that moment; [`LiveTrust::epoch`] tells open connections' holders when
/// to check those again.
pub struct LiveTrust {
    current: RwLock<Arc<Verifiers>>,
    epoch: AtomicU64,
}

impl std::fmt::Debug for LiveTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTrust")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// webpki's verifiers for one bundle of roots.
struct Verifiers {
    roots_pem: String,
    client_required: Arc<dyn ClientCertVerifier>,
    client_optional: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl Verifiers {
    fn build(roots_pem: &str) -> Result<Self, PkiError> {
        let provider = provider();
        let roots = roots(roots_pem)?;
        let client =
            || WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        Ok(Verifiers {
            roots_pem: roots_pem.to_string(),
            client_required: client().build()?,
            client_optional: client().allow_unauthenticated().build()?,
            server: WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?,
        })
    }
}

impl LiveTrust {
    /// Trusts every certificate in `roots_pem`.
    pub fn new(roots_pem: &str) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(LiveTrust {
            current: RwLock::new(Arc::new(Verifiers::build(roots_pem)?)),
            epoch: AtomicU64::new(0),
        }))
    }

    /// Trusts exactly the certificates in `roots_pem` from the next handshake on.
    pub fn replace(&self, roots_pem: &str) -> Result<(), PkiError> {
        let verifiers = Arc::new(Verifiers::build(roots_pem)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = verifiers;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The trusted roots, PEM.
    pub fn roots_pem(&self) -> String {
        self.verifiers().roots_pem.clone()
    }

    /// Changes each time the roots are replaced.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a client presenting `chain` (leaf first) would be accepted now.
    pub fn accepts_client(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifiers()
            .client_required
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    fn verifiers(&self) -> Arc<Verifiers> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Verifies client certificates against a [`LiveTrust`]'s current roots.
#[derive(Debug)]
struct LiveClientVerifier {
    trust: Arc<LiveTrust>,
    allow_anonymous: bool,
}

impl LiveClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let verifiers = self.trust.verifiers();
        if self.allow_anonymous {
            verifiers.client_optional.clone()
        } else {
            verifiers.client_required.clone()
        }
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        !self.allow_anonymous
    }

    /// No hints: with several roots during a rotation, a client should present the one
    /// certificate it has rather than pick by issuer (Go's client falls back to it anyway).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Verifies server certificates (chain and name) against a [`LiveTrust`]'s current roots.
#[derive(Debug)]
struct LiveServerVerifier {
    trust: Arc<LiveTrust>,
}

impl LiveServerVerifier {
    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.trust.verifiers().server.clone()
    }
}

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The server side of the client port: presents `identity`, and requires
/// every client to present a certificate chaining to a root of `trust` with the clientAuth usage.
pub fn server_tls_config(
    trust: &Arc<LiveTrust>,
    identity: &Arc<LiveIdentity>,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config(trust, identity, false)
}

/// The peer port's server side: like [`server_tls_config`], but a client may also connect
/// without a certificate. Such a caller can only fetch the CA certificate or join with a token;
/// every Raft call checks for a member certificate itself. A certificate that *is* presented must
/// still chain to the cluster CA.
pub fn peer_server_tls_config(
    trust: &Arc<LiveTrust>,
    identity: &Arc<LiveIdentity>,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config(trust, identity, true)
}

/// A server config presenting `identity` and verifying client certificates against `trust`;
/// `allow_anonymous` also lets clients without a certificate finish the handshake.
fn server_config(
    trust: &Arc<LiveTrust>,
    identity: &Arc<LiveIdentity>,
    allow_anonymous: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = Arc::new(LiveClientVerifier {
        trust: trust.clone(),
        allow_anonymous,
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption: a resumed session skips the client certificate check, so a client
    // whose root was retired could come back on an old ticket. Connections are long-lived gRPC
    // channels; a full handshake each time costs nothing that matters.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
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

/// The client side: trusts only the roots of `trust` (no system roots), checks the server's name
/// against its SANs, and presents `identity`.
pub fn client_tls_config(
    trust: &Arc<LiveTrust>,
    identity: &Arc<LiveIdentity>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        // Not a weaker check: webpki's own server verifier, over roots that can change.
        .with_custom_certificate_verifier(Arc::new(LiveServerVerifier {
            trust: trust.clone(),
        }))
        .with_client_cert_resolver(identity.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify a server at `address` (HOST:PORT, `[v6]:PORT`) against.
pub fn server_name_of(address: &str) -> Result<ServerName<'static>, PkiError> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| PkiError::InvalidHost(host.to_string()))
}

/// Who the server at `address` (HOST:PORT) is: the leaf it presents in a handshake verified with
/// `tls`, within `timeout`.
pub async fn presented_identity(
    address: &str,
    tls: Arc<ClientConfig>,
    timeout: std::time::Duration,
) -> Result<super::PeerIdentity, String> {
    let name = server_name_of(address).map_err(|e| e.to_string())?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
    };
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| format!("{address}: TLS handshake timed out"))?
        .map_err(|e| format!("{address}: {e}"))?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| format!("{address}: presented no certificate"))?;
    super::identity_of(leaf.as_ref()).map_err(|e| e.to_string())
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
