//! Keeping a member's own credentials current, every [`CHECK`]:
//!
//! - **Renewal.** At a random point between 50 % and 80 % of its certificate's lifetime (random,
//!   so members renew at different moments), a member makes a new key, signs a new certificate
//!   for itself with the cluster CA (every member holds it), records it in the identity registry
//!   through consensus, writes it to its data directory, and swaps it into its TLS
//!   configurations: new handshakes present it; open connections carry on.
//! - **CA rotation** ([`crate::identities::rotation`]). When the replicated rotation record asks
//!   for another issuing CA or other trusted roots, the member writes them to its data directory
//!   (`ca.crt` holds the trusted roots, `ca.key` the issuing key; the issuing root is the one in
//!   `ca.crt` that matches the key), takes them into use, and renews its certificate at once if
//!   the current one is not from the issuing root. The admin identity `init` wrote into the data
//!   directory, if it is still there, is moved to the new root too, so the operator is never
//!   locked out by a rotation.
//!
//! Invariants:
//! - a certificate is recorded in the registry before this member presents it, so removing the
//!   member denies it too;
//! - the files on disk are replaced atomically ([`pki::replace_key_pair`]), so a crash leaves
//!   the old pair or the new one in effect at the next start (which finishes an interrupted
//!   replacement first, [`pki::finish_interrupted_replace`]);
//! - a renewal that fails (no quorum) is retried while the current certificate is still valid;
//! - `ca.crt` is written before `ca.key` when the CA changes, and the CA loads from the key and
//!   whichever root matches it, so a crash between the two leaves a CA that loads (the old one,
//!   and the change is simply made again).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::datadir::DataDir;
use super::ServerError;
use crate::identities::{self, rotation, IssuedCertificate};
use crate::mvcc::Store;
use crate::pki::{self, Authority, CertifiedKey, LiveIdentity};
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
    pub authority: Arc<Authority>,
    pub identity: Arc<LiveIdentity>,
    pub consensus: Arc<Consensus>,
    pub store: Arc<Store>,
}

