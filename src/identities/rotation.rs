//! CA rotation with no downtime, swarm-style, as replicated state under `ca/rotation`.
//!
//! 1. **Start** (`bulwark ca rotate`, [`CaRotation::start`]): a member makes a new root with a new
//!    key and has the current root cross-sign it. The record it proposes holds both roots, the
//!    cross-signed copy, and the new key sealed under the old one ([`crate::pki::seal`]), so every
//!    member (all hold the old key) can open it and nothing else can, not even a snapshot.
//! 2. **Move** (each member, [`CaRotation::target`]): a member opens the new key, trusts both
//!    roots, issues from the new root with the cross-signed copy appended, and renews its own
//!    certificate at once. Peers and clients that still trust only the old root verify the new
//!    certificates through the cross-signed copy; those that trust the new root verify them
//!    directly. Renewing clients move too (`bulwark renew`, `bulwark agent`).
//! 3. **Retire** (the leader, [`supervise`]): once every member's newest certificate comes from
//!    the new root and the grace period for renewing clients has passed, the record is marked
//!    retired (the sealed key dropped from it), members stop trusting the old root (open
//!    connections that authenticated with it are closed), and both join tokens are replaced by
//!    tokens whose digest names the new root.
//!
//! Invariants:
//! - state changes are compare-and-set on the record ([`super::replace_setting`]), so two
//!   concurrent `ca rotate`s cannot both start, and a retirement cannot overwrite a newer start;
//! - the old root is trusted until every member presents a certificate from the new one, so no
//!   member is ever cut off by its peers during the rotation;
//! - a member that missed a whole rotation (down from start to retirement) cannot open the new key
//!   any more; it says so and must be removed and joined again, as with an expired certificate.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{list, now_unix, replace_setting, CertificateState, IssuedCertificate};
use crate::mvcc::{MvccError, Store};
use crate::pki::{self, ClusterCa, PkiError};
use crate::proto::bulwarkpb::command;
use crate::raft::{Consensus, NodeId, ProposeError};

/// Where the current or last rotation is recorded.
pub const ROTATION_SETTING: &str = "ca/rotation";
/// How long after the start the old root stays trusted at least, so renewing clients (`bulwark
/// agent` checks every few seconds) move before it is retired.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// How often the leader looks at a rotation's progress.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(2);

/// A CA rotation, in progress or finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// The new root's generation (2 for the first rotation).
    pub generation: u32,
    pub old_root_pem: String,
    /// CN of the old root: certificates whose issuer it is have not moved yet.
    pub old_root_name: String,
    pub new_root_pem: String,
    pub new_root_name: String,
    /// The new root signed by the old one.
    pub cross_pem: String,
    /// The new root's private key sealed under the old root's key; emptied at retirement.
    pub sealed_key: String,
    /// Seconds since the Unix epoch.
    pub started_at: i64,
    pub grace_seconds: u64,
    /// When the old root was retired (seconds since the Unix epoch); 0 while rotating.
    pub retired_at: i64,
    /// The bytes this record was read from, which a compare-and-set replacing it expects
    /// (not a re-encoding, which another version might write differently).
    #[serde(skip)]
    stored: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("a CA rotation to {0} is in progress; `bulwark ca status` shows how far it is")]
    InProgress(String),
    #[error(
        "this member's CA ({have}) is neither root of the rotation to {new_root}: it missed the \
         rotation while it was down; remove it (`etcdctl member remove ID`) and join it again"
    )]
    Stranded { have: String, new_root: String },
    #[error("this member has not moved to the current root yet; try again in a few seconds")]
    NotCurrent,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] MvccError),
    #[error(transparent)]
    Consensus(#[from] ProposeError),
}

