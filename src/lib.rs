//! Bulwark: a secure, Raft-replicated key-value store that speaks the etcd v3 API.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the `bulwark` command line: server commands and client commands |
//! | [`server`] | assembling a member: data directory, start-up order, listeners, joining, shutdown |
//! | [`proto`] | the etcd v3 protos and Bulwark's own, generated at build time |
//! | [`api`] | the client-facing gRPC services (KV, Watch, Lease, Maintenance, Cluster, Admin), validation, error mapping |
//! | [`raft`] | consensus on openraft: log store, state machine, peer network, membership |
//! | [`mvcc`] | revisions, key index, historical reads, compaction, the apply function, snapshots |
//! | [`watch`] | watch streams over the MVCC change log |
//! | [`lease`] | lease expiry on the leader (leases themselves are replicated MVCC state) |
//! | [`pki`] | the cluster CA, certificates, join tokens, TLS configurations |
//! | [`identities`] | the replicated registry of issued certificates, revocations and join tokens |
//! | [`bench`] | `bulwark bench`: Bulwark and a real etcd side by side, same client, same machine |
//!
//! # A request's path
//!
//! A client connects over mutual TLS (`server::transport`), an [`api`] service validates the
//! request, and then:
//! - a read waits for [`raft::Consensus::read_barrier`] (unless serializable) and reads
//!   [`mvcc::Store`];
//! - a write becomes a `bulwarkpb.Command`, goes through [`raft::Consensus::propose`] to a quorum's
//!   durable logs, is applied in log order by [`mvcc::Store::apply`], and only then is answered;
//! - a watch stream follows the committed revision and reads events back from the MVCC history.
//!
//! `docs/design.md` has the on-disk formats, fsync points and invariants.

pub mod api;
pub mod bench;
pub mod cli;
pub mod identities;
pub mod lease;
pub mod mvcc;
pub mod pki;
pub mod proto;
pub mod raft;
pub mod server;
pub mod watch;
