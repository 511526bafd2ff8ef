//! Core API interfaces and types for Raft-log operations.

pub mod raft_log_writer;
pub mod state_machine;
pub mod types;
pub mod wal;
pub mod wal_types;