impl CaRotation {
    /// A new rotation away from `issuer`, the root this member issues with, after `previous` (the
    /// last rotation, retired). Returns the record to propose.
    pub fn start(
        issuer: &ClusterCa,
        previous: Option<&CaRotation>,
        grace: Duration,
    ) -> Result<Self, RotationError> {
        if let Some(previous) = previous {
            if previous.is_rotating() {
                return Err(RotationError::InProgress(previous.new_root_name.clone()));
            }
            if previous.new_root_pem != issuer.cert_pem() {
                return Err(RotationError::NotCurrent);
            }
        }
        // From the current root too: a cluster restored with `--keep-ca-from` has no record but
        // may already issue from "Bulwark Root CA 2", and a root's name must never be reused
        // (names tell who has moved).
        let generation = previous
            .map_or(1, |previous| previous.generation)
            .max(issuer.generation())
            + 1;
        let successor = issuer.successor(generation)?;
        let new_root_pem = successor.ca.cert_pem().to_string();
        let sealed_key = pki::seal::seal(
            issuer,
            successor.ca.key_pem().as_bytes(),
            new_root_pem.as_bytes(),
        )?;
        Ok(CaRotation {
            generation,
            old_root_pem: issuer.cert_pem().to_string(),
            old_root_name: issuer.common_name().to_string(),
            new_root_pem,
            new_root_name: successor.ca.common_name().to_string(),
            cross_pem: successor.cross_pem,
            sealed_key,
            started_at: now_unix(),
            grace_seconds: grace.as_secs(),
            retired_at: 0,
            stored: Vec::new(),
        })
    }

    pub fn is_rotating(&self) -> bool {
        self.retired_at == 0
    }

    /// The record with the old root retired, as of `now` (seconds since the Unix epoch).
    pub fn retired(&self, now: i64) -> Self {
        CaRotation {
            sealed_key: String::new(),
            retired_at: now,
            stored: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether the grace period for renewing clients has passed at `now`.
    pub fn grace_over(&self, now: i64) -> bool {
        now >= self.started_at.saturating_add(self.grace_seconds as i64)
    }

    /// The root join tokens pin: the old one until it is retired (a joiner can verify every
    /// member with it, through the cross-signed copy), then the new one.
    pub fn token_root(&self) -> &str {
        if self.is_rotating() {
            &self.old_root_pem
        } else {
            &self.new_root_pem
        }
    }

    /// The trusted roots under this record: both while rotating (new first), then the new one.
    pub fn roots_pem(&self) -> String {
        if self.is_rotating() {
            format!("{}{}", self.new_root_pem, self.old_root_pem)
        } else {
            self.new_root_pem.clone()
        }
    }

    /// What a member that issues with `issuer` and trusts `roots_pem` should issue with and
    /// trust under this record, or `None` when it already does.
    pub fn target(
        &self,
        issuer: &ClusterCa,
        roots_pem: &str,
    ) -> Result<Option<(ClusterCa, String)>, RotationError> {
        let roots = self.roots_pem();
        let chain = if self.is_rotating() {
            self.cross_pem.as_str()
        } else {
            ""
        };
        let new_issuer = if issuer.cert_pem() == self.new_root_pem {
            if issuer.chain_pem() == chain && same_certificates(roots_pem, &roots) {
                return Ok(None);
            }
            ClusterCa::from_pem(issuer.cert_pem(), issuer.key_pem())?
        } else if issuer.cert_pem() == self.old_root_pem && self.is_rotating() {
            let key = pki::seal::unseal(issuer, &self.sealed_key, self.new_root_pem.as_bytes())?;
            let key = String::from_utf8(key.to_vec()).map_err(|_| PkiError::Sealed)?;
            ClusterCa::from_pem(&self.new_root_pem, &key)?
        } else {
            return Err(RotationError::Stranded {
                have: issuer.common_name().to_string(),
                new_root: self.new_root_name.clone(),
            });
        };
        Ok(Some((new_issuer.with_chain(chain), roots)))
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a rotation record serializes")
    }

    /// The command that records `self` in place of `previous` (none: no rotation ever), and is
    /// rejected if the record changed meanwhile.
    pub fn replacing(&self, previous: Option<&CaRotation>) -> command::Kind {
        replace_setting(
            ROTATION_SETTING.to_string(),
            previous
                .map(|previous| previous.stored.clone())
                .unwrap_or_default(),
            self.encode(),
        )
    }
}

/// Whether two PEM bundles hold the same certificates, in any order.
fn same_certificates(a: &str, b: &str) -> bool {
    let ders = |pem: &str| {
        let mut ders: Vec<Vec<u8>> = pki::certs_from_pem(pem)
            .unwrap_or_default()
            .into_iter()
            .map(|der| der.to_vec())
            .collect();
        ders.sort();
        ders
    };
    ders(a) == ders(b)
}

/// The current or last rotation, if the cluster ever rotated its CA.
pub fn current(store: &Store) -> Result<Option<CaRotation>, MvccError> {
    let Some(bytes) = store.setting(ROTATION_SETTING)? else {
        return Ok(None);
    };
    let mut rotation: CaRotation = serde_json::from_slice(&bytes)
        .map_err(|e| MvccError::Corrupt(format!("the CA rotation record does not decode: {e}")))?;
    rotation.stored = bytes;
    Ok(Some(rotation))
}

/// The CA to issue with: this member's, once it is the root the replicated record names;
/// [`RotationError::NotCurrent`] in the seconds before the member has taken a rotation into use
/// (a certificate issued then would come from a root about to be retired).
pub fn issuer(store: &Store, authority: &pki::Authority) -> Result<Arc<ClusterCa>, RotationError> {
    let issuer = authority.issuer();
    match issuing_root_name(store)? {
        Some(name) if name != issuer.common_name() => Err(RotationError::NotCurrent),
        _ => Ok(issuer),
    }
}

/// The root certificates are issued from now, as the replicated record says ("Bulwark Root CA"
/// when the CA was never rotated): a member whose own CA is another one has not taken the
/// latest change into use yet.
pub fn issuing_root_name(store: &Store) -> Result<Option<String>, MvccError> {
    Ok(current(store)?.map(|rotation| rotation.new_root_name))
}

/// The newest certificate recorded for member `member_id` (or, for a member admitted before
/// certificates carried their member, the one with `serial`).
pub fn newest_member_certificate<'a>(
    listed: &'a [(IssuedCertificate, CertificateState)],
    member_id: NodeId,
    serial: &str,
) -> Option<&'a (IssuedCertificate, CertificateState)> {
    listed
        .iter()
        .filter(|(issued, _)| issued.member_id == member_id || issued.serial == serial)
        .max_by_key(|(issued, _)| (issued.issued_at, issued.not_after))
}

