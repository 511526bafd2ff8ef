//! The KV API through a real third-party client (the `etcd-client` crate): every RangeRequest
//! option, Put and DeleteRange options and their errors, Txn compares and ops, compaction, and
//! response headers, checked against etcd 3.4's semantics (`etcdserver/apply.go`,
//! `mvcc/kvstore_txn.go`, `etcdserver/api/v3rpc/key.go`).

mod common;

use std::collections::BTreeMap;

use common::client::{assert_grpc_error, assert_header};
use common::Cluster;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// A key-value as the tests model it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
}

fn kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create: kv.create_revision(),
        modified: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn kvs(response: &GetResponse) -> Vec<Kv> {
    response.kvs().iter().map(kv).collect()
}

fn keys(response: &GetResponse) -> Vec<String> {
    response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// What the store should hold, updated from each acknowledged put's revision.
#[derive(Default)]
struct Model {
    live: BTreeMap<Vec<u8>, Kv>,
    revision: i64,
}

impl Model {
    fn new() -> Model {
        // A new cluster is at revision 1.
        Model {
            live: BTreeMap::new(),
            revision: 1,
        }
    }

    async fn put(&mut self, client: &mut Client, key: &str, value: &str) {
        let response = client.put(key, value, None).await.expect("put");
        let revision = response.header().expect("header").revision();
        assert_eq!(
            revision,
            self.revision + 1,
            "each put takes the next revision"
        );
        self.revision = revision;
        let entry = self.live.entry(key.as_bytes().to_vec()).or_insert(Kv {
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create: revision,
            modified: 0,
            version: 0,
            lease: 0,
        });
        entry.value = value.as_bytes().to_vec();
        entry.modified = revision;
        entry.version += 1;
    }

    fn get(&self, key: &str) -> Kv {
        self.live[key.as_bytes()].clone()
    }
}

async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

// ---------------------------------------------------------------------------------------------
// Range

#[tokio::test]
async fn range_by_key_range_prefix_from_key_limit_and_revision() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let mut model = Model::new();
    for (key, value) in [("a", "1"), ("b", "2"), ("ba", "3"), ("c", "4"), ("d", "5")] {
        model.put(&mut client, key, value).await; // revisions 2..=6
    }

    let response = client.get("b", None).await.unwrap();
    assert_eq!(kvs(&response), [model.get("b")]);
    assert_eq!((response.count(), response.more()), (1, false));
    assert_header(response.header(), 6);

    let response = client
        .get("a", Some(GetOptions::new().with_range("c")))
        .await
        .unwrap();
    assert_eq!(keys(&response), ["a", "b", "ba"], "[a, c) excludes c");
    assert_eq!(response.count(), 3);

    let response = client
        .get("b", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&response), ["b", "ba"]);

    let response = client
        .get("ba", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(
        keys(&response),
        ["ba", "c", "d"],
        "range_end \\0: every key >= ba"
    );

    let response = client
        .get("\0", Some(GetOptions::new().with_range("\0")))
        .await
        .unwrap();
    assert_eq!(
        keys(&response),
        ["a", "b", "ba", "c", "d"],
        "key \\0, end \\0: all"
    );

    let response = client.get("zz", None).await.unwrap();
    assert!(response.kvs().is_empty());
    assert_eq!((response.count(), response.more()), (0, false));
    assert_header(response.header(), 6);

    // limit: `more` says whether keys were left out, `count` counts the whole range.
    let all = || GetOptions::new().with_from_key();
    let response = client.get("a", Some(all().with_limit(2))).await.unwrap();
    assert_eq!(keys(&response), ["a", "b"]);
    assert_eq!((response.count(), response.more()), (5, true));
    let response = client.get("a", Some(all().with_limit(5))).await.unwrap();
    assert_eq!((response.kvs().len(), response.more()), (5, false));
    let response = client.get("a", Some(all().with_limit(6))).await.unwrap();
    assert_eq!((response.kvs().len(), response.more()), (5, false));

    // keys_only keeps everything but the value; count_only returns no key-values.
    let response = client.get("a", Some(all().with_keys_only())).await.unwrap();
    let expected: Vec<Kv> = model
        .live
        .values()
        .map(|kv| Kv {
            value: Vec::new(),
            ..kv.clone()
        })
        .collect();
    assert_eq!(kvs(&response), expected);
    let response = client
        .get("a", Some(all().with_count_only()))
        .await
        .unwrap();
    assert!(response.kvs().is_empty(), "count_only returns no kvs");
    assert_eq!((response.count(), response.more()), (5, false));
    assert_header(response.header(), 6);

    // History: overwrite b, delete c; old revisions still read the old state, and the header
    // always carries the current revision.
    let old_b = model.get("b");
    let old_c = model.get("c");
    model.put(&mut client, "b", "2b").await; // 7
    let deleted = client.delete("c", None).await.unwrap();
    assert_eq!(deleted.deleted(), 1);
    assert_header(deleted.header(), 8);

    let at = |revision| GetOptions::new().with_revision(revision);
    let response = client.get("b", Some(at(6))).await.unwrap();
    assert_eq!(kvs(&response), std::slice::from_ref(&old_b));
    assert_header(response.header(), 8);
    let response = client.get("b", Some(at(3))).await.unwrap();
    assert_eq!(kvs(&response), [old_b], "b was created at 3");
    let response = client.get("b", Some(at(2))).await.unwrap();
    assert!(response.kvs().is_empty(), "b did not exist at 2");
    let response = client.get("c", Some(at(7))).await.unwrap();
    assert_eq!(kvs(&response), [old_c]);
    let response = client.get("c", Some(at(8))).await.unwrap();
    assert!(response.kvs().is_empty(), "c was deleted at 8");
    let response = client.get("c", None).await.unwrap();
    assert!(response.kvs().is_empty());
    let response = client.get("a", Some(all().with_revision(4))).await.unwrap();
    assert_eq!(keys(&response), ["a", "b", "ba"]);
    assert_eq!(response.count(), 3);
    let response = client
        .get("a", Some(all().with_revision(4).with_count_only()))
        .await
        .unwrap();
    assert_eq!(response.count(), 3);
    let response = client.get("a", Some(all().with_revision(8))).await.unwrap();
    assert_eq!(keys(&response), ["a", "b", "ba", "d"]);
    assert_eq!(
        response.kvs()[1].value(),
        b"2b",
        "b at revision 8 is the overwrite"
    );
}

