//! Store-level semantics against etcd's: revisions, versions, tombstones, historical reads,
//! txn rules and compaction. Each test applies commands through `Store::apply`, as the write
//! path does.

use super::*;
use crate::mvcc::keys::KeyRange;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp,
    TxnRequest,
};
use crate::proto::mvccpb::KeyValue;
use redb::ReadableTableMetadata;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("mvcc.redb")).unwrap();
        Fixture {
            _dir: dir,
            store,
            index: 0,
        }
    }

    fn apply(&mut self, kind: command::Kind) -> Result<CommandResponse, MvccError> {
        self.index += 1;
        let payload = encode_command(kind);
        let position = self.index.to_be_bytes();
        self.store
            .apply(&[payload.as_slice()], &position)
            .unwrap()
            .pop()
            .unwrap()
    }

    fn put(&mut self, key: &str, value: &str) -> PutResponse {
        match self.apply(command::Kind::Put(put_req(key, value))).unwrap() {
            CommandResponse::Put(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn delete(&mut self, key: &str, range_end: &str) -> DeleteRangeResponse {
        let req = DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: true,
        };
        match self.apply(command::Kind::DeleteRange(req)).unwrap() {
            CommandResponse::DeleteRange(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, MvccError> {
        self.apply(command::Kind::Txn(req)).map(|r| match r {
            CommandResponse::Txn(r) => r,
            other => panic!("{other:?}"),
        })
    }

    fn compact(&mut self, revision: i64) -> Result<CommandResponse, MvccError> {
        self.apply(command::Kind::Compaction(CompactionRequest {
            revision,
            physical: true,
        }))
    }

    fn get(&self, key: &str, range_end: &str, revision: i64) -> Result<RangeResponse, MvccError> {
        self.store.range(&RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            revision,
            ..Default::default()
        })
    }

    fn revision(&self) -> i64 {
        self.store.status().unwrap().current_revision
    }
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: true,
        ..Default::default()
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put_req(key, value))),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn keys(response: &RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

#[test]
fn new_store_is_at_revision_one_and_first_put_is_two() {
    let mut f = Fixture::new();
    assert_eq!(f.revision(), 1);
    let put = f.put("foo", "bar");
    assert_eq!(put.header.unwrap().revision, 2);
    assert!(put.prev_kv.is_none());
    let kv = &f.get("foo", "", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
}

#[test]
fn versions_count_modifications_and_reset_after_delete() {
    let mut f = Fixture::new();
    f.put("k", "1");
    let second = f.put("k", "2");
    assert_eq!(second.prev_kv.unwrap().value, b"1");
    let kv = f.get("k", "", 0).unwrap().kvs[0].clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    let deleted = f.delete("k", "");
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.header.unwrap().revision, 4);
    assert!(f.get("k", "", 0).unwrap().kvs.is_empty());

    f.put("k", "3");
    let kv = f.get("k", "", 0).unwrap().kvs[0].clone();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn deleting_nothing_keeps_the_revision() {
    let mut f = Fixture::new();
    f.put("a", "1");
    let deleted = f.delete("nothing", "");
    assert_eq!(deleted.deleted, 0);
    assert_eq!(deleted.header.unwrap().revision, 2);
    assert_eq!(f.revision(), 2);
}

#[test]
fn historical_reads_see_the_past_including_tombstones() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("b", "1"); // 3
    f.put("a", "2"); // 4
    f.delete("b", ""); // 5
    let at3 = f.get("a", "c", 3).unwrap();
    assert_eq!(keys(&at3), ["a", "b"]);
    assert_eq!(at3.kvs[0].value, b"1");
    assert_eq!(
        at3.header.unwrap().revision,
        5,
        "header shows the current revision"
    );
    let at5 = f.get("a", "c", 5).unwrap();
    assert_eq!(keys(&at5), ["a"]);
    assert_eq!(at5.kvs[0].value, b"2");
    assert!(matches!(f.get("a", "", 6), Err(MvccError::FutureRevision)));
}

#[test]
fn range_end_forms_limit_count_and_more() {
    let mut f = Fixture::new();
    for key in ["a", "b", "c", "d"] {
        f.put(key, key);
    }
    assert_eq!(keys(&f.get("b", "d", 0).unwrap()), ["b", "c"]);
    assert_eq!(keys(&f.get("b", "\0", 0).unwrap()), ["b", "c", "d"]);
    assert!(f.get("d", "b", 0).unwrap().kvs.is_empty());
    let limited = f
        .store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&limited), ["a", "b"]);
    assert!(limited.more);
    assert_eq!(limited.count, 4);
    let counted = f
        .store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert!(counted.kvs.is_empty());
    assert_eq!(counted.count, 4);
}

#[test]
fn sorting_filters_and_keys_only() {
    let mut f = Fixture::new();
    f.put("a", "3"); // 2
    f.put("b", "1"); // 3
    f.put("c", "2"); // 4
    f.put("a", "4"); // 5
    let sorted = |order: SortOrder, target: SortTarget| {
        keys(
            &f.store
                .range(&RangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"\0".to_vec(),
                    sort_order: order as i32,
                    sort_target: target as i32,
                    ..Default::default()
                })
                .unwrap(),
        )
    };
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Mod), ["b", "c", "a"]);
    assert_eq!(sorted(SortOrder::None, SortTarget::Value), ["b", "c", "a"]);
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Create),
        ["c", "b", "a"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["a", "b", "c"]
    );

    let filtered = f
        .store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            min_mod_revision: 4,
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&filtered), ["a", "c"]);
    assert!(filtered.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(
        filtered.count, 3,
        "count ignores the revision filters, as etcd's"
    );
}