/// Names of the members whose newest certificate was not issued by the root named `root_name`.
pub fn members_not_on(
    store: &Store,
    consensus: &Consensus,
    root_name: &str,
) -> Result<Vec<String>, MvccError> {
    let listed = list(store)?;
    Ok(consensus
        .status()
        .members
        .into_iter()
        .filter(|(id, node, _)| {
            // A member pre-registered with `member add` that never joined holds no certificate.
            !node.name.is_empty()
                && newest_member_certificate(&listed, *id, &node.cert_serial)
                    .is_none_or(|(issued, _)| issued.issuer != root_name)
        })
        .map(|(_, node, _)| node.name)
        .collect())
}

/// Names of the members that do not present a certificate from the root named `root_name` on
/// their peer port right now (or cannot be reached): what they present, not what was recorded,
/// since a renewal can be recorded and then not taken into use (a crash, a lost answer).
pub async fn members_not_presenting(consensus: &Consensus, root_name: &str) -> Vec<String> {
    let mut behind = Vec::new();
    for (id, node, _) in consensus.status().members {
        if node.name.is_empty() {
            continue; // pre-registered with `member add`, never joined: it holds no certificate
        }
        match consensus.presented_identity(&node.peer_addr).await {
            Ok(presented) if presented.issuer == root_name => {}
            Ok(_) => behind.push(node.name),
            Err(error) => {
                tracing::info!(member = %format!("{id:016x}"), %error, "CA rotation: cannot see the member's certificate");
                behind.push(node.name);
            }
        }
    }
    behind
}

/// On the leader: retires the old root once every member has moved and the grace period is
/// over, and makes sure the join tokens pin the root they should; runs until aborted.
pub async fn supervise(consensus: Arc<Consensus>, store: Arc<Store>) {
    let mut ticker = tokio::time::interval(SUPERVISE_INTERVAL);
    loop {
        ticker.tick().await;
        if !consensus.is_leader() {
            continue;
        }
        if let Err(error) = supervise_once(&consensus, &store).await {
            tracing::warn!(%error, "CA rotation: retiring the old root failed; retrying");
        }
    }
}

