//! Cluster public-key infrastructure: the cluster root CA, the certificates it issues, the rustls
//! configurations every Bulwark socket uses, and reading who a verified peer certificate names.
//!
//! Layout:
//! - `ca.rs`: [`ClusterCa`], generating or loading the root, issuing member and client
//!   certificates, and making a cross-signed successor root for a rotation.
//! - `authority.rs`: [`Authority`], the issuing CA and trusted roots of a running member.
//! - `identity.rs`: [`identity_of`], the [`PeerIdentity`] (CN, role, serial, expiry) a verified
//!   certificate names.
//! - `tls.rs`: [`server_tls_config`] and [`client_tls_config`], over a replaceable [`LiveTrust`].
//! - `pem.rs`: reading certificates and keys out of PEM ([`first_cert_der`]).
//! - `files.rs`: [`write_private_file`] for key material; [`replace_file`] and
//!   [`replace_file`] (atomic, durable replacement) and [`sync_parent`], which other modules'
//!   durable writes share.
//! - `seal.rs`: sealing a rotated CA key under the old one, for the replicated log.
//!
//! Invariants:
//! - A private key never leaves the member that generated it. The one exception is the admin
//!   client identity that `init` generates and writes to `DATA/admin/` for the operator.
//! - Key files are created with mode 0600 and are never readable by others, not even briefly
//!   ([`write_private_file`]).
//! - Every TLS configuration requires and verifies a client certificate chaining to the cluster
//!   CA: servers refuse a peer without one, clients always present theirs. Only the ring provider
//!   is used, passed explicitly, never a process-wide default.
//! - Roles come from the subject OU ([`MEMBER_OU`], [`CLIENT_OU`]), which only the CA writes; the
//!   CN is the member name or, as in etcd's client-cert-auth, the user name.

mod authority;
mod ca;
mod files;
mod identity;
mod pem;
pub mod seal;
mod tls;
mod token;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

pub use authority::Authority;
pub use ca::{certificate_request, ClusterCa, Successor, CLOCK_SKEW};
pub use files::{
    create_private_file, finish_interrupted_replace, pending, remove_if_present, replace_file,
    replace_key_pair, sync_parent, write_new_file, write_private_file,
};
pub use identity::{identity_of, PeerIdentity, Role};
pub use pem::{certs_from_pem, der_to_pem, first_cert_der};
pub use tls::{
    anonymous_client_tls_config, client_tls_config, peer_server_tls_config, presented_identity,
    server_name_of, server_tls_config, unverified_client_tls_config, LiveIdentity, LiveTrust,
};
pub use token::{ca_digest, der_digest, JoinToken};

/// Subject OU of a member certificate (both ends of peer traffic, server of the client port).
pub const MEMBER_OU: &str = "bulwark-member";
/// Subject OU of a client identity; its CN is the user name.
pub const CLIENT_OU: &str = "bulwark-client";

/// A PEM certificate with its PEM private key.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    /// Shows the certificate but never the key, so an identity can be logged safely.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// Everything that can go wrong creating, loading, reading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating or signing a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("parsing a certificate: {0}")]
    Parse(#[from] x509_parser::error::X509Error),
    #[error("reading PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("no certificate found in the PEM text")]
    NoCertificate,
    #[error("the CA private key does not match the CA certificate")]
    KeyMismatch,
    #[error("the certificate is not a CA certificate")]
    NotACa,
    #[error("the CA organization {0:?} is not a cluster id of 16 hex digits")]
    BadClusterId(String),
    #[error("the certificate subject has {0} common names; exactly one is required")]
    CommonNameCount(usize),
    #[error("a certificate name must not be empty")]
    EmptyName,
    #[error("{0:?} is neither an IP address nor a valid DNS name")]
    InvalidHost(String),
    #[error("a certificate lifetime of {0:?} is out of range")]
    TtlOutOfRange(Duration),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("not a join token: expected BWTKN-1-<CA digest>-<secret>")]
    BadToken,
    #[error("cannot open a sealed CA key: it was sealed under another CA key, or is damaged")]
    Sealed,
}