/// `latest` keeps metadata only; every read that returns or compares a value takes it from the
/// key's newest `history` record.
#[test]
fn values_live_in_history_and_every_read_of_a_value_finds_them() {
    let mut f = Fixture::new();
    f.put("a", "first");
    f.put("b", "bee");
    f.put("a", "second");
    {
        let txn = f.store.begin_read().unwrap();
        let latest = txn.open_table(LATEST).unwrap();
        let row = read::decode_kv(latest.get(b"a".as_slice()).unwrap().unwrap().value()).unwrap();
        assert_eq!((row.key.len(), row.value.len()), (0, 0), "{row:?}");
        assert_eq!((row.mod_revision, row.version), (4, 2));
    }
    let value_of = |response: &RangeResponse| {
        response
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(value_of(&f.get("a", "", 0).unwrap()), ["second"]);
    assert_eq!(value_of(&f.get("a", "c", 0).unwrap()), ["second", "bee"]);
    assert_eq!(value_of(&f.get("a", "", 3).unwrap()), ["first"]);
    let sorted_keys_only = f
        .store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            sort_target: SortTarget::Value as i32,
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&sorted_keys_only), ["b", "a"]);
    assert!(sorted_keys_only.kvs.iter().all(|kv| kv.value.is_empty()));

    // prev_kv of a put, the kept value of ignore_value, prev_kvs of a delete.
    let previous = f.put("a", "third").prev_kv.unwrap();
    assert_eq!(
        (previous.key.as_slice(), previous.value.as_slice()),
        (&b"a"[..], &b"second"[..])
    );
    let kept = PutRequest {
        key: b"a".to_vec(),
        ignore_value: true,
        prev_kv: true,
        ..Default::default()
    };
    match f.apply(command::Kind::Put(kept)).unwrap() {
        CommandResponse::Put(r) => assert_eq!(r.prev_kv.unwrap().value, b"third"),
        other => panic!("{other:?}"),
    }
    assert_eq!(value_of(&f.get("a", "", 0).unwrap()), ["third"]);
    let kept_quietly = PutRequest {
        key: b"a".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    f.apply(command::Kind::Put(kept_quietly)).unwrap();
    assert_eq!(value_of(&f.get("a", "", 0).unwrap()), ["third"]);
    let deleted = f.delete("b", "");
    assert_eq!(deleted.prev_kvs[0].value, b"bee");

    // A txn compares values, and a txn that writes a key twice in one revision reads the last.
    let value_is = |value: &str| Compare {
        key: b"a".to_vec(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(value.into())),
        ..Default::default()
    };
    let swap = |expected: &str, new: &str| TxnRequest {
        compare: vec![value_is(expected)],
        success: vec![op_put("a", new)],
        ..Default::default()
    };
    assert!(!f.txn(swap("second", "x")).unwrap().succeeded);
    assert!(f.txn(swap("third", "fourth")).unwrap().succeeded);
    assert_eq!(value_of(&f.get("a", "", 0).unwrap()), ["fourth"]);
    let twice = TxnRequest {
        success: vec![op_put("c", "one"), op_put("c", "two")],
        ..Default::default()
    };
    f.txn(twice).unwrap();
    assert_eq!(value_of(&f.get("c", "", 0).unwrap()), ["two"]);

    // A txn's range reads its own put, and a limited, filtered range still comes with values.
    let own = TxnRequest {
        success: vec![op_put("d", "dee"), op_get("d")],
        ..Default::default()
    };
    match &f.txn(own).unwrap().responses[1].response {
        Some(response_op::Response::ResponseRange(range)) => {
            assert_eq!(value_of(range), ["dee"])
        }
        other => panic!("{other:?}"),
    }
    let limited = f
        .store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 2,
            min_mod_revision: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(value_of(&limited), ["fourth", "two"]);
    assert_eq!((limited.count, limited.more), (3, true));
}