async fn supervise_once(consensus: &Consensus, store: &Store) -> Result<(), RotationError> {
    let Some(rotation) = current(store)? else {
        return Ok(());
    };
    if rotation.is_rotating() {
        let now = now_unix();
        if !rotation.grace_over(now)
            || !members_not_on(store, consensus, &rotation.new_root_name)?.is_empty()
            || !members_not_presenting(consensus, &rotation.new_root_name)
                .await
                .is_empty()
        {
            return Ok(());
        }
        let retired = rotation.retired(now);
        consensus
            .propose(retired.replacing(Some(&rotation)))
            .await?;
        tracing::info!(root = %rotation.old_root_name, "CA rotation: every member moved; old root retired");
    } else {
        // Tokens are replaced once per retirement: whenever one does not pin the new root yet
        // (also when the leader changed halfway through).
        for role in super::TOKEN_ROLES {
            let setting = super::token_setting(role).expect("a token role");
            let stored = super::join_token(store, &setting)?;
            if stored.is_some_and(|token| token.pins(&rotation.new_root_pem)) {
                continue;
            }
            let token = pki::JoinToken::generate(&rotation.new_root_pem)?;
            consensus
                .propose(super::set_setting(setting, token.to_string().into_bytes()))
                .await?;
            tracing::info!(%role, "CA rotation: join token replaced; it pins the new root");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_moves_to_the_new_root_then_drops_the_old() {
        let old = ClusterCa::generate(9).unwrap();
        let rotation = CaRotation::start(&old, None, DEFAULT_GRACE).unwrap();
        assert_eq!(rotation.generation, 2);
        assert!(!rotation.sealed_key.contains("PRIVATE"));
        assert_eq!(rotation.token_root(), old.cert_pem());

        // A member still on the old root opens the new key and trusts both.
        let (new, roots) = rotation.target(&old, old.cert_pem()).unwrap().unwrap();
        assert_eq!(new.cert_pem(), rotation.new_root_pem);
        assert_eq!(new.chain_pem(), rotation.cross_pem);
        assert_eq!(pki::certs_from_pem(&roots).unwrap().len(), 2);
        // Then it is where it should be.
        assert!(rotation.target(&new, &roots).unwrap().is_none());

        // Retired: the chain and the old root go.
        let retired = rotation.retired(now_unix());
        assert!(retired.sealed_key.is_empty());
        assert_eq!(retired.token_root(), rotation.new_root_pem);
        let (finished, roots) = retired.target(&new, &roots).unwrap().unwrap();
        assert_eq!(finished.chain_pem(), "");
        assert_eq!(roots, rotation.new_root_pem);
        assert!(retired.target(&finished, &roots).unwrap().is_none());

        // A member that slept through it cannot follow.
        assert!(matches!(
            retired.target(&old, old.cert_pem()),
            Err(RotationError::Stranded { .. })
        ));
        // The next rotation starts from the new root only.
        assert!(matches!(
            CaRotation::start(&old, Some(&retired), DEFAULT_GRACE),
            Err(RotationError::NotCurrent)
        ));
        assert!(matches!(
            CaRotation::start(&new, Some(&rotation), DEFAULT_GRACE),
            Err(RotationError::InProgress(_))
        ));
        let next = CaRotation::start(&finished, Some(&retired), DEFAULT_GRACE).unwrap();
        assert_eq!(next.generation, 3);
        assert_eq!(next.new_root_name, "Bulwark Root CA 3");
    }

    #[test]
    fn another_cas_key_cannot_open_the_new_key() {
        let old = ClusterCa::generate(9).unwrap();
        let rotation = CaRotation::start(&old, None, DEFAULT_GRACE).unwrap();
        let stranger = ClusterCa::generate(9).unwrap();
        assert!(matches!(
            rotation.target(&stranger, stranger.cert_pem()),
            Err(RotationError::Stranded { .. })
        ));
        assert!(pki::seal::unseal(
            &stranger,
            &rotation.sealed_key,
            rotation.new_root_pem.as_bytes()
        )
        .is_err());
    }

    #[test]
    fn the_grace_period_counts_from_the_start() {
        let old = ClusterCa::generate(9).unwrap();
        let rotation = CaRotation::start(&old, None, Duration::from_secs(60)).unwrap();
        assert!(!rotation.grace_over(rotation.started_at + 59));
        assert!(rotation.grace_over(rotation.started_at + 60));
    }
}
