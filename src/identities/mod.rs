//! The identity registry: every certificate the cluster issued (members' and clients'), its
//! revocations, and the join tokens that let new machines obtain one. All of it is replicated
//! state: cluster settings written through consensus, so every member answers the same.
//!
//! Settings:
//! - `identity/<serial>`: an [`IssuedCertificate`] (JSON), written when a certificate is issued;
//! - `deny/<serial>`: a [`Denial`] (JSON): every member refuses that certificate at the TLS
//!   handshake and drops its open connections; dropped from the list by the leader once the
//!   certificate has expired anyway (TLS refuses it from then on);
//! - `join-token/<role>`: the join token of `manager` (new members) and `client` (new client
//!   identities, `bulwark login`);
//! - `ca/member-cert-ttl`: the lifetime of member certificates;
//! - `ca/rotation`: the current or last CA rotation ([`rotation`]).
//!
//! Invariants:
//! - a certificate is recorded before it is handed out, so `identity list` and `identity revoke`
//!   know every certificate anyone holds;
//! - a revoked certificate is denied until it expires: a denial is removed only after its
//!   `not_after` (a denial without one is kept for ever).

pub mod rotation;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::mvcc::{CommandResponse, MvccError, Store};
use crate::pki::{self, ClusterCa, PeerIdentity, PkiError, Role};
use crate::proto::bulwarkpb::{command, Setting};
use crate::raft::{Consensus, ProposeError};

const IDENTITY_PREFIX: &str = "identity/";
const DENY_PREFIX: &str = "deny/";
/// How often the leader drops denials of certificates that have expired.
pub const DENY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// When a certificate valid from `issued` until `not_after` should be renewed: a uniformly random
/// point between 50 % and 80 % of its lifetime (random, so that holders renew at different
/// moments).
pub fn renewal_time(issued: SystemTime, not_after: SystemTime) -> SystemTime {
    use rand::Rng;
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    let fraction = rand::thread_rng().gen_range(0.5..0.8);
    issued + lifetime.mul_f64(fraction)
}

/// When a certificate was issued: certificates start `pki::CLOCK_SKEW` before that.
pub fn issued_at(identity: &PeerIdentity) -> SystemTime {
    identity.not_before + Duration::try_from(pki::CLOCK_SKEW).unwrap_or_default()
}

/// Default lifetime of a member certificate; `bulwark ca update --cert-ttl` changes it.
pub const DEFAULT_MEMBER_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest member certificate lifetime `ca update` accepts: renewal (at 50 to 80 % of it)
/// needs a quorum round trip, and tests need lifetimes of seconds, not days.
pub const MIN_MEMBER_CERT_TTL: Duration = Duration::from_secs(20);
const MEMBER_CERT_TTL_SETTING: &str = "ca/member-cert-ttl";

/// The lifetime new and renewed member certificates get.
pub fn member_cert_ttl(store: &Store) -> Result<Duration, MvccError> {
    Ok(store
        .setting(MEMBER_CERT_TTL_SETTING)?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<u64>().ok())
        .map_or(DEFAULT_MEMBER_CERT_TTL, Duration::from_secs))
}

/// The command that sets the member certificate lifetime.
pub fn set_member_cert_ttl(ttl: Duration) -> command::Kind {
    set_setting(
        MEMBER_CERT_TTL_SETTING.to_string(),
        ttl.as_secs().to_string().into_bytes(),
    )
}

/// Serials of every certificate issued to member `member_id` that is not denied yet.
pub fn member_certificates(
    store: &Store,
    member_id: u64,
) -> Result<Vec<IssuedCertificate>, MvccError> {
    Ok(list(store)?
        .into_iter()
        .filter(|(issued, state)| {
            issued.member_id == member_id && *state != CertificateState::Revoked
        })
        .map(|(issued, _)| issued)
        .collect())
}

/// Default lifetime of a client identity (`identity issue --ttl`, `login`).
pub const CLIENT_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The longest lifetime a renewal gives (the admin identity `init` writes lives a year).
pub const MAX_RENEWED_CLIENT_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The roles a join token admits.
pub const TOKEN_ROLES: [&str; 2] = ["manager", "client"];

/// Where a role's join token lives in the replicated settings.
pub fn token_setting(role: &str) -> Option<String> {
    TOKEN_ROLES
        .contains(&role)
        .then(|| format!("join-token/{role}"))
}

/// The join token stored under `setting` (see [`token_setting`]), if there is one.
pub fn join_token(store: &Store, setting: &str) -> Result<Option<pki::JoinToken>, MvccError> {
    Ok(store
        .setting(setting)?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| pki::JoinToken::parse(&text).ok()))
}

/// Settings name under which a denied certificate serial is recorded.
pub fn deny_setting(serial_hex: &str) -> String {
    format!("{DENY_PREFIX}{serial_hex}")
}