#[test]
fn a_store_from_before_values_left_latest_is_rewritten_at_its_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.redb");
    let mut f = Fixture {
        store: Store::open(&path).unwrap(),
        _dir: dir,
        index: 0,
    };
    f.put("a", "1");
    f.put("b", "2");
    f.put("a", "3");
    drop(f.store);
    // As the layout before wrote them: key and value in the row (a stale value here, to tell a
    // read of the row from a read of history), and no recorded format.
    {
        let db = open_database(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut latest = txn.open_table(LATEST).unwrap();
            for (key, stale) in [("a", "stale a"), ("b", "stale b")] {
                let row =
                    read::decode_kv(latest.get(key.as_bytes()).unwrap().unwrap().value()).unwrap();
                let old_style = KeyValue {
                    key: key.into(),
                    value: stale.into(),
                    ..row
                };
                latest
                    .insert(key.as_bytes(), old_style.encode_to_vec().as_slice())
                    .unwrap();
            }
            txn.open_table(META)
                .unwrap()
                .remove(META_STORE_FORMAT)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let reopened = Store::open(&path).unwrap();
    assert_latest_rows_hold_metadata_only(&reopened);
    let all = reopened
        .range(&RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        })
        .unwrap();
    let pairs: Vec<_> = all
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            (b"a".to_vec(), b"3".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );
}

#[test]
fn put_flags_and_their_errors() {
    let mut f = Fixture::new();
    let ignore_value = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    assert!(matches!(
        f.apply(command::Kind::Put(ignore_value.clone())),
        Err(MvccError::KeyNotFound)
    ));
    f.put("k", "v");
    f.apply(command::Kind::Put(ignore_value)).unwrap();
    let kv = f.get("k", "", 0).unwrap().kvs[0].clone();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v"[..], 2));
    let leased = PutRequest {
        key: b"k".to_vec(),
        lease: 7,
        ..Default::default()
    };
    assert!(matches!(
        f.apply(command::Kind::Put(leased)),
        Err(MvccError::LeaseNotFound)
    ));
    assert_eq!(f.revision(), 3, "rejected puts write nothing");
}

#[test]
fn txn_is_one_revision_and_reads_its_own_writes() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    let response = f
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"a".to_vec(),
                target: CompareTarget::Value as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Value(b"1".to_vec())),
                range_end: vec![],
            }],
            success: vec![op_get("b"), op_put("b", "x"), op_put("c", "y"), op_get("b")],
            failure: vec![],
        })
        .unwrap();
    assert!(response.succeeded);
    assert_eq!(response.header.unwrap().revision, 3);
    let range_header = |i: usize| match &response.responses[i].response {
        Some(response_op::Response::ResponseRange(r)) => (r.header.unwrap().revision, r.kvs.len()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        range_header(0),
        (2, 0),
        "before the first write: the old revision"
    );
    assert_eq!(
        range_header(3),
        (3, 1),
        "after: the txn's revision and its write"
    );
    let b = f.get("b", "", 0).unwrap().kvs[0].clone();
    let c = f.get("c", "", 0).unwrap().kvs[0].clone();
    assert_eq!((b.mod_revision, c.mod_revision), (3, 3));
}

#[test]
fn failed_compare_takes_the_else_branch_and_nested_txns_run() {
    let mut f = Fixture::new();
    let nested = TxnRequest {
        compare: vec![],
        success: vec![op_put("inner", "1")],
        failure: vec![],
    };
    let response = f
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"missing".to_vec(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Greater as i32,
                target_union: Some(TargetUnion::Version(0)),
                range_end: vec![],
            }],
            success: vec![op_put("then", "1")],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(nested)),
            }],
        })
        .unwrap();
    assert!(!response.succeeded);
    assert_eq!(keys(&f.get("a", "\0", 0).unwrap()), ["inner"]);
}

