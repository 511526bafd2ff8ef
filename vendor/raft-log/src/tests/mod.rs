pub(crate) mod context;
pub(crate) mod sample_data;
pub(crate) mod test_concurrent_read;
pub(crate) mod test_raft_log;
pub(crate) mod test_reopen;