/// Four keys whose order differs by every sort target (key, version, create, mod, value).
async fn sortable_keys(client: &mut Client) -> Model {
    let mut model = Model::new();
    for (key, value) in [
        ("k3", "c"), // 2: created first, never modified
        ("k1", "d"), // 3
        ("k4", "a"), // 4
        ("k2", "x"), // 5: created last
        ("k1", "d"), // 6
        ("k1", "d"), // 7
        ("k2", "b"), // 8
        ("k4", "a"), // 9
        ("k1", "d"), // 10: k1 has the most versions
        ("k2", "b"), // 11: modified last
    ] {
        model.put(client, key, value).await;
    }
    // A key outside the "k" prefix, so ranges are not the whole keyspace.
    model.put(client, "z", "outside").await; // 12
    model
}

fn sorted(model: &Model, target: SortTarget, order: SortOrder) -> Vec<Kv> {
    let mut kvs: Vec<Kv> = model
        .live
        .values()
        .filter(|kv| kv.key.starts_with(b"k"))
        .cloned()
        .collect();
    let ascending = |kvs: &mut Vec<Kv>| match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.modified),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    };
    match order {
        // etcd: no order means key order for the key target, ascending for the others.
        SortOrder::None | SortOrder::Ascend => ascending(&mut kvs),
        SortOrder::Descend => {
            ascending(&mut kvs);
            kvs.reverse();
        }
    }
    kvs
}

#[tokio::test]
async fn range_sorts_by_every_order_and_target() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let model = sortable_keys(&mut client).await;
    // The data really does sort differently by each target.
    let orders: Vec<Vec<Kv>> = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ]
    .into_iter()
    .map(|t| sorted(&model, t, SortOrder::Ascend))
    .collect();
    for (i, a) in orders.iter().enumerate() {
        for b in &orders[i + 1..] {
            assert_ne!(a, b, "test data must sort differently by each target");
        }
    }

    for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
        for target in [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ] {
            let expected = sorted(&model, target, order);
            let response = client
                .get(
                    "k",
                    Some(GetOptions::new().with_prefix().with_sort(target, order)),
                )
                .await
                .unwrap();
            assert_eq!(kvs(&response), expected, "sort {order:?} by {target:?}");
            assert_eq!(response.count(), 4);

            // With an explicit order etcd sorts the whole range, then applies the limit. With
            // no order (apply.go only drops the limit when SortOrder != NONE) it reads the
            // first limit + 1 keys in key order, sorts those ascending, then truncates.
            let expected_limited: Vec<Kv> = if order == SortOrder::None {
                let mut first: Vec<Kv> = sorted(&model, SortTarget::Key, SortOrder::Ascend)
                    .into_iter()
                    .take(3)
                    .collect();
                let mut window = Model::new();
                window.live = first.drain(..).map(|kv| (kv.key.clone(), kv)).collect();
                sorted(&window, target, SortOrder::Ascend)[..2].to_vec()
            } else {
                expected[..2].to_vec()
            };
            let response = client
                .get(
                    "k",
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(target, order)
                            .with_limit(2),
                    ),
                )
                .await
                .unwrap();
            assert_eq!(
                kvs(&response),
                expected_limited,
                "sort {order:?} by {target:?}, limit 2"
            );
            assert_eq!((response.count(), response.more()), (4, true));
        }
    }
}