impl Renewal {
    /// Renews this member's certificate whenever it is due, and follows CA rotations; runs until
    /// aborted.
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
        let mut due = identities::renewal_time(identities::issued_at(&current), current.not_after);
        let mut last_rotation_error = String::new();
        let mut admin_checked_at = None;
        loop {
            match follow_rotation(&self.data, &self.store, &self.authority) {
                Ok(()) => last_rotation_error.clear(),
                Err(error) => {
                    // Said once, not every CHECK.
                    let error = error.to_string();
                    if error != last_rotation_error {
                        tracing::error!(%error, "CA rotation: cannot follow it");
                        last_rotation_error = error;
                    }
                }
            }
            // The admin identity can only fall behind when the CA changes: looked at once per
            // change of roots (and once at start), not read from disk every CHECK.
            let epoch = self.authority.trust().epoch();
            if admin_checked_at != Some(epoch) {
                match self.keep_admin_identity_current().await {
                    Ok(()) => admin_checked_at = Some(epoch),
                    Err(error) => tracing::warn!(
                        %error,
                        "moving the admin identity in the data directory failed"
                    ),
                }
            }
            let now = SystemTime::now();
            // The cluster may ask for shorter lifetimes, or rotate its CA, at any time.
            let renew_now = now >= due
                || current.issuer != self.authority.issuer().common_name()
                || self
                    .outlives_the_configured_lifetime(&current)
                    .unwrap_or(false);
            if !renew_now {
                tokio::time::sleep(due.duration_since(now).unwrap_or_default().min(CHECK)).await;
                continue;
            }
            match self.renew().await {
                Ok(renewed) => {
                    tracing::info!(serial = %renewed.serial_hex, issuer = %renewed.issuer, "renewed the member certificate");
                    due = identities::renewal_time(
                        identities::issued_at(&renewed),
                        renewed.not_after,
                    );
                    current = renewed;
                }
                Err(error) => {
                    tracing::warn!(%error, "renewing the member certificate failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// The admin identity `init` wrote to `DATA/admin`, if it is still there: re-issued from the
    /// issuing root when it was signed by another one (a rotation would otherwise lock the
    /// operator out), and its `ca.crt` kept equal to the trusted roots.
    async fn keep_admin_identity_current(&self) -> Result<(), ServerError> {
        let Ok(cert_pem) = std::fs::read_to_string(self.data.admin_cert()) else {
            return Ok(());
        };
        let admin = pki::identity_of(&pki::first_cert_der(&cert_pem)?)?;
        let issuer = self.authority.issuer();
        let roots = self.authority.roots_pem();
        if admin.issuer != issuer.common_name() {
            let lifetime = admin
                .not_after
                .duration_since(identities::issued_at(&admin))
                .unwrap_or(identities::CLIENT_CERT_TTL);
            let renewed = issuer.issue_client(&admin.common_name, lifetime)?;
            let issued = IssuedCertificate::of_pem(&renewed.cert_pem)?;
            self.consensus.propose(issued.record()).await?;
            replace_file(&self.data.admin_ca_cert(), roots.as_bytes(), false)?;
            write_identity(&self.data.admin_key(), &self.data.admin_cert(), &renewed)?;
            tracing::info!(serial = %issued.serial, "moved the admin identity in the data directory to the issuing root");
        } else if std::fs::read_to_string(self.data.admin_ca_cert())
            .ok()
            .as_deref()
            != Some(roots.as_str())
        {
            replace_file(&self.data.admin_ca_cert(), roots.as_bytes(), false)?;
        }
        Ok(())
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
        let renewed = self
            .authority
            .issuer()
            .issue_member(&self.name, &self.hosts, ttl)?;
        let identity = pki::identity_of(&pki::first_cert_der(&renewed.cert_pem)?)?;
        let mut issued = IssuedCertificate::of_identity(&identity);
        issued.member_id = self.member_id;
        self.consensus.propose(issued.record()).await?;
        write_identity(&self.data.member_key(), &self.data.member_cert(), &renewed)?;
        self.identity.replace(&renewed)?;
        Ok(identity)
    }
}

/// Takes into use the issuing CA and trusted roots the rotation record asks for, if they differ
/// from the current ones: data directory first, then the live configuration. Also run once at
/// start-up, before serving, so a member restarted mid-rotation hands out the cross-signed chain
/// from its first certificate on.
pub fn follow_rotation(
    data: &DataDir,
    store: &Store,
    authority: &Authority,
) -> Result<(), ServerError> {
    let Some(rotation) = rotation::current(store)? else {
        return Ok(());
    };
    let issuer = authority.issuer();
    let Some((new_issuer, roots)) = rotation.target(&issuer, &authority.roots_pem())? else {
        return Ok(());
    };
    replace_file(&data.ca_cert(), roots.as_bytes(), false)?;
    if new_issuer.key_pem() != issuer.key_pem() {
        replace_file(&data.ca_key(), new_issuer.key_pem().as_bytes(), true)?;
    }
    tracing::info!(
        issuer = %new_issuer.common_name(),
        rotating = rotation.is_rotating(),
        "CA rotation: took the new issuing CA and trusted roots into use"
    );
    authority.replace(new_issuer, &roots)?;
    Ok(())
}

/// Replaces a certificate and its key (see [`pki::replace_key_pair`]).
fn write_identity(
    key_path: &Path,
    cert_path: &Path,
    identity: &CertifiedKey,
) -> Result<(), ServerError> {
    pki::replace_key_pair(key_path, &identity.key_pem, cert_path, &identity.cert_pem)
        .map_err(|e| ServerError::Io(cert_path.to_path_buf(), e))
}

fn replace_file(path: &Path, contents: &[u8], private: bool) -> Result<(), ServerError> {
    pki::replace_file(path, contents, private).map_err(|e| ServerError::Io(path.to_path_buf(), e))
}