fn identity_setting(serial_hex: &str) -> String {
    format!("{IDENTITY_PREFIX}{serial_hex}")
}

/// A certificate the cluster issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    pub name: String,
    /// "member" or "client".
    pub role: String,
    /// Lowercase hex, the key of the deny list.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub issued_at: i64,
    /// The member a member certificate belongs to (0 for clients): removing the member denies
    /// every certificate it was issued, renewed ones included.
    #[serde(default)]
    pub member_id: u64,
    /// CN of the root that signed it ("Bulwark Root CA", "Bulwark Root CA 2", ...): whether its
    /// holder has moved to a rotated root. Empty in entries older than CA rotation.
    #[serde(default)]
    pub issuer: String,
}

/// Why and until when a certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub reason: String,
    /// The certificate's expiry (seconds since the Unix epoch); 0 if unknown (kept for ever).
    pub not_after: i64,
}

/// Where an issued certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateState {
    Valid,
    Expired,
    Revoked,
}

impl CertificateState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateState::Valid => "valid",
            CertificateState::Expired => "expired",
            CertificateState::Revoked => "revoked",
        }
    }
}

pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

pub fn now_unix() -> i64 {
    unix_seconds(SystemTime::now())
}

impl IssuedCertificate {
    /// The registry entry for a certificate the CA just signed (PEM).
    pub fn of_pem(cert_pem: &str) -> Result<Self, PkiError> {
        let identity = pki::identity_of(&pki::first_cert_der(cert_pem)?)?;
        Ok(Self::of_identity(&identity))
    }

    pub fn of_identity(identity: &PeerIdentity) -> Self {
        IssuedCertificate {
            name: identity.common_name.clone(),
            role: match identity.role {
                Role::Member => "member",
                Role::Client => "client",
                Role::Unknown => "none",
            }
            .to_string(),
            serial: identity.serial_hex.clone(),
            not_after: unix_seconds(identity.not_after),
            issued_at: now_unix(),
            member_id: 0,
            issuer: identity.issuer.clone(),
        }
    }

    /// The command that records it.
    pub fn record(&self) -> command::Kind {
        set_setting(
            identity_setting(&self.serial),
            serde_json::to_vec(self).expect("a registry entry serializes"),
        )
    }
}

/// The command that denies certificate `serial` until `not_after` (0: for ever).
pub fn deny(serial: &str, reason: &str, not_after: i64) -> command::Kind {
    let denial = Denial {
        reason: reason.to_string(),
        not_after,
    };
    set_setting(
        deny_setting(serial),
        serde_json::to_vec(&denial).expect("a denial serializes"),
    )
}

/// A setting write; an empty value removes the setting.
pub fn set_setting(name: String, value: Vec<u8>) -> command::Kind {
    command::Kind::SetSetting(Setting {
        name,
        value,
        ..Default::default()
    })
}