#[test]
fn a_txn_with_a_failing_op_writes_nothing() {
    let mut f = Fixture::new();
    let result = f.txn(TxnRequest {
        compare: vec![],
        success: vec![
            op_put("a", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"b".to_vec(),
                    lease: 99,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    });
    assert!(matches!(result, Err(MvccError::LeaseNotFound)));
    assert_eq!(f.revision(), 1);
    assert!(f.get("a", "", 0).unwrap().kvs.is_empty());
}

#[test]
fn compaction_drops_history_but_keeps_reads_at_and_after_it() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("b", "1"); // 4
    f.delete("b", ""); // 5
    f.put("a", "3"); // 6
    f.compact(5).unwrap();
    assert!(matches!(f.get("a", "", 4), Err(MvccError::Compacted)));
    let at5 = f.get("a", "\0", 5).unwrap();
    assert_eq!(keys(&at5), ["a"]);
    assert_eq!(at5.kvs[0].value, b"2");
    assert_eq!(f.get("a", "", 0).unwrap().kvs[0].value, b"3");
    assert!(matches!(f.compact(5), Err(MvccError::Compacted)));
    assert!(matches!(f.compact(4), Err(MvccError::Compacted)));
    assert!(matches!(f.compact(7), Err(MvccError::FutureRevision)));
    // Only a@3 (newest at or below 5) and a@6 remain; b's tombstone went too.
    let txn = f.store.begin_read().unwrap();
    assert_eq!(txn.open_table(HISTORY).unwrap().len().unwrap(), 2);
    assert_eq!(txn.open_table(BY_REVISION).unwrap().len().unwrap(), 2);
}

#[test]
fn state_and_consensus_position_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.redb");
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.consensus_state().unwrap(), None);
        let payloads: Vec<_> = (1..=3)
            .map(|i| encode_command(command::Kind::Put(put_req(&format!("k{i}"), "v"))))
            .collect();
        let commands: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let results = store.apply(&commands, b"position-3").unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.status().unwrap().current_revision, 4);
    assert_eq!(store.consensus_state().unwrap().unwrap(), b"position-3");
}

#[test]
fn an_undecodable_entry_is_an_error_for_that_entry_only() {
    let f = Fixture::new();
    let good = encode_command(command::Kind::Put(put_req("k", "v")));
    let results = f
        .store
        .apply(&[&[0xff, 0xff, 0xff], good.as_slice()], b"")
        .unwrap();
    assert!(matches!(results[0], Err(MvccError::Corrupt(_))));
    assert!(results[1].is_ok());
}

#[test]
fn a_snapshot_restores_every_revision_and_the_position() {
    let mut source = Fixture::new();
    source.put("a", "1");
    source.put("b", "\0binary\u{ff}");
    source.delete("a", "");
    source.put("a", "2");
    source.compact(3).unwrap();
    source
        .apply(command::Kind::SetSetting(
            crate::proto::bulwarkpb::Setting {
                name: "join-token/manager".into(),
                value: b"token".to_vec(),
                ..Default::default()
            },
        ))
        .unwrap();
    let mut snapshot = Vec::new();
    source.store.write_snapshot(&mut snapshot).unwrap();

    let mut target = Fixture::new();
    target.put("stale", "x");
    target.store.restore_snapshot(snapshot.as_slice()).unwrap();
    assert_eq!(
        target.store.status().unwrap(),
        source.store.status().unwrap()
    );
    assert_eq!(
        target.store.consensus_state().unwrap(),
        source.store.consensus_state().unwrap()
    );
    assert_eq!(
        target.store.setting("join-token/manager").unwrap().unwrap(),
        b"token"
    );
    for revision in [0, 3, 4, 5] {
        assert_eq!(
            target.get("\0", "\0", revision).unwrap(),
            source.get("\0", "\0", revision).unwrap(),
            "at revision {revision}"
        );
    }
}

#[test]
fn a_snapshot_from_before_values_left_latest_restores_the_same_store() {
    let mut source = Fixture::new();
    source.put("a", "1");
    source.put("b", "bee");
    source.delete("a", "");
    source.put("a", "2");
    let mut snapshot = Vec::new();
    source.store.write_snapshot(&mut snapshot).unwrap();
    let old = snapshot::as_version_with_latest_values(&snapshot);
    assert!(old.starts_with(b"BWSNAP01"));
    verify_snapshot(std::io::Cursor::new(&old)).unwrap();

    let target = Fixture::new();
    target.store.restore_snapshot(old.as_slice()).unwrap();
    for revision in [0, 2, 3, 4, 5] {
        assert_eq!(
            target.get("\0", "\0", revision).unwrap(),
            source.get("\0", "\0", revision).unwrap(),
            "at revision {revision}"
        );
    }
    let txn = target.store.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(
        meta.get(META_STORE_FORMAT).unwrap().map(|f| f.value()),
        Some(STORE_FORMAT)
    );
    drop(txn);
    assert_latest_rows_hold_metadata_only(&target.store);
}

