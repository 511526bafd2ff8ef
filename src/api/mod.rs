//! The gRPC services clients call: etcd's `KV`, `Maintenance` and `Cluster`, over the transport
//! the server module sets up (mutual TLS).
//!
//! Reads wait for consensus to make them linearizable (unless `serializable`), then read the
//! local MVCC store; every change is validated here, then proposed through consensus (`raft`)
//! and answered only once committed and applied. Errors of every layer are mapped to etcd's
//! gRPC codes once, in [`error`].
//!
//! Invariant: no service writes to storage except through [`Consensus::propose`].

pub mod admin;
mod cluster;
mod election;
pub mod error;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod recipes;
pub mod validate;
mod watch;

use std::sync::Arc;

use prost::Message;

use crate::mvcc::{CommandResponse, Store};
use crate::proto::bulwarkpb::admin_server::AdminServer;
use crate::proto::bulwarkpb::identity_server::IdentityServer;
use crate::proto::bulwarkpb::{command, Command};
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::raft::Consensus;
use error::{ApiError, EtcdCodes};

/// The etcd server version reported by `Status`: the etcd API level Bulwark answers as.
pub const ETCD_VERSION: &str = "3.5.0";

/// The largest `--max-request-bytes` a member accepts: every entry of the Raft log holds at
/// most one command this large plus a batch of smaller ones, and the log stores no value over
/// 256 MiB.
pub const MAX_REQUEST_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// gRPC overhead etcd allows on top of `max_request_bytes` before the transport refuses a message.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Who this member is, as response headers report it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub cluster_id: u64,
    pub member_id: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest proposal accepted, in bytes (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations in one txn branch (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// How often idle watchers that asked for it get a progress notification.
    pub watch_progress_interval: std::time::Duration,
    /// Above this database size the NOSPACE alarm is raised (etcd's `--quota-backend-bytes`).
    pub quota_backend_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            watch_progress_interval: std::time::Duration::from_secs(600),
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// What every service shares.
pub struct ApiContext {
    pub store: Arc<Store>,
    pub consensus: Arc<Consensus>,
    pub lessor: Arc<crate::lease::Lessor>,
    /// Signs client identities (`identity issue`; every member holds the CA key) and knows the
    /// trusted roots; a CA rotation replaces both while serving.
    pub ca: Arc<crate::pki::Authority>,
    pub member: MemberInfo,
    pub limits: Limits,
    /// What this member last read of the NOSPACE alarm (see [`ApiContext::nospace_raised`]).
    pub nospace_seen: SeenAlarm,
}

/// An alarm's state as last read, with the store's count of settings changes at that read,
/// packed as `changes << 1 | raised` (one atomic: the two always go together).
#[derive(Debug)]
pub struct SeenAlarm(std::sync::atomic::AtomicU64);

impl Default for SeenAlarm {
    fn default() -> Self {
        SeenAlarm(std::sync::atomic::AtomicU64::new(SeenAlarm::UNREAD))
    }
}

impl SeenAlarm {
    /// Never read yet.
    const UNREAD: u64 = u64::MAX;

    fn get(&self, changes: u64) -> Option<bool> {
        let seen = self.0.load(std::sync::atomic::Ordering::Acquire);
        (seen != Self::UNREAD && seen >> 1 == changes).then_some(seen & 1 == 1)
    }

    fn set(&self, changes: u64, raised: bool) {
        self.0.store(
            changes << 1 | u64::from(raised),
            std::sync::atomic::Ordering::Release,
        );
    }
}

impl ApiContext {
    /// A full response header at `revision`.
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.member_id,
            revision,
            raft_term: self.consensus.term(),
        })
    }

    /// Completes a header the store filled with its revision only.
    fn complete(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    fn current_revision(&self) -> Result<i64, ApiError> {
        Ok(self.store.status()?.current_revision)
    }

    /// Waits until reads on this member are linearizable (see `Consensus::read_barrier`).
    async fn read_barrier(&self) -> Result<(), ApiError> {
        Ok(self.consensus.read_barrier().await?)
    }

    async fn propose(&self, kind: command::Kind) -> Result<CommandResponse, ApiError> {
        if needs_space(&kind) {
            self.check_space().await?;
        }
        let command = Command { kind: Some(kind) };
        if command.encoded_len() > self.limits.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        let kind = command.kind.expect("set above");
        Ok(self.consensus.propose(kind).await?)
    }
}

/// Settings-name prefix of raised alarms: `alarm/<type>/<member id hex>`.
pub const ALARM_PREFIX: &str = "alarm/";

fn nospace_alarm(member_id: u64) -> String {
    format!("{ALARM_PREFIX}NOSPACE/{member_id:016x}")
}

