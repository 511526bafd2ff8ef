pub mod api;
pub mod cli;
pub mod mvcc;
pub mod pki;
pub mod proto;
pub mod raft;
pub mod server;
pub mod watch;