fn assert_latest_rows_hold_metadata_only(store: &Store) {
    let txn = store.begin_read().unwrap();
    for row in txn.open_table(LATEST).unwrap().iter().unwrap() {
        let kv = read::decode_kv(row.unwrap().1.value()).unwrap();
        assert!(kv.key.is_empty() && kv.value.is_empty(), "{kv:?}");
    }
}

#[test]
fn a_store_laid_out_by_a_newer_version_is_refused_and_an_older_one_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.redb");
    let set_format = |format: Option<i64>| {
        let db = open_database(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            match format {
                Some(format) => meta.insert(META_STORE_FORMAT, format).unwrap(),
                None => meta.remove(META_STORE_FORMAT).unwrap(),
            };
        }
        txn.commit().unwrap();
    };
    let format = || {
        let db = open_database(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(META_STORE_FORMAT).unwrap().map(|f| f.value())
    };
    drop(Store::open(&path).unwrap());
    assert_eq!(format(), Some(STORE_FORMAT));

    // A store from before the format was recorded opens, and is marked as this version's.
    set_format(None);
    drop(Store::open(&path).unwrap());
    assert_eq!(format(), Some(STORE_FORMAT));

    set_format(Some(STORE_FORMAT + 1));
    let refused = Store::open(&path).err().expect("a newer format is refused");
    assert!(matches!(refused, MvccError::NewerFormat { found } if found == STORE_FORMAT + 1));
    assert!(refused.to_string().contains("newer Bulwark"), "{refused}");
    assert_eq!(format(), Some(STORE_FORMAT + 1), "refusing changes nothing");
}

#[test]
fn a_corrupt_or_truncated_snapshot_changes_nothing() {
    let mut source = Fixture::new();
    source.put("a", "1");
    let mut snapshot = Vec::new();
    source.store.write_snapshot(&mut snapshot).unwrap();

    let mut target = Fixture::new();
    target.put("mine", "kept");
    // A flipped byte of the first record's value (magic 8, tag 1, key length 4, key "a" 1, value
    // length 4): every record reads, and only the checksum at the end tells, when the restore has
    // written them all into its transaction.
    let mut flipped = snapshot.clone();
    flipped[18] ^= 1;
    let refused = target
        .store
        .restore_snapshot(flipped.as_slice())
        .unwrap_err();
    assert!(refused.to_string().contains("checksum"), "{refused}");
    // A damaged length: refused before it is read.
    let mut long_field = snapshot.clone();
    long_field[14] = 0xff;
    let refused = target
        .store
        .restore_snapshot(long_field.as_slice())
        .unwrap_err();
    assert!(refused.to_string().contains("at most"), "{refused}");
    let mut longer = snapshot.clone();
    longer.extend_from_slice(&[0; 600]);
    for bad in [
        &snapshot[..snapshot.len() - 1],
        &longer[..],
        b"garbage".as_slice(),
    ] {
        assert!(target.store.restore_snapshot(bad).is_err());
    }
    assert_eq!(keys(&target.get("\0", "\0", 0).unwrap()), ["mine"]);
    // And the store goes on taking writes.
    target.put("after", "1");
    assert_eq!(keys(&target.get("\0", "\0", 0).unwrap()), ["after", "mine"]);
}

#[test]
fn events_replay_the_change_log_in_revision_order() {
    use crate::proto::mvccpb::event::EventType;
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("b", "1"); // 3
    f.put("a", "2"); // 4
    f.delete("a", ""); // 5
    let all = KeyRange::new(b"\0", b"\0");
    let read = f.store.events(&all, 2, 5, true, 100).unwrap();
    assert_eq!(read.next_revision, 6);
    let summary: Vec<_> = read
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.mod_revision),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EventType::Put, "a".to_string(), 2, None),
            (EventType::Put, "b".to_string(), 3, None),
            (EventType::Put, "a".to_string(), 4, Some(2)),
            (EventType::Delete, "a".to_string(), 5, Some(4)),
        ]
    );
    // A key range, and a bound on how many revisions one read covers.
    let only_b = f
        .store
        .events(&KeyRange::new(b"b", b""), 2, 5, false, 100)
        .unwrap();
    assert_eq!(only_b.events.len(), 1);
    let first_two = f.store.events(&all, 2, 5, false, 2).unwrap();
    assert_eq!((first_two.events.len(), first_two.next_revision), (2, 4));
    // Nothing new yet: the position stays.
    assert_eq!(
        f.store
            .events(&all, 6, 5, false, 100)
            .unwrap()
            .next_revision,
        6
    );
}

