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
        let mut due = None;
        loop {
            // Looked at again every CHECK: the cluster may ask for shorter lifetimes meanwhile.
            let now = SystemTime::now();
            let scheduled = match due {
                Some(due) => due,
                None => match self.due() {
                    Ok(scheduled) => *due.insert(scheduled),
                    Err(error) => {
                        tracing::error!(%error, "reading the member certificate failed");
                        now + RETRY
                    }
                },
            };
            let shortened = self.outlives_the_configured_lifetime().unwrap_or(false);
            if now < scheduled && !shortened {
                let wait = scheduled.duration_since(now).unwrap_or_default().min(CHECK);
                tokio::time::sleep(wait).await;
                continue;
            }
            due = None;
            loop {
                match self.renew().await {
                    Ok(serial) => {
                        tracing::info!(%serial, "renewed the member certificate");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "renewing the member certificate failed; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }

    fn current(&self) -> Result<pki::PeerIdentity, ServerError> {
        let cert_pem = std::fs::read_to_string(self.data.member_cert())
            .map_err(|e| ServerError::Io(self.data.member_cert(), e))?;
        Ok(pki::identity_of(&pki::first_cert_der(&cert_pem)?)?)
    }

    /// When the certificate in the data directory is due for renewal.
    fn due(&self) -> Result<SystemTime, ServerError> {
        let current = self.current()?;
        Ok(identities::renewal_time(
            identities::issued_at(&current),
            current.not_after,
        ))
    }

    /// Whether the current certificate lives longer than the lifetime the cluster now asks for
    /// (`bulwark ca update --cert-ttl`): then it is renewed at once, to the new lifetime.
    fn outlives_the_configured_lifetime(&self) -> Result<bool, ServerError> {
        let configured = identities::member_cert_ttl(&self.store)?;
        let left = self
            .current()?
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(left > configured + CHECK)
    }

    async fn renew(&self) -> Result<String, ServerError> {
        let ttl = identities::member_cert_ttl(&self.store)?;
        let renewed = self.ca.issue_member(&self.name, &self.hosts, ttl)?;
        let mut issued = IssuedCertificate::of_pem(&renewed.cert_pem)?;
        issued.member_id = self.member_id;
        self.consensus.propose(issued.record()).await?;
        write_member_identity(&self.data, &renewed)?;
        self.identity.replace(&renewed)?;
        Ok(issued.serial)
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
