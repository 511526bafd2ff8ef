pub mod access_state;
pub mod dump;
pub mod dump_api;
pub mod dump_raft_log;
pub(crate) mod log_data;
#[allow(clippy::module_inception)]
pub(crate) mod raft_log;
pub(crate) mod raft_log_action;
pub(crate) mod raft_log_record;
pub mod stat;
pub(crate) mod state_machine;