#[tokio::test]
async fn range_filters_by_min_and_max_mod_and_create_revision() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let model = sortable_keys(&mut client).await;
    // k1: create 3, mod 10; k2: create 5, mod 11; k3: create 2, mod 2; k4: create 4, mod 9.
    let in_range = |f: &dyn Fn(&Kv) -> bool| -> Vec<Kv> {
        model
            .live
            .values()
            .filter(|kv| kv.key.starts_with(b"k") && f(kv))
            .cloned()
            .collect()
    };
    let k = || GetOptions::new().with_prefix();
    let cases: Vec<(&str, GetOptions, Vec<Kv>)> = vec![
        (
            "min_mod 10",
            k().with_min_mod_revision(10),
            in_range(&|kv| kv.modified >= 10),
        ),
        (
            "max_mod 9",
            k().with_max_mod_revision(9),
            in_range(&|kv| kv.modified <= 9),
        ),
        (
            "min_create 4",
            k().with_min_create_revision(4),
            in_range(&|kv| kv.create >= 4),
        ),
        (
            "max_create 3",
            k().with_max_create_revision(3),
            in_range(&|kv| kv.create <= 3),
        ),
        (
            "min_mod 9, max_create 4",
            k().with_min_mod_revision(9).with_max_create_revision(4),
            in_range(&|kv| kv.modified >= 9 && kv.create <= 4),
        ),
        (
            "min_mod 9..max_mod 10, min_create 4..max_create 5",
            k().with_min_mod_revision(9)
                .with_max_mod_revision(10)
                .with_min_create_revision(4)
                .with_max_create_revision(5),
            in_range(&|kv| (9..=10).contains(&kv.modified) && (4..=5).contains(&kv.create)),
        ),
    ];
    for (name, options, expected) in cases {
        assert!(
            !expected.is_empty() && expected.len() < 4,
            "{name}: a real filter"
        );
        let response = client.get("k", Some(options)).await.unwrap();
        assert_eq!(kvs(&response), expected, "{name}");
        // etcd 3.4 counts the range before filtering (apply.go: resp.Count = rr.Count).
        assert_eq!(
            response.count(),
            4,
            "{name}: count is of the unfiltered range"
        );
        assert!(!response.more(), "{name}");
    }

    // Filters run before the limit: the first of the filtered keys, and more keys left.
    let response = client
        .get("k", Some(k().with_min_mod_revision(9).with_limit(1)))
        .await
        .unwrap();
    assert_eq!(kvs(&response), [model.get("k1")]);
    assert!(response.more());
}

// ---------------------------------------------------------------------------------------------
// Put