#[test]
fn a_txn_is_one_revision_of_events_and_compaction_cuts_history() {
    let mut f = Fixture::new();
    f.txn(TxnRequest {
        compare: vec![],
        success: vec![op_put("x", "1"), op_put("y", "1")],
        failure: vec![],
    })
    .unwrap(); // 2
    f.put("z", "1"); // 3
    let all = KeyRange::new(b"\0", b"\0");
    let revision_two = f.store.events(&all, 2, 2, false, 100).unwrap();
    assert_eq!(revision_two.events.len(), 2);
    f.compact(3).unwrap();
    assert!(matches!(
        f.store.events(&all, 2, 3, false, 100),
        Err(MvccError::Compacted)
    ));
    assert_eq!(
        f.store.events(&all, 3, 3, false, 100).unwrap().events.len(),
        1
    );
}

#[test]
fn subscribers_see_each_applied_revision() {
    let mut f = Fixture::new();
    let mut committed = f.store.subscribe();
    assert_eq!(*committed.borrow_and_update(), 1);
    f.put("a", "1");
    assert!(committed.has_changed().unwrap());
    assert_eq!(*committed.borrow_and_update(), 2);
}

#[test]
fn leases_attach_keys_and_revoking_deletes_them_in_one_revision() {
    use crate::proto::bulwarkpb::{LeaseGrant, LeaseRevoke};
    let mut f = Fixture::new();
    f.apply(command::Kind::LeaseGrant(LeaseGrant { id: 7, ttl: 60 }))
        .unwrap();
    assert!(matches!(
        f.apply(command::Kind::LeaseGrant(LeaseGrant { id: 7, ttl: 60 })),
        Err(MvccError::LeaseExists)
    ));
    for key in ["a", "b"] {
        f.apply(command::Kind::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease: 7,
            ..Default::default()
        }))
        .unwrap();
    }
    f.put("c", "unleased");
    // Re-putting without the lease detaches the key.
    f.put("b", "detached");
    let lease = f.store.lease(7).unwrap().unwrap();
    assert_eq!((lease.ttl, lease.keys), (60, vec![b"a".to_vec()]));
    let before = f.revision();
    f.apply(command::Kind::LeaseRevoke(LeaseRevoke { id: 7 }))
        .unwrap();
    assert_eq!(f.revision(), before + 1, "one revision for the revoke");
    assert_eq!(keys(&f.get("\0", "\0", 0).unwrap()), ["b", "c"]);
    assert!(f.store.lease(7).unwrap().is_none());
    assert!(matches!(
        f.apply(command::Kind::LeaseRevoke(LeaseRevoke { id: 7 })),
        Err(MvccError::LeaseNotFound)
    ));
}

#[test]
fn a_backup_leaves_out_the_clusters_secrets_and_keeps_everything_else() {
    let mut source = Fixture::new();
    source.put("k", "v");
    for (name, value) in [
        ("join-token/manager", "token"),
        ("ca/rotation", "{\"sealed_key\":\"...\"}"),
        ("identity/00ff", "{}"),
    ] {
        source
            .apply(command::Kind::SetSetting(
                crate::proto::bulwarkpb::Setting {
                    name: name.into(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                },
            ))
            .unwrap();
    }
    let mut backup = Vec::new();
    source.store.write_backup(&mut backup).unwrap();
    let text = String::from_utf8_lossy(&backup);
    assert!(!text.contains("join-token") && !text.contains("sealed_key"));

    let target = Fixture::new();
    target.store.restore_snapshot(backup.as_slice()).unwrap();
    assert_eq!(target.store.setting("join-token/manager").unwrap(), None);
    assert_eq!(target.store.setting("ca/rotation").unwrap(), None);
    assert!(target.store.setting("identity/00ff").unwrap().is_some());
    assert_eq!(
        target.get("k", "", 0).unwrap(),
        source.get("k", "", 0).unwrap()
    );
}

/// A store whose applies share one transaction until a read or another writer needs it, however
/// slow the machine is.
fn batching_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("mvcc.redb")).unwrap();
    let mut writer = store.writer();
    writer.batch_interval = Duration::from_secs(3600);
    writer.flush_interval = Duration::from_secs(3600);
    drop(writer);
    (dir, store)
}

fn apply_one(store: &Store, kind: command::Kind, position: &[u8]) -> CommandResponse {
    let payload = encode_command(kind);
    let mut results = store.apply(&[payload.as_slice()], position).unwrap();
    results.pop().unwrap().unwrap()
}