/// A setting write that applies only if the setting still holds `expected` (empty: absent);
/// otherwise the state machine rejects it with `MvccError::SettingChanged`.
pub fn replace_setting(name: String, expected: Vec<u8>, value: Vec<u8>) -> command::Kind {
    command::Kind::SetSetting(Setting {
        name,
        value,
        compare: true,
        expected,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("certificate request refused: {0}")]
    Request(PkiError),
    #[error("reading the issued certificate: {0}")]
    Issued(PkiError),
    #[error(transparent)]
    Consensus(#[from] ProposeError),
    #[error("recording the certificate: the write path answered {0}")]
    Unexpected(String),
}

/// Signs a client identity for `csr_pem` (the key stays with whoever made the request) and
/// records it in the registry before handing it out. Used by `identity issue` and `login`.
pub async fn issue_client(
    consensus: &Consensus,
    ca: &ClusterCa,
    name: &str,
    csr_pem: &str,
    ttl: Duration,
) -> Result<String, IssueError> {
    let cert_pem = ca
        .sign_client_csr(csr_pem, name, ttl)
        .map_err(IssueError::Request)?;
    let issued = IssuedCertificate::of_pem(&cert_pem).map_err(IssueError::Issued)?;
    match consensus.propose(issued.record()).await? {
        CommandResponse::SettingStored => {}
        other => return Err(IssueError::Unexpected(format!("{other:?}"))),
    }
    tracing::info!(%name, serial = %issued.serial, "client identity issued");
    Ok(cert_pem)
}

/// One recorded certificate by serial.
pub fn issued(store: &Store, serial: &str) -> Result<Option<IssuedCertificate>, MvccError> {
    Ok(store
        .setting(&identity_setting(serial))?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Every recorded certificate with its state, oldest first.
pub fn list(store: &Store) -> Result<Vec<(IssuedCertificate, CertificateState)>, MvccError> {
    let now = now_unix();
    let mut entries: Vec<_> = store
        .settings_with_prefix(IDENTITY_PREFIX)?
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice::<IssuedCertificate>(&bytes).ok())
        .map(|issued| {
            let state = if store.setting(&deny_setting(&issued.serial))?.is_some() {
                CertificateState::Revoked
            } else if issued.not_after <= now {
                CertificateState::Expired
            } else {
                CertificateState::Valid
            };
            Ok((issued, state))
        })
        .collect::<Result<_, MvccError>>()?;
    entries.sort_by(|(a, _), (b, _)| (a.issued_at, &a.name).cmp(&(b.issued_at, &b.name)));
    Ok(entries)
}

/// Serials of denials whose certificate has expired: nothing can present it any more, so the
/// leader removes them (`deny/<serial>` written empty).
pub fn expired_denials(store: &Store) -> Result<Vec<String>, MvccError> {
    let now = now_unix();
    Ok(store
        .settings_with_prefix(DENY_PREFIX)?
        .into_iter()
        .filter(|(_, bytes)| {
            serde_json::from_slice::<Denial>(bytes)
                .is_ok_and(|denial| denial.not_after != 0 && denial.not_after < now)
        })
        .map(|(name, _)| name[DENY_PREFIX.len()..].to_string())
        .collect())
}

/// On the leader, removes the denials of certificates that have expired; runs until aborted.
pub async fn sweep_expired_denials(
    consensus: std::sync::Arc<Consensus>,
    store: std::sync::Arc<Store>,
) {
    let mut ticker = tokio::time::interval(DENY_SWEEP_INTERVAL);
    loop {
        ticker.tick().await;
        if !consensus.is_leader() {
            continue;
        }
        let expired = match expired_denials(&store) {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "reading the deny list failed");
                continue;
            }
        };
        for serial in expired {
            match consensus
                .propose(set_setting(deny_setting(&serial), Vec::new()))
                .await
            {
                Ok(_) => tracing::info!(%serial, "dropped the denial of an expired certificate"),
                Err(error) => tracing::warn!(%error, "dropping an expired denial failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::encode_command;
    use crate::pki::ClusterCa;

    fn apply(store: &Store, kind: command::Kind) {
        let results = store.apply(&[&encode_command(kind)], b"").unwrap();
        assert!(results[0].is_ok());
    }

    #[test]
    fn the_registry_lists_what_was_recorded_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("mvcc.redb")).unwrap();
        let ca = ClusterCa::generate(7).unwrap();
        let day = Duration::from_secs(86_400);
        let alice =
            IssuedCertificate::of_pem(&ca.issue_client("alice", day).unwrap().cert_pem).unwrap();
        let bob =
            IssuedCertificate::of_pem(&ca.issue_client("bob", day).unwrap().cert_pem).unwrap();
        let member =
            IssuedCertificate::of_pem(&ca.issue_member("m1", &[], day).unwrap().cert_pem).unwrap();
        let old = IssuedCertificate {
            not_after: now_unix() - 10,
            ..alice.clone()
        };
        let old = IssuedCertificate {
            serial: "00ff".into(),
            ..old
        };
        for entry in [&alice, &bob, &member, &old] {
            apply(&store, entry.record());
        }
        apply(&store, deny(&bob.serial, "revoked", bob.not_after));
        apply(&store, deny("00ff", "revoked", old.not_after));
        apply(&store, deny("abcd", "never issued here", 0));

        let listed: Vec<_> = list(&store)
            .unwrap()
            .into_iter()
            .map(|(entry, state)| (entry.name, entry.role, state))
            .collect();
        assert!(listed.contains(&("alice".into(), "client".into(), CertificateState::Valid)));
        assert!(listed.contains(&("bob".into(), "client".into(), CertificateState::Revoked)));
        assert!(listed.contains(&("m1".into(), "member".into(), CertificateState::Valid)));
        assert!(listed.contains(&("alice".into(), "client".into(), CertificateState::Revoked)));
        assert_eq!(listed.len(), 4);
        assert_eq!(issued(&store, &alice.serial).unwrap(), Some(alice));
        // Only the expired certificate's denial may go; one without an expiry stays.
        assert_eq!(expired_denials(&store).unwrap(), vec!["00ff".to_string()]);
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_lifetime() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = issued + Duration::from_secs(1000);
        for _ in 0..1000 {
            let due = renewal_time(issued, not_after);
            let at = due.duration_since(issued).unwrap();
            assert!(
                at >= Duration::from_secs(500) && at < Duration::from_secs(800),
                "{at:?}"
            );
        }
    }

    #[test]
    fn token_settings_exist_for_the_two_roles_only() {
        assert_eq!(token_setting("manager").unwrap(), "join-token/manager");
        assert_eq!(token_setting("client").unwrap(), "join-token/client");
        assert_eq!(token_setting("root"), None);
    }
}
