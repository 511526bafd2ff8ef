//! [`Authority`]: the CA a member issues certificates with, and the roots it trusts, replaced
//! together while it serves when a CA rotation moves on.

use std::sync::{Arc, RwLock};

use super::{ClusterCa, LiveTrust, PkiError};

/// The issuing CA and the trusted roots of one member. The roots are a [`LiveTrust`], so every
/// TLS configuration built from [`Authority::trust`] follows a replacement at its next handshake.
#[derive(Debug)]
pub struct Authority {
    issuer: RwLock<Arc<ClusterCa>>,
    trust: Arc<LiveTrust>,
}

impl Authority {
    pub fn new(issuer: ClusterCa, roots_pem: &str) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(Authority {
            issuer: RwLock::new(Arc::new(issuer)),
            trust: LiveTrust::new(roots_pem)?,
        }))
    }

    /// The CA that signs what this member issues now.
    pub fn issuer(&self) -> Arc<ClusterCa> {
        self.issuer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn trust(&self) -> &Arc<LiveTrust> {
        &self.trust
    }

    /// The trusted roots, PEM: what a client or a joining member is given as its `ca.crt`.
    pub fn roots_pem(&self) -> String {
        self.trust.roots_pem()
    }

    /// Issues with `issuer` and trusts exactly `roots_pem` from now on. The roots change first,
    /// so nothing the new issuer signs is ever refused here.
    pub fn replace(&self, issuer: ClusterCa, roots_pem: &str) -> Result<(), PkiError> {
        self.trust.replace(roots_pem)?;
        *self.issuer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(issuer);
        Ok(())
    }
}