#[tokio::test]
async fn put_prev_kv_ignore_value_ignore_lease_and_their_errors() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let prev = || Some(PutOptions::new().with_prev_key());

    let response = client.put("k", "v1", prev()).await.unwrap();
    assert!(
        response.prev_key().is_none(),
        "no previous value of a new key"
    );
    assert_header(response.header(), 2);

    let response = client.put("k", "v2", prev()).await.unwrap();
    let previous = kv(response.prev_key().expect("prev_kv"));
    assert_eq!(
        previous,
        Kv {
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
            create: 2,
            modified: 2,
            version: 1,
            lease: 0,
        }
    );
    assert_header(response.header(), 3);

    let response = client.put("k", "v3", None).await.unwrap();
    assert!(response.prev_key().is_none(), "prev_kv only when asked");

    // ignore_value: a new revision and version, the value kept.
    let response = client
        .put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    assert_header(response.header(), 5);
    assert_eq!(response.prev_key().map(|p| p.value()), Some(&b"v3"[..]));
    let now = kv(&client.get("k", None).await.unwrap().kvs()[0]);
    assert_eq!(
        (now.value.as_slice(), now.version, now.modified, now.create),
        (&b"v3"[..], 4, 5, 2)
    );

    // ignore_lease: the value changes, the lease (none) is kept.
    let response = client
        .put("k", "v4", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    assert_header(response.header(), 6);
    let now = kv(&client.get("k", None).await.unwrap().kvs()[0]);
    assert_eq!(
        (now.value.as_slice(), now.version, now.lease),
        (&b"v4"[..], 5, 0)
    );

    // Errors; none of them writes anything.
    assert_grpc_error(
        client
            .put("k", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_grpc_error(
        client
            .put(
                "k",
                "x",
                Some(PutOptions::new().with_ignore_lease().with_lease(7)),
            )
            .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_grpc_error(
        client
            .put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_grpc_error(
        client
            .put("missing", "x", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_grpc_error(
        client
            .put("k", "x", Some(PutOptions::new().with_lease(0x1234_5678)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([
                TxnOp::put("other", "x", None),
                TxnOp::put("k", "x", Some(PutOptions::new().with_lease(99))),
            ]))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([
                TxnOp::put("other", "x", None),
                TxnOp::put("missing", "", Some(PutOptions::new().with_ignore_value())),
            ]))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_eq!(
        current_revision(&mut client).await,
        6,
        "failed puts wrote nothing"
    );
    let response = client.get("other", None).await.unwrap();
    assert!(
        response.kvs().is_empty(),
        "a txn with a failing op writes none of its ops"
    );
    let now = kv(&client.get("k", None).await.unwrap().kvs()[0]);
    assert_eq!((now.value.as_slice(), now.version), (&b"v4"[..], 5));
}

// ---------------------------------------------------------------------------------------------
// DeleteRange

#[tokio::test]
async fn delete_range_prefix_from_key_with_prev_kvs_and_deleted_count() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let mut model = Model::new();
    for key in ["a", "b", "c", "d", "e1", "e2", "f"] {
        model
            .put(&mut client, key, &format!("value-of-{key}"))
            .await; // 2..=8
    }

    let response = client
        .delete(
            "b",
            Some(DeleteOptions::new().with_range("d").with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(response.deleted(), 2);
    assert_eq!(
        response.prev_kvs().iter().map(kv).collect::<Vec<_>>(),
        [model.get("b"), model.get("c")]
    );
    assert_header(response.header(), 9);

    // Without prev_kv: the count only.
    let response = client
        .delete("e", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(response.deleted(), 2);
    assert!(response.prev_kvs().is_empty(), "prev_kvs only when asked");
    assert_header(response.header(), 10);

    // Deleting nothing changes nothing, not even the revision.
    let response = client
        .delete("nothing-here", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(response.deleted(), 0);
    assert!(response.prev_kvs().is_empty());
    assert_header(response.header(), 10);
    let response = client
        .delete("b", Some(DeleteOptions::new().with_range("d")))
        .await
        .unwrap();
    assert_eq!(response.deleted(), 0);
    assert_header(response.header(), 10);

    // A single key, with its previous value.
    let response = client
        .delete("a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(response.deleted(), 1);
    assert_eq!(
        response.prev_kvs().iter().map(kv).collect::<Vec<_>>(),
        [model.get("a")]
    );
    assert_header(response.header(), 11);

    // from_key: d and f are left.
    let response = client
        .delete(
            "d",
            Some(DeleteOptions::new().with_from_key().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(response.deleted(), 2);
    assert_eq!(
        response.prev_kvs().iter().map(kv).collect::<Vec<_>>(),
        [model.get("d"), model.get("f")]
    );
    assert_header(response.header(), 12);
    let response = client
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert!(response.kvs().is_empty(), "everything is deleted");
    assert_eq!(response.count(), 0);

    // A deleted key comes back as a new key: version 1, created now.
    let response = client.put("b", "again", None).await.unwrap();
    assert_header(response.header(), 13);
    let again = kv(&client.get("b", None).await.unwrap().kvs()[0]);
    assert_eq!(
        (again.create, again.modified, again.version),
        (13, 13, 1),
        "a re-created key starts over"
    );
}

// ---------------------------------------------------------------------------------------------
// Txn

#[tokio::test]
async fn txn_compares_value_version_create_mod_and_lease() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    client.put("k", "m", None).await.unwrap(); // 2
    client.put("k", "m", None).await.unwrap(); // 3: k has version 2, create 2, mod 3, lease 0
    client.put("k2", "z", None).await.unwrap(); // 4: version 1

    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value("k", Equal, "m"), true),
        (Compare::value("k", Equal, "n"), false),
        (Compare::value("k", Greater, "l"), true),
        (Compare::value("k", Greater, "m"), false),
        (Compare::value("k", Less, "n"), true),
        (Compare::value("k", Less, "m"), false),
        (Compare::value("k", NotEqual, "n"), true),
        (Compare::value("k", NotEqual, "m"), false),
        (Compare::version("k", Equal, 2), true),
        (Compare::version("k", Equal, 3), false),
        (Compare::version("k", Greater, 1), true),
        (Compare::version("k", Greater, 2), false),
        (Compare::version("k", Less, 3), true),
        (Compare::version("k", Less, 2), false),
        (Compare::version("k", NotEqual, 1), true),
        (Compare::version("k", NotEqual, 2), false),
        (Compare::create_revision("k", Equal, 2), true),
        (Compare::create_revision("k", Equal, 3), false),
        (Compare::create_revision("k", Greater, 1), true),
        (Compare::create_revision("k", Greater, 2), false),
        (Compare::create_revision("k", Less, 3), true),
        (Compare::create_revision("k", Less, 2), false),
        (Compare::create_revision("k", NotEqual, 3), true),
        (Compare::create_revision("k", NotEqual, 2), false),
        (Compare::mod_revision("k", Equal, 3), true),
        (Compare::mod_revision("k", Equal, 2), false),
        (Compare::mod_revision("k", Greater, 2), true),
        (Compare::mod_revision("k", Greater, 3), false),
        (Compare::mod_revision("k", Less, 4), true),
        (Compare::mod_revision("k", Less, 3), false),
        (Compare::mod_revision("k", NotEqual, 2), true),
        (Compare::mod_revision("k", NotEqual, 3), false),
        (Compare::lease("k", Equal, 0), true),
        (Compare::lease("k", Equal, 5), false),
        (Compare::lease("k", Greater, 0), false),
        (Compare::lease("k", Less, 1), true),
        (Compare::lease("k", Less, 0), false),
        (Compare::lease("k", NotEqual, 5), true),
        (Compare::lease("k", NotEqual, 0), false),
        // A missing key compares as the zero key-value, except that a value compare always
        // fails (apply.go: "nil == empty string in grpc; no way to represent missing value").
        (Compare::create_revision("missing", Equal, 0), true),
        (Compare::version("missing", Equal, 0), true),
        (Compare::mod_revision("missing", Less, 1), true),
        (Compare::lease("missing", Equal, 0), true),
        (Compare::value("missing", Equal, ""), false),
        (Compare::value("missing", NotEqual, "x"), false),
        // A compare over a range holds only if it holds for every key in it.
        (Compare::version("k", Greater, 0).with_prefix(), true),
        (Compare::version("k", Greater, 1).with_prefix(), false),
        (Compare::value("k", Less, "zz").with_range("k3"), true),
        (Compare::value("k", Equal, "m").with_range("k3"), false),
    ];
    for (compare, expected) in cases {
        let description = format!("{compare:?}");
        let response = client
            .txn(
                Txn::new()
                    .when([compare])
                    .and_then([TxnOp::get("k", None)])
                    .or_else([TxnOp::get("k2", None)]),
            )
            .await
            .unwrap();
        assert_eq!(response.succeeded(), expected, "{description}");
        let read = match response.op_responses().as_slice() {
            [TxnOpResponse::Get(read)] => keys(read),
            other => panic!("{description}: expected one range response, got {other:?}"),
        };
        assert_eq!(
            read,
            [if expected { "k" } else { "k2" }],
            "{description}: the branch that ran"
        );
        assert_header(response.header(), 4);
    }

    // Several compares: all must hold.
    let both = |second: Compare| Txn::new().when([Compare::value("k", Equal, "m"), second]);
    assert!(client
        .txn(both(Compare::version("k2", Equal, 1)))
        .await
        .unwrap()
        .succeeded());
    assert!(!client
        .txn(both(Compare::version("k2", Equal, 2)))
        .await
        .unwrap()
        .succeeded());
    // No compares: the success branch runs.
    assert!(client.txn(Txn::new()).await.unwrap().succeeded());
    assert_eq!(
        current_revision(&mut client).await,
        4,
        "read-only txns write nothing"
    );
}

#[tokio::test]
async fn txn_is_one_revision_and_reads_its_own_writes() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    client.put("z", "old", None).await.unwrap(); // 2
    client.put("y", "old", None).await.unwrap(); // 3

    let response = client
        .txn(
            Txn::new()
                .when([Compare::value("z", CompareOp::Equal, "old")])
                .and_then([
                    TxnOp::get("x", None),
                    TxnOp::put("x", "1", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("x", None),
                    TxnOp::put("y", "new", Some(PutOptions::new().with_prev_key())),
                    TxnOp::delete("z", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("z", None),
                    TxnOp::get(
                        "\0",
                        Some(GetOptions::new().with_from_key().with_count_only()),
                    ),
                ]),
        )
        .await
        .unwrap();
    assert!(response.succeeded());
    assert_header(response.header(), 4);
    let ops = response.op_responses();
    assert_eq!(ops.len(), 7);
    let get = |i: usize| match &ops[i] {
        TxnOpResponse::Get(r) => r.clone(),
        other => panic!("op {i}: expected a range response, got {other:?}"),
    };
    let before = get(0);
    assert!(
        before.kvs().is_empty(),
        "x does not exist before the txn wrote it"
    );
    // etcd: a read before the txn's first write is at the old revision, after it at the new.
    assert_eq!(before.header().map(|h| h.revision()), Some(3));
    match &ops[1] {
        TxnOpResponse::Put(put) => {
            assert!(put.prev_key().is_none());
            assert_eq!(put.header().map(|h| h.revision()), Some(4));
        }
        other => panic!("op 1: expected a put response, got {other:?}"),
    }
    let after = get(2);
    assert_eq!(
        kvs(&after),
        [Kv {
            key: b"x".to_vec(),
            value: b"1".to_vec(),
            create: 4,
            modified: 4,
            version: 1,
            lease: 0,
        }],
        "a read sees the txn's earlier put"
    );
    assert_eq!(after.header().map(|h| h.revision()), Some(4));
    match &ops[3] {
        TxnOpResponse::Put(put) => {
            assert_eq!(put.prev_key().map(|p| p.value()), Some(&b"old"[..]))
        }
        other => panic!("op 3: expected a put response, got {other:?}"),
    }
    match &ops[4] {
        TxnOpResponse::Delete(delete) => {
            assert_eq!(delete.deleted(), 1);
            assert_eq!(
                delete
                    .prev_kvs()
                    .iter()
                    .map(|kv| kv.value())
                    .collect::<Vec<_>>(),
                [b"old"]
            );
            assert_eq!(delete.header().map(|h| h.revision()), Some(4));
        }
        other => panic!("op 4: expected a delete response, got {other:?}"),
    }
    assert!(
        get(5).kvs().is_empty(),
        "a read sees the txn's earlier delete"
    );
    assert_eq!(get(6).count(), 2, "x and y; z is gone");

    // Every change of the txn carries its one revision.
    let response = client
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_header(response.header(), 4);
    let all = kvs(&response);
    assert_eq!(
        all.iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.modified))
            .collect::<Vec<_>>(),
        [("x".to_string(), 4), ("y".to_string(), 4)]
    );
    let response = client
        .get("z", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(
        kvs(&response)[0].value,
        b"old",
        "z existed until revision 4"
    );

    // A txn that changes nothing does not take a revision: a failed compare with no failure ops,
    // and a successful one whose only op deletes nothing.
    let response = client
        .txn(
            Txn::new()
                .when([Compare::value("x", CompareOp::Equal, "nope")])
                .and_then([TxnOp::put("x", "2", None)]),
        )
        .await
        .unwrap();
    assert!(!response.succeeded());
    assert!(response.op_responses().is_empty());
    assert_header(response.header(), 4);
    let response = client
        .txn(Txn::new().and_then([TxnOp::delete("nothing", None)]))
        .await
        .unwrap();
    assert!(response.succeeded());
    assert_header(response.header(), 4);
    assert_eq!(current_revision(&mut client).await, 4);
}

#[tokio::test]
async fn txn_runs_every_op_type_in_either_branch_and_nested_txns() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    client.put("a", "1", None).await.unwrap(); // 2
    client.put("c", "old", None).await.unwrap(); // 3
    client.put("gone", "soon", None).await.unwrap(); // 4

    // The failure branch, with every op type including a nested txn.
    let response = client
        .txn(
            Txn::new()
                .when([Compare::value("a", CompareOp::Equal, "2")])
                .and_then([TxnOp::put("never", "x", None)])
                .or_else([
                    TxnOp::put("b", "from-else", None),
                    TxnOp::get("a", None),
                    TxnOp::delete("gone", None),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::version("a", CompareOp::Equal, 1)])
                            .and_then([TxnOp::put("nested", "then", None), TxnOp::get("a", None)])
                            .or_else([TxnOp::put("nested", "else", None)]),
                    ),
                ]),
        )
        .await
        .unwrap();
    assert!(!response.succeeded());
    assert_header(response.header(), 5);
    let ops = response.op_responses();
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert!(matches!(&ops[0], TxnOpResponse::Put(_)), "{:?}", ops[0]);
    match &ops[1] {
        TxnOpResponse::Get(get) => assert_eq!(keys(get), ["a"]),
        other => panic!("expected a range response, got {other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Delete(delete) => assert_eq!(delete.deleted(), 1),
        other => panic!("expected a delete response, got {other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Txn(nested) => {
            assert!(nested.succeeded(), "a has version 1");
            let nested_ops = nested.op_responses();
            assert_eq!(nested_ops.len(), 2);
            assert!(matches!(&nested_ops[0], TxnOpResponse::Put(_)));
            match &nested_ops[1] {
                TxnOpResponse::Get(get) => assert_eq!(keys(get), ["a"]),
                other => panic!("expected a range response, got {other:?}"),
            }
        }
        other => panic!("expected a txn response, got {other:?}"),
    }
    let response = client
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let state: Vec<(String, String, i64)> = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(
        state,
        [
            ("a".into(), "1".into(), 2),
            ("b".into(), "from-else".into(), 5),
            ("c".into(), "old".into(), 3),
            ("nested".into(), "then".into(), 5),
        ],
        "the else branch and the nested then branch, all at revision 5"
    );

    // A nested txn's compares see the store as it was when the whole txn started (etcd
    // evaluates every compare of the tree before applying any op): the outer put of c is not
    // visible to the nested compare. The same key in both nested branches is allowed.
    let response = client
        .txn(
            Txn::new().and_then([
                TxnOp::put("c", "new", None),
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::value("c", CompareOp::Equal, "new")])
                        .and_then([TxnOp::put("seen", "new", None)])
                        .or_else([TxnOp::put("seen", "old", None)]),
                ),
            ]),
        )
        .await
        .unwrap();
    assert!(response.succeeded());
    assert_header(response.header(), 6);
    match response.op_responses().as_slice() {
        [TxnOpResponse::Put(_), TxnOpResponse::Txn(nested)] => {
            assert!(!nested.succeeded(), "compares run before the outer put")
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let seen = client.get("seen", None).await.unwrap();
    assert_eq!(kvs(&seen)[0].value, b"old");
    assert_eq!(kvs(&seen)[0].modified, 6);
}

// ---------------------------------------------------------------------------------------------
// Compaction

#[tokio::test]
async fn compaction_drops_old_revisions_and_refuses_compacted_and_future_reads() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    for value in ["v1", "v2", "v3", "v4", "v5"] {
        client.put("k", value, None).await.unwrap(); // 2..=6
    }
    client.put("short-lived", "x", None).await.unwrap(); // 7
    client.delete("short-lived", None).await.unwrap(); // 8

    let response = client.compact(4, None).await.unwrap();
    assert_header(response.header(), 8);

    let at = |revision| Some(GetOptions::new().with_revision(revision));
    assert_grpc_error(client.get("k", at(3)).await, Code::OutOfRange, COMPACTED);
    assert_grpc_error(client.get("k", at(1)).await, Code::OutOfRange, COMPACTED);
    let value_at = |response: GetResponse| kvs(&response).first().map(|kv| kv.value.clone());
    assert_eq!(
        value_at(client.get("k", at(4)).await.unwrap()),
        Some(b"v3".to_vec()),
        "the compaction revision itself stays readable"
    );
    assert_eq!(
        value_at(client.get("k", at(5)).await.unwrap()),
        Some(b"v4".to_vec())
    );
    assert_eq!(
        value_at(client.get("k", at(8)).await.unwrap()),
        Some(b"v5".to_vec())
    );
    assert_eq!(
        value_at(client.get("k", None).await.unwrap()),
        Some(b"v5".to_vec())
    );
    assert_eq!(
        value_at(client.get("short-lived", at(7)).await.unwrap()),
        Some(b"x".to_vec())
    );
    assert_grpc_error(client.get("k", at(9)).await, Code::OutOfRange, FUTURE);
    assert_grpc_error(client.get("k", at(1000)).await, Code::OutOfRange, FUTURE);

    // Compacting again at or below the compaction revision, or above the current one.
    assert_grpc_error(client.compact(4, None).await, Code::OutOfRange, COMPACTED);
    assert_grpc_error(client.compact(2, None).await, Code::OutOfRange, COMPACTED);
    assert_grpc_error(client.compact(9, None).await, Code::OutOfRange, FUTURE);

    // The same checks inside a txn.
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([TxnOp::get("k", at(3))]))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([TxnOp::get("k", at(9))]))
            .await,
        Code::OutOfRange,
        FUTURE,
    );

    // Compaction does not take a revision; compacting everything keeps the live keys.
    let response = client.compact(8, None).await.unwrap();
    assert_header(response.header(), 8);
    assert_grpc_error(client.get("k", at(7)).await, Code::OutOfRange, COMPACTED);
    let response = client.get("k", at(8)).await.unwrap();
    assert_eq!(
        kvs(&response),
        [Kv {
            key: b"k".to_vec(),
            value: b"v5".to_vec(),
            create: 2,
            modified: 6,
            version: 5,
            lease: 0,
        }],
        "compaction keeps a key's create revision and version"
    );
    assert!(client
        .get("short-lived", at(8))
        .await
        .unwrap()
        .kvs()
        .is_empty());
    let response = client.put("k", "v6", None).await.unwrap();
    assert_header(response.header(), 9);
    let now = kv(&client.get("k", None).await.unwrap().kvs()[0]);
    assert_eq!((now.version, now.create), (6, 2));
}

// ---------------------------------------------------------------------------------------------
// Headers, Status, MemberList

#[tokio::test]
async fn every_response_header_names_the_cluster_member_term_and_revision() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;

    let put = client.put("k", "v", None).await.unwrap();
    assert_header(put.header(), 2);
    let ids = |h: Option<&etcd_client::ResponseHeader>| {
        let h = h.expect("header");
        (h.cluster_id(), h.member_id())
    };
    let expected_ids = ids(put.header());

    let get = client.get("k", None).await.unwrap();
    assert_header(get.header(), 2);
    assert_eq!(ids(get.header()), expected_ids);
    let delete = client.delete("k", None).await.unwrap();
    assert_header(delete.header(), 3);
    assert_eq!(ids(delete.header()), expected_ids);
    let txn = client
        .txn(Txn::new().and_then([TxnOp::put("k", "again", None)]))
        .await
        .unwrap();
    assert_header(txn.header(), 4);
    assert_eq!(ids(txn.header()), expected_ids);
    let compact = client.compact(2, None).await.unwrap();
    assert_header(compact.header(), 4);
    assert_eq!(ids(compact.header()), expected_ids);

    let status = client.status().await.unwrap();
    assert_header(status.header(), 4);
    assert_eq!(ids(status.header()), expected_ids);
    assert_eq!(status.leader(), expected_ids.1, "the one member leads");
    assert_ne!(status.raft_term(), 0);
    assert!(!status.version().is_empty());
    assert!(status.db_size() > 0, "dbSize");
    assert!(!status.is_learner());
    assert!(status.errors().is_empty(), "{:?}", status.errors());

    let members = client.member_list().await.unwrap();
    let header = members.header().expect("header");
    assert_eq!((header.cluster_id(), header.member_id()), expected_ids);
    assert_ne!(header.raft_term(), 0);
    let listed = members.members();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id(), expected_ids.1);
    assert_eq!(listed[0].name(), "m0");
    assert_eq!(listed[0].client_urls(), [cluster.member(0).endpoint()]);
    assert_eq!(
        listed[0].peer_urls(),
        [format!("https://{}", cluster.member(0).peer_addr())]
    );
    assert!(!listed[0].is_learner());

    // Another cluster has other ids.
    let other = Cluster::single();
    let mut other_client = other.member(0).client().await;
    let other_put = other_client.put("k", "v", None).await.unwrap();
    let (other_cluster, other_member) = ids(other_put.header());
    assert_ne!(other_cluster, expected_ids.0, "cluster ids are random");
    assert_ne!(other_member, expected_ids.1, "member ids are random");
}