fn put_at(store: &Store, key: &str, value: &str, position: &[u8]) -> PutResponse {
    match apply_one(store, command::Kind::Put(put_req(key, value)), position) {
        CommandResponse::Put(put) => put,
        other => panic!("{other:?}"),
    }
}

/// Panics on another thread while holding the store's writer lock, first dropping the open
/// batch if asked; returns the store for the test to go on with.
fn panic_holding_the_writer(store: Store, drop_batch: bool) -> std::sync::Arc<Store> {
    let store = std::sync::Arc::new(store);
    let panicking = store.clone();
    std::thread::spawn(move || {
        let mut writer = panicking.writer();
        if drop_batch {
            writer.batch = None;
        }
        panic!("a panic under the writer lock");
    })
    .join()
    .unwrap_err();
    store
}

fn batch_is_open(store: &Store) -> bool {
    store.writer().batch.is_some()
}

#[test]
fn every_read_sees_the_applies_before_it_though_they_share_an_uncommitted_transaction() {
    let (_dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    put_at(&store, "b", "2", b"2");
    assert!(
        batch_is_open(&store),
        "each apply committed its own transaction"
    );

    let read = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(read.kvs.len(), 2);
    assert!(!batch_is_open(&store), "the read did not commit the batch");

    put_at(&store, "c", "3", b"3");
    assert_eq!(store.status().unwrap().current_revision, 4);
    put_at(&store, "d", "4", b"4");
    let all = KeyRange::new(b"\0", b"\0");
    assert_eq!(store.events(&all, 5, 5, false, 10).unwrap().events.len(), 1);
    put_at(&store, "e", "5", b"5");
    assert_eq!(store.consensus_state().unwrap().unwrap(), b"5");
}

#[test]
fn settings_reads_commit_the_batch_only_when_it_wrote_settings() {
    let (_dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    assert!(store.settings_with_prefix("alarm/").unwrap().is_empty());
    assert!(
        batch_is_open(&store),
        "a settings read committed a batch that wrote no setting"
    );

    let setting = crate::proto::bulwarkpb::Setting {
        name: "alarm/NOSPACE/1".into(),
        value: b"NOSPACE".to_vec(),
        ..Default::default()
    };
    apply_one(&store, command::Kind::SetSetting(setting), b"2");
    assert_eq!(
        store.settings_with_prefix("alarm/").unwrap(),
        vec![("alarm/NOSPACE/1".to_string(), b"NOSPACE".to_vec())]
    );
    assert!(!batch_is_open(&store));

    let removal = crate::proto::bulwarkpb::Setting {
        name: "alarm/NOSPACE/1".into(),
        ..Default::default()
    };
    apply_one(&store, command::Kind::SetSetting(removal), b"3");
    assert_eq!(store.setting("alarm/NOSPACE/1").unwrap(), None);
}

/// `settings_changes` moves with every change of the settings and only then, and stands aside
/// (`None`) while a change is uncommitted or the store failed, so that an answer kept while it
/// stands still is never stale.
#[test]
fn settings_changes_counts_every_change_of_the_settings() {
    let alarm = |value: &str| {
        command::Kind::SetSetting(crate::proto::bulwarkpb::Setting {
            name: "alarm/NOSPACE/1".into(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
    };
    let (_dir, store) = batching_store();
    let before = store.settings_changes().expect("nothing uncommitted");
    put_at(&store, "a", "1", b"1");
    assert_eq!(
        store.settings_changes(),
        Some(before),
        "a put changed no setting"
    );

    // Written into the open batch: no count until a settings read commits it.
    apply_one(&store, alarm("NOSPACE"), b"2");
    assert_eq!(store.settings_changes(), None);
    assert_eq!(store.settings_with_prefix("alarm/").unwrap().len(), 1);
    assert_eq!(store.settings_changes(), Some(before + 1));

    // Committed by the apply itself.
    store.writer().batch_interval = Duration::ZERO;
    apply_one(&store, alarm(""), b"3");
    assert_eq!(store.settings_changes(), Some(before + 2));

    let mut snapshot = Vec::new();
    store.write_snapshot(&mut snapshot).unwrap();
    store.restore_snapshot(snapshot.as_slice()).unwrap();
    assert_eq!(store.settings_changes(), Some(before + 3), "a restore");
    store.forget_cluster().unwrap();
    assert_eq!(
        store.settings_changes(),
        Some(before + 4),
        "forgetting the cluster"
    );

    // What `Store::apply` records when a storage error rolls the open batch back.
    store.writer().failed = Some("injected".into());
    store.unsettled.store(UNSETTLED_ALL, Ordering::Release);
    assert_eq!(store.settings_changes(), None, "a failed store");
}

#[test]
fn a_store_closed_with_an_open_batch_reopens_with_every_apply() {
    let (dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    put_at(&store, "b", "2", b"2");
    assert!(batch_is_open(&store));
    drop(store);
    let store = Store::open(&dir.path().join("mvcc.redb")).unwrap();
    assert_eq!(store.status().unwrap().current_revision, 3);
    assert_eq!(store.consensus_state().unwrap().unwrap(), b"2");
}

#[test]
fn a_store_that_lost_uncommitted_applies_refuses_reads_and_writes() {
    let (_dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    // What `Store::apply` records when a storage error rolls the open batch back.
    store.writer().batch = None;
    store.writer().failed = Some("injected".into());
    store.unsettled.store(UNSETTLED_ALL, Ordering::Release);

    assert!(matches!(store.status(), Err(MvccError::Failed(_))));
    assert!(matches!(store.setting("x"), Err(MvccError::Failed(_))));
    let payload = encode_command(command::Kind::Put(put_req("b", "2")));
    assert!(matches!(
        store.apply(&[payload.as_slice()], b"2"),
        Err(MvccError::Failed(_))
    ));
    assert!(matches!(store.flush(), Err(MvccError::Failed(_))));
}

#[test]
fn a_batch_past_its_interval_or_size_or_due_for_durability_is_committed_by_the_next_apply() {
    let (_dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    assert!(batch_is_open(&store));
    store.writer().batch_interval = Duration::ZERO;
    put_at(&store, "b", "2", b"2");
    assert!(!batch_is_open(&store), "an old batch stayed open");

    store.writer().batch_interval = Duration::from_secs(3600);
    let payloads: Vec<_> = (0..BATCH_COMMANDS)
        .map(|i| encode_command(command::Kind::Put(put_req(&format!("k{i}"), "v"))))
        .collect();
    let commands: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    store.apply(&commands, b"3").unwrap();
    assert!(!batch_is_open(&store), "a full batch stayed open");

    put_at(&store, "c", "3", b"4");
    let flushed_before = store.writer().last_flush;
    store.writer().flush_interval = Duration::ZERO;
    put_at(&store, "d", "4", b"5");
    assert!(
        !batch_is_open(&store),
        "a batch due for durability stayed open"
    );
    assert!(
        store.writer().last_flush > flushed_before,
        "no durable commit"
    );
}

#[test]
fn a_panic_that_dropped_the_batch_makes_the_store_refuse_everything() {
    let (_dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    // As a panic inside an apply leaves it: the batch taken out and dropped.
    let store = panic_holding_the_writer(store, true);

    assert!(matches!(store.status(), Err(MvccError::Failed(_))));
    let payload = encode_command(command::Kind::Put(put_req("b", "2")));
    assert!(matches!(
        store.apply(&[payload.as_slice()], b"2"),
        Err(MvccError::Failed(_))
    ));
}

#[test]
fn reads_racing_applies_never_see_a_revision_older_than_an_apply_that_returned() {
    use std::sync::atomic::AtomicI64;
    let (_dir, store) = batching_store();
    let store = std::sync::Arc::new(store);
    let returned = std::sync::Arc::new(AtomicI64::new(FIRST_REVISION));
    let applying = {
        let (store, returned) = (store.clone(), returned.clone());
        std::thread::spawn(move || {
            for i in 0..2_000u64 {
                let put = put_at(&store, &format!("k{}", i % 50), "v", &i.to_be_bytes());
                returned.store(
                    put.header.unwrap().revision,
                    std::sync::atomic::Ordering::SeqCst,
                );
            }
        })
    };
    let mut reads = 0;
    while !applying.is_finished() || reads == 0 {
        let before = returned.load(std::sync::atomic::Ordering::SeqCst);
        let seen = store.status().unwrap().current_revision;
        assert!(
            seen >= before,
            "read revision {seen} after apply of {before} returned"
        );
        reads += 1;
    }
    applying.join().unwrap();
    assert_eq!(store.status().unwrap().current_revision, 2_001);
}

#[test]
fn a_panic_under_the_writer_lock_that_lost_nothing_leaves_the_store_serving() {
    let (_dir, store) = batching_store();
    put_at(&store, "a", "1", b"1");
    let store = panic_holding_the_writer(store, false);

    assert_eq!(store.status().unwrap().current_revision, 2);
    put_at(&store, "b", "2", b"2");
    assert_eq!(store.status().unwrap().current_revision, 3);
}
