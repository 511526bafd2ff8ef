//! Member certificate renewal. At a random point between 50 % and 80 % of its certificate's
//! lifetime (random, so members renew at different moments), a member makes a new key, signs a
//! new certificate for itself with the cluster CA (every member holds it), records it in the
//! identity registry through consensus, writes it to its data directory, and swaps it into its
//! TLS configurations: new handshakes present it; open connections carry on.
//!
//! Invariants:
//! - a certificate is recorded in the registry before this member presents it, so removing the
//!   member denies it too;
//! - the files on disk are replaced atomically (write to a temporary file, fsync, rename), key
//!   first, so a crash leaves either the old pair or the new one in effect at the next start;
//! - a renewal that fails (no quorum) is retried while the current certificate is still valid.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::datadir::{sync_dir, DataDir};
use super::ServerError;
use crate::identities::{self, IssuedCertificate};
use crate::mvcc::Store;
use crate::pki::{self, CertifiedKey, ClusterCa, LiveIdentity};
use crate::raft::Consensus;

/// How long to wait before trying a failed renewal again.
const RETRY: Duration = Duration::from_secs(5);
/// How often the schedule is looked at again.
const CHECK: Duration = Duration::from_secs(2);

pub struct Renewal {
    pub data: DataDir,
    pub name: String,
    pub member_id: u64,
    pub hosts: Vec<String>,
    pub ca: Arc<ClusterCa>,
    pub identity: Arc<LiveIdentity>,
    pub consensus: Arc<Consensus>,
    pub store: Arc<Store>,
}

impl Renewal {
    /// Renews this member's certificate whenever it is due; runs until aborted.
    pub async fn run(self) {
        // The certificate in use is read from disk once; afterwards it is the one this task
        // wrote.
        let mut current = loop {
            match self.read_current() {
                Ok(current) => break current,
                Err(error) => {
                    tracing::error!(%error, "reading the member certificate failed");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        loop {
            let due = identities::renewal_time(identities::issued_at(&current), current.not_after);
            // Looked at again every CHECK: the cluster may ask for shorter lifetimes meanwhile.
            loop {
                let now = SystemTime::now();
                if now >= due
                    || self
                        .outlives_the_configured_lifetime(&current)
                        .unwrap_or(false)
                {
                    break;
                }
                tokio::time::sleep(due.duration_since(now).unwrap_or_default().min(CHECK)).await;
            }
            current = loop {
                match self.renew().await {
                    Ok(renewed) => {
                        tracing::info!(serial = %renewed.serial_hex, "renewed the member certificate");
                        break renewed;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "renewing the member certificate failed; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            };
        }
    }

    fn read_current(&self) -> Result<pki::PeerIdentity, ServerError> {
        let cert_pem = std::fs::read_to_string(self.data.member_cert())
            .map_err(|e| ServerError::Io(self.data.member_cert(), e))?;
        Ok(pki::identity_of(&pki::first_cert_der(&cert_pem)?)?)
    }

    /// Whether `current` lives longer than the lifetime the cluster now asks for (`bulwark ca
    /// update --cert-ttl`): then it is renewed at once, to the new lifetime.
    fn outlives_the_configured_lifetime(
        &self,
        current: &pki::PeerIdentity,
    ) -> Result<bool, ServerError> {
        let configured = identities::member_cert_ttl(&self.store)?;
        let left = current
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(left > configured + CHECK)
    }

    /// Issues, records, writes and takes into use a new certificate; returns who it names.
    async fn renew(&self) -> Result<pki::PeerIdentity, ServerError> {
        let ttl = identities::member_cert_ttl(&self.store)?;
        let renewed = self.ca.issue_member(&self.name, &self.hosts, ttl)?;
        let identity = pki::identity_of(&pki::first_cert_der(&renewed.cert_pem)?)?;
        let mut issued = IssuedCertificate::of_identity(&identity);
        issued.member_id = self.member_id;
        self.consensus.propose(issued.record()).await?;
        write_member_identity(&self.data, &renewed)?;
        self.identity.replace(&renewed)?;
        Ok(identity)
    }
}

/// Replaces the member certificate and key in `data` atomically (key first).
fn write_member_identity(data: &DataDir, identity: &CertifiedKey) -> Result<(), ServerError> {
    replace_file(&data.member_key(), identity.key_pem.as_bytes(), true)?;
    replace_file(&data.member_cert(), identity.cert_pem.as_bytes(), false)?;
    sync_dir(&data.pki())
}

fn replace_file(path: &Path, contents: &[u8], private: bool) -> Result<(), ServerError> {
    let temporary = path.with_extension("renewing");
    let failed = |e: std::io::Error| ServerError::Io(path.to_path_buf(), e);
    let _ = std::fs::remove_file(&temporary);
    if private {
        pki::write_private_file(&temporary, contents).map_err(failed)?;
    } else {
        std::fs::write(&temporary, contents).map_err(failed)?;
        std::fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(failed)?;
    }
    std::fs::rename(&temporary, path).map_err(failed)
}