/// Whether a command can grow the database (etcd's quota applies to puts and lease grants;
/// deletes, compaction and revokes free space and always pass).
fn needs_space(kind: &command::Kind) -> bool {
    fn txn_puts(txn: &crate::proto::etcdserverpb::TxnRequest) -> bool {
        txn.success
            .iter()
            .chain(&txn.failure)
            .any(|op| match &op.request {
                Some(crate::proto::etcdserverpb::request_op::Request::RequestPut(_)) => true,
                Some(crate::proto::etcdserverpb::request_op::Request::RequestTxn(nested)) => {
                    txn_puts(nested)
                }
                _ => false,
            })
    }
    match kind {
        command::Kind::Put(_) | command::Kind::LeaseGrant(_) => true,
        command::Kind::Txn(txn) => txn_puts(txn),
        _ => false,
    }
}

impl ApiContext {
    /// Whether a NOSPACE alarm is raised on any member. Every growing write asks, so the store is
    /// read only when its settings changed since the last look: that read (a redb read
    /// transaction and a range) was about 1% of a member's CPU under a put load.
    fn nospace_raised(&self) -> Result<bool, ApiError> {
        let changes = self.store.settings_changes();
        if let Some(raised) = changes.and_then(|changes| self.nospace_seen.get(changes)) {
            return Ok(raised);
        }
        let raised = !self
            .store
            .settings_with_prefix(&format!("{ALARM_PREFIX}NOSPACE/"))?
            .is_empty();
        if let Some(changes) = changes {
            self.nospace_seen.set(changes, raised);
        }
        Ok(raised)
    }

    /// Refuses a growing write while a NOSPACE alarm is raised, and raises it (for every member,
    /// through consensus) when this member's database is over the quota.
    async fn check_space(&self) -> Result<(), ApiError> {
        if self.nospace_raised()? {
            return Err(ApiError::NoSpace);
        }
        if self.store.file_size() > self.limits.quota_backend_bytes {
            tracing::warn!(
                quota = self.limits.quota_backend_bytes,
                "database over its quota: raising the NOSPACE alarm"
            );
            let alarm = command::Kind::SetSetting(crate::proto::bulwarkpb::Setting {
                name: nospace_alarm(self.member.member_id),
                value: b"NOSPACE".to_vec(),
                ..Default::default()
            });
            self.consensus.propose(alarm).await?;
            return Err(ApiError::NoSpace);
        }
        Ok(())
    }
}

/// The client-facing services, ready to be added to a tonic server.
pub struct Services {
    pub kv: EtcdCodes<KvServer<kv::KvService>>,
    pub maintenance: EtcdCodes<MaintenanceServer<maintenance::MaintenanceService>>,
    pub cluster: EtcdCodes<ClusterServer<cluster::ClusterService>>,
    pub watch: EtcdCodes<WatchServer<watch::WatchService>>,
    pub lease: EtcdCodes<LeaseServer<lease::LeaseService>>,
    pub lock: EtcdCodes<LockServer<lock::LockService>>,
    pub election: EtcdCodes<ElectionServer<election::ElectionService>>,
    pub admin: AdminServer<admin::AdminService>,
    pub identity: IdentityServer<admin::IdentityService>,
}

pub fn services(context: Arc<ApiContext>) -> Services {
    let max_message = context.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    Services {
        kv: EtcdCodes(
            KvServer::new(kv::KvService(context.clone())).max_decoding_message_size(max_message),
        ),
        maintenance: EtcdCodes(
            MaintenanceServer::new(maintenance::MaintenanceService(context.clone()))
                .max_decoding_message_size(max_message),
        ),
        cluster: EtcdCodes(
            ClusterServer::new(cluster::ClusterService(context.clone()))
                .max_decoding_message_size(max_message),
        ),
        watch: EtcdCodes(
            WatchServer::new(watch::WatchService {
                context: context.clone(),
                settings: crate::watch::WatchSettings {
                    progress_interval: context.limits.watch_progress_interval,
                    // etcd fragments only what would exceed what a client accepts.
                    max_response_bytes: context.limits.max_request_bytes + GRPC_OVERHEAD_BYTES,
                },
            })
            .max_decoding_message_size(max_message),
        ),
        lease: EtcdCodes(
            LeaseServer::new(lease::LeaseService(context.clone()))
                .max_decoding_message_size(max_message),
        ),
        lock: EtcdCodes(
            LockServer::new(lock::LockService(context.clone()))
                .max_decoding_message_size(max_message),
        ),
        election: EtcdCodes(
            ElectionServer::new(election::ElectionService(context.clone()))
                .max_decoding_message_size(max_message),
        ),
        admin: AdminServer::new(admin::AdminService(context.clone())),
        identity: IdentityServer::new(admin::IdentityService(context)),
    }
}

#[cfg(test)]
mod tests {
    use super::SeenAlarm;

    #[test]
    fn a_seen_alarm_answers_only_for_the_count_it_was_read_at() {
        let seen = SeenAlarm::default();
        assert_eq!(seen.get(0), None, "never read");
        seen.set(0, false);
        assert_eq!(seen.get(0), Some(false));
        seen.set(7, true);
        assert_eq!(seen.get(7), Some(true));
        assert_eq!(seen.get(8), None, "the settings changed since");
        assert_eq!(seen.get(6), None);
    }
}
