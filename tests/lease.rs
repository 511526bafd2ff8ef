//! etcd's Lease API against real `bulwark` members: through the `etcd-client` crate, a raw tonic
//! client (for the keep-alive answer `etcd-client` hides), etcdctl 3.4 (compared with what it
//! printed against etcd 3.4.23, `../shared/etcd-reference/samples/`) and `bulwark lease`.
//!
//! What is checked is etcd's semantics (`lease/lessor.go`, `etcdserver/v3_server.go`,
//! `etcdserver/api/v3rpc/lease.go`):
//!
//! - grants: a server-chosen id is positive; a client-chosen one is kept, and a second grant of
//!   it fails with `etcdserver: lease already exists`; a TTL over 9,000,000,000 s fails with
//!   `etcdserver: too large lease TTL`; a TTL under the minimum (1.5 election timeouts) is raised.
//! - revoke and expiry delete every attached key in one revision, seen by watchers as the delete
//!   events of that one revision; a key put again without the lease (or with another) is no
//!   longer the first lease's.
//! - unknown leases: a revoke and a put with the lease fail with NotFound `etcdserver: requested
//!   lease not found`; etcd's server answers a keep-alive with TTL 0 and a time-to-live with TTL
//!   -1 instead of failing (its clients turn those into "not found" and "already expired").
//! - a leader change: the new leader restarts every lease's clock at its full TTL (etcd adds an
//!   election timeout on top), so no lease expires merely because the leader changed; keep-alives
//!   reach the new leader through any member.
//!
//! No assertion is about speed. TTLs are the time scale the tests set up; where a test reasons
//! about remaining time, it does so from instants it measured itself, in the direction a slow
//! machine can only make easier to satisfy ([`assert_not_shortened_by_the_change`]).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bulwark::proto::etcdserverpb::lease_client::LeaseClient as RawLeaseClient;
use bulwark::proto::etcdserverpb::LeaseKeepAliveRequest;
use common::client::{assert_grpc_error, next_watch_response, raw_channel, retry_unavailable};
use common::json::shape;
use common::{etcd_sample_output, Cluster, ClusterOptions, Output};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp, WatchOptions, WatchStream, Watcher,
};
use futures::StreamExt;
use serde_json::Value;
use tonic::Code;

/// Bound on a lease expiring, an event arriving, a leader appearing: never a speed assertion.
const DEADLINE: Duration = Duration::from_secs(60);

const NOT_FOUND: &str = "etcdserver: requested lease not found";
const TOO_LARGE: &str = "etcdserver: too large lease TTL";
const EXISTS: &str = "etcdserver: lease already exists";
/// etcd's `MaxLeaseTTL`, in seconds.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// A lease id no test grants.
const UNKNOWN: i64 = 0x0bad_1ea5e;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Grants a lease of `ttl` seconds; returns its id and the TTL the member granted.
async fn grant(client: &mut Client, ttl: i64) -> (i64, i64) {
    let granted = retry_unavailable(DEADLINE, || {
        let mut client = client.clone();
        async move { client.lease_grant(ttl, None).await }
    })
    .await
    .unwrap_or_else(|e| panic!("lease grant {ttl}: {e}"));
    (granted.id(), granted.ttl())
}

/// Puts `key` attached to `lease`; returns the revision of the put.
async fn put_leased(client: &mut Client, key: &str, lease: i64) -> i64 {
    let options = PutOptions::new().with_lease(lease);
    retry_unavailable(DEADLINE, || {
        let mut client = client.clone();
        let options = options.clone();
        async move { client.put(key, "leased", Some(options)).await }
    })
    .await
    .unwrap_or_else(|e| panic!("put {key} with lease {lease:x}: {e}"))
    .header()
    .expect("a header")
    .revision()
}

/// The keys under `prefix`, read by `client`'s member alone (serializable): what that member
/// holds, not what the leader holds.
async fn local_keys(client: &mut Client, prefix: &str) -> Vec<String> {
    let options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_serializable();
    client
        .get(prefix, Some(options))
        .await
        .unwrap_or_else(|e| panic!("get {prefix} --prefix: {e}"))
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// (TTL, granted TTL, attached keys) of `lease`, as the leader answers it through any member.
async fn time_to_live(client: &mut Client, lease: i64) -> (i64, i64, Vec<String>) {
    let answer = retry_unavailable(DEADLINE, || {
        let mut client = client.clone();
        async move {
            client
                .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
                .await
        }
    })
    .await
    .unwrap_or_else(|e| panic!("time-to-live of {lease:x}: {e}"));
    assert_eq!(answer.id(), lease, "{answer:?}");
    let keys = answer
        .keys()
        .iter()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .collect();
    (answer.ttl(), answer.granted_ttl(), keys)
}

/// The ids `LeaseLeases` lists.
async fn listed(client: &mut Client) -> BTreeSet<i64> {
    client
        .leases()
        .await
        .unwrap_or_else(|e| panic!("leases: {e}"))
        .leases()
        .iter()
        .map(|lease| lease.id())
        .collect()
}

/// A watch of every key under `prefix` from revision `from` on (history included, so that no
/// event can slip by before the watch exists), with previous key-values.
async fn watch_prefix(client: &Client, prefix: &str, from: i64) -> (Watcher, WatchStream) {
    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(from);
    tokio::time::timeout(DEADLINE, client.watch_client().watch(prefix, Some(options)))
        .await
        .unwrap_or_else(|_| panic!("watch {prefix} not created within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("watch {prefix}: {e}"))
}

/// Reads the next watch response and requires it to be the deletion of exactly `keys`, all
/// attached to `lease` (their previous key-values say so), in one revision; returns it.
async fn assert_deleted_together(stream: &mut WatchStream, keys: &[&str], lease: i64) -> i64 {
    let response = next_watch_response(stream, DEADLINE).await;
    let events = response.events();
    let deleted: BTreeSet<String> = events
        .iter()
        .map(|event| String::from_utf8_lossy(event.kv().expect("a kv").key()).into_owned())
        .collect();
    let expected: BTreeSet<String> = keys.iter().map(|key| key.to_string()).collect();
    assert_eq!(
        (deleted, events.len()),
        (expected, keys.len()),
        "one response with the deletes of the lease's keys: {response:?}"
    );
    let revision = events[0].kv().expect("a kv").mod_revision();
    for event in events {
        assert_eq!(event.event_type(), EventType::Delete, "{response:?}");
        assert_eq!(
            event.kv().expect("a kv").mod_revision(),
            revision,
            "every key of a lease goes in one revision: {response:?}"
        );
        assert_eq!(
            event.prev_kv().expect("prev_kv was asked for").lease(),
            lease,
            "{response:?}"
        );
    }
    assert!(
        response.header().expect("a header").revision() >= revision,
        "{response:?}"
    );
    revision
}

/// A lease id as etcdctl prints and takes it.
fn hex(id: i64) -> String {
    format!("{id:016x}")
}

/// The id in `lease ID granted with TTL(...)`.
#[track_caller]
fn granted_id(output: &Output) -> i64 {
    let id = output
        .stdout
        .strip_prefix("lease ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("not a grant:\n{output}"));
    i64::from_str_radix(id, 16).unwrap_or_else(|e| panic!("lease id {id:?}: {e}\n{output}"))
}

/// The last line etcdctl printed on stderr (its error), without its JSON log lines.
fn etcdctl_error(output: &Output) -> String {
    output
        .stderr_messages()
        .last()
        .copied()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Grant, revoke, time-to-live, leases (one member, etcd-client)

#[tokio::test(flavor = "multi_thread")]
async fn grant_picks_an_id_or_keeps_the_one_asked_for_and_refuses_a_duplicate() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;

    let chosen = client.lease_grant(60, None).await.unwrap();
    assert!(chosen.id() > 0, "etcd hands out positive ids: {chosen:?}");
    assert_eq!((chosen.ttl(), chosen.error()), (60, ""), "{chosen:?}");
    let another = client.lease_grant(60, None).await.unwrap();
    assert!(
        another.id() > 0 && another.id() != chosen.id(),
        "{another:?}"
    );

    let asked = client
        .lease_grant(90, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!((asked.id(), asked.ttl()), (0x1234, 90), "{asked:?}");

    for taken in [0x1234, chosen.id()] {
        assert_grpc_error(
            client
                .lease_grant(30, Some(LeaseGrantOptions::new().with_id(taken)))
                .await,
            Code::FailedPrecondition,
            EXISTS,
        );
    }
    // The refused grants changed nothing.
    assert_eq!(time_to_live(&mut client, 0x1234).await.1, 90);
    assert_eq!(time_to_live(&mut client, chosen.id()).await.1, 60);
    assert_eq!(
        listed(&mut client).await,
        BTreeSet::from([chosen.id(), another.id(), 0x1234]),
        "LeaseLeases lists every lease once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_over_etcds_maximum_is_refused_and_a_short_one_is_raised_to_the_minimum() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;

    assert_grpc_error(
        client.lease_grant(MAX_LEASE_TTL + 1, None).await,
        Code::OutOfRange,
        TOO_LARGE,
    );
    assert!(
        listed(&mut client).await.is_empty(),
        "a refused grant leaves no lease"
    );

    let longest = client.lease_grant(MAX_LEASE_TTL, None).await.unwrap();
    assert_eq!(longest.ttl(), MAX_LEASE_TTL, "{longest:?}");
    let (ttl, granted, _) = time_to_live(&mut client, longest.id()).await;
    assert_eq!(granted, MAX_LEASE_TTL);
    assert!(ttl > 0 && ttl <= MAX_LEASE_TTL, "remaining {ttl}");
    let mut keeper = RawLeaseClient::new(raw_channel(cluster.member(0)).await);
    let renewed = keep_alive_once(&mut keeper, longest.id()).await;
    assert_eq!(renewed, MAX_LEASE_TTL, "a keep-alive renews the full TTL");

    // etcd raises a TTL shorter than 1.5 election timeouts (a lease must outlive an election)
    // and answers with the TTL it granted.
    let short = client.lease_grant(1, None).await.unwrap();
    assert!(short.ttl() > 1, "{short:?}");
    assert_eq!(time_to_live(&mut client, short.id()).await.1, short.ttl());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_deletes_every_attached_key_in_one_revision_with_delete_events() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let (lease, _) = grant(&mut client, 600).await;
    let (other, _) = grant(&mut client, 600).await;
    for key in ["r/a", "r/b", "r/c"] {
        put_leased(&mut client, key, lease).await;
    }
    put_leased(&mut client, "r/other", other).await;
    let before = client.put("r/free", "x", None).await.unwrap();
    let after_puts = before.header().unwrap().revision() + 1;
    let (_watcher, mut stream) = watch_prefix(&client, "r/", after_puts).await;

    let revoked = client.lease_revoke(lease).await.unwrap();
    let revision = revoked.header().expect("a header").revision();
    assert_eq!(
        revision,
        before.header().unwrap().revision() + 1,
        "the three deletes are one revision"
    );
    let deleted = assert_deleted_together(&mut stream, &["r/a", "r/b", "r/c"], lease).await;
    assert_eq!(deleted, revision);
    assert_eq!(local_keys(&mut client, "r/").await, ["r/free", "r/other"]);

    assert_eq!(time_to_live(&mut client, lease).await.0, -1);
    assert_eq!(listed(&mut client).await, BTreeSet::from([other]));
    assert_grpc_error(client.lease_revoke(lease).await, Code::NotFound, NOT_FOUND);
}

/// One keep-alive on a fresh raw stream: the TTL the server answered (etcd: 0 for a lease it
/// does not know).
async fn keep_alive_once(client: &mut RawLeaseClient<tonic::transport::Channel>, id: i64) -> i64 {
    let requests =
        futures::stream::iter(vec![LeaseKeepAliveRequest { id }]).chain(futures::stream::pending());
    let mut responses = tokio::time::timeout(DEADLINE, client.lease_keep_alive(requests))
        .await
        .expect("a keep-alive stream")
        .expect("keep-alive accepted")
        .into_inner();
    let answer = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("a keep-alive answer")
        .expect("the keep-alive stream failed")
        .expect("the keep-alive stream ended");
    assert_eq!(answer.id, id, "{answer:?}");
    answer.ttl
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_leases_are_answered_as_etcd_answers_them() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let start = client.get("k", None).await.unwrap();
    let revision = start.header().unwrap().revision();

    assert_grpc_error(
        client.lease_revoke(UNKNOWN).await,
        Code::NotFound,
        NOT_FOUND,
    );
    assert_grpc_error(
        client
            .put("k", "v", Some(PutOptions::new().with_lease(UNKNOWN)))
            .await,
        Code::NotFound,
        NOT_FOUND,
    );
    let txn = Txn::new().and_then([TxnOp::put(
        "k",
        "v",
        Some(PutOptions::new().with_lease(UNKNOWN)),
    )]);
    assert_grpc_error(client.txn(txn).await, Code::NotFound, NOT_FOUND);

    // etcd's server answers these two instead of failing.
    let mut raw = RawLeaseClient::new(raw_channel(cluster.member(0)).await);
    assert_eq!(keep_alive_once(&mut raw, UNKNOWN).await, 0);
    let answer = client.lease_time_to_live(UNKNOWN, None).await.unwrap();
    assert_eq!((answer.id(), answer.ttl()), (UNKNOWN, -1), "{answer:?}");

    let end = client.get("k", None).await.unwrap();
    assert!(end.kvs().is_empty(), "nothing was written: {end:?}");
    assert_eq!(end.header().unwrap().revision(), revision, "{end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn time_to_live_reports_the_granted_and_remaining_ttl_and_the_attached_keys() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let (lease, granted) = grant(&mut client, 600).await;
    assert_eq!(granted, 600);
    for key in ["t/b", "t/a"] {
        put_leased(&mut client, key, lease).await;
    }
    let (ttl, granted, keys) = time_to_live(&mut client, lease).await;
    assert!(ttl > 0 && ttl <= 600, "remaining {ttl}");
    assert_eq!(granted, 600);
    assert_eq!(keys, ["t/a", "t/b"]);
    let without_keys = client.lease_time_to_live(lease, None).await.unwrap();
    assert!(without_keys.keys().is_empty(), "{without_keys:?}");

    // A key deleted is no longer attached; its lease lives on.
    client.delete("t/a", None).await.unwrap();
    assert_eq!(time_to_live(&mut client, lease).await.2, ["t/b"]);
    // A put carries its lease in the key-value.
    let kv = client.get("t/b", None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), lease);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_put_again_without_the_lease_or_with_another_leaves_the_first_lease() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let (first, _) = grant(&mut client, 600).await;
    let (second, _) = grant(&mut client, 600).await;
    for key in ["d/plain", "d/moved", "d/kept"] {
        put_leased(&mut client, key, first).await;
    }
    client.put("d/plain", "no lease", None).await.unwrap();
    put_leased(&mut client, "d/moved", second).await;
    assert_eq!(time_to_live(&mut client, first).await.2, ["d/kept"]);
    assert_eq!(time_to_live(&mut client, second).await.2, ["d/moved"]);

    client.lease_revoke(first).await.unwrap();
    assert_eq!(local_keys(&mut client, "d/").await, ["d/moved", "d/plain"]);
    let plain = client.get("d/plain", None).await.unwrap();
    assert_eq!(plain.kvs()[0].lease(), 0, "{plain:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_renews_a_lease_past_several_ttls_and_it_expires_once_stopped() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    // The shortest lease the member grants (it raises 1 s to its minimum).
    let (lease, ttl) = grant(&mut client, 1).await;
    let after_put = put_leased(&mut client, "ka/key", lease).await + 1;
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.unwrap();

    // Renew three times a TTL, for four TTLs: the lease would have expired four times over.
    let interval = Duration::from_millis(ttl as u64 * 1000 / 3);
    let until = Instant::now() + Duration::from_secs(ttl as u64 * 4);
    let mut renewals = 0;
    while Instant::now() < until {
        tokio::time::sleep(interval).await;
        keeper.keep_alive().await.unwrap();
        let answer = tokio::time::timeout(DEADLINE, answers.message())
            .await
            .expect("a keep-alive answer")
            .expect("the keep-alive stream failed")
            .expect("the keep-alive stream ended");
        assert_eq!((answer.id(), answer.ttl()), (lease, ttl), "{answer:?}");
        renewals += 1;
    }
    assert!(renewals >= 4, "only {renewals} renewals");
    let (remaining, granted, keys) = time_to_live(&mut client, lease).await;
    assert!(remaining > 0 && remaining <= ttl, "remaining {remaining}");
    assert_eq!((granted, keys), (ttl, vec!["ka/key".to_string()]));

    // Stop renewing: the lease expires and takes its key.
    let (_watcher, mut stream) = watch_prefix(&client, "ka/", after_put).await;
    drop(keeper);
    drop(answers);
    assert_deleted_together(&mut stream, &["ka/key"], lease).await;
    assert_eq!(time_to_live(&mut client, lease).await.0, -1);
}

/// A keep-alive that answers a positive TTL has renewed the lease for that TTL: etcd's `Renew`
/// refuses a lease past its deadline (it waits for the revoke and answers "not found", TTL 0,
/// `lease/lessor.go`), so an answer with a TTL is never followed by that lease's expiry. Here
/// many leases reach their deadlines together and each gets one keep-alive somewhere in the
/// 300 ms after its deadline: some answer 0 (expired), some a TTL; every lease that answered a
/// TTL must still be alive when asked right after (well within that TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keep_alive_answered_with_a_ttl_is_never_followed_by_the_leases_expiry() {
    const LEASES: usize = 200;
    /// Long enough that the check below runs well within a renewed lease's TTL.
    const TTL: i64 = 6;
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let mut leases = Vec::new();
    for _ in 0..LEASES {
        let asked = Instant::now();
        let (id, ttl) = grant(&mut client, TTL).await;
        assert_eq!(ttl, TTL);
        // The deadline is TTL after the grant was applied, so no earlier than this.
        leases.push((id, asked + Duration::from_secs(TTL as u64)));
    }

    let mut raw = RawLeaseClient::new(raw_channel(cluster.member(0)).await);
    let (requests, receiver) = tokio::sync::mpsc::channel(LEASES);
    let mut responses = raw
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("a keep-alive stream")
        .into_inner();
    // Each lease that answers a TTL is asked about a second later (a time-to-live on another
    // connection, once a revoke in flight has had time to apply): it must be alive, with most
    // of its renewed TTL left; -1 means it is gone.
    let checker = client.clone();
    let reader = tokio::spawn(async move {
        let mut checks = Vec::new();
        let mut answers = 0;
        while answers < LEASES {
            let answer = match tokio::time::timeout(DEADLINE, responses.message()).await {
                Ok(Ok(Some(answer))) => answer,
                other => panic!("keep-alive stream: {other:?}"),
            };
            answers += 1;
            if answer.ttl > 0 {
                assert_eq!(answer.ttl, TTL, "{answer:?}");
                let answered = Instant::now();
                let mut client = checker.clone();
                checks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (remaining, _, _) = time_to_live(&mut client, answer.id).await;
                    let since = answered.elapsed();
                    // The lease was renewed before its answer reached us: concluding needs the
                    // question asked well within the TTL.
                    assert!(
                        since < Duration::from_secs(TTL as u64 - 1),
                        "the check took {since:?}; nothing can be concluded"
                    );
                    (answer.id, remaining, since)
                }));
            }
        }
        checks
    });
    for (index, (id, deadline)) in leases.iter().enumerate() {
        let offset = Duration::from_micros(index as u64 * 300_000 / LEASES as u64);
        tokio::time::sleep_until((*deadline + offset).into()).await;
        requests
            .send(LeaseKeepAliveRequest { id: *id })
            .await
            .expect("sending a keep-alive");
    }
    let checks = reader.await.expect("the keep-alive reader");

    let renewed = checks.len();
    let mut lost = Vec::new();
    for check in checks {
        let (id, remaining, since) = check.await.expect("a time-to-live check");
        // -1 is a lease that no longer exists (0 is one with less than a second left).
        if remaining < 0 {
            lost.push(format!(
                "{id:016x} ({:.1} s after its renewal)",
                since.as_secs_f64()
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of the {renewed} leases renewed with TTL {TTL} are gone: {lost:?}",
        lost.len(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_deletes_its_keys_in_one_revision_and_watchers_see_the_deletes() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    let (lease, _) = grant(&mut client, 1).await;
    let (survivor, _) = grant(&mut client, 600).await;
    for key in ["e/a", "e/b", "e/c"] {
        put_leased(&mut client, key, lease).await;
    }
    let after_puts = put_leased(&mut client, "e/survivor", survivor).await + 1;
    let (_watcher, mut stream) = watch_prefix(&client, "e/", after_puts).await;

    let revision = assert_deleted_together(&mut stream, &["e/a", "e/b", "e/c"], lease).await;
    assert_eq!(local_keys(&mut client, "e/").await, ["e/survivor"]);
    let now = client.get("e/", None).await.unwrap();
    assert_eq!(
        now.header().unwrap().revision(),
        revision,
        "the expiry is one revision and nothing else was written"
    );
    assert_eq!(time_to_live(&mut client, lease).await.0, -1);
    assert_eq!(listed(&mut client).await, BTreeSet::from([survivor]));
}

// ---------------------------------------------------------------------------------------------
// Leases across leader changes (three members)

/// How a test replaces the leader.
#[derive(Debug, Clone, Copy)]
enum LeaderChange {
    /// SIGKILL the leader.
    Kill,
    /// `MoveLeader` to a follower (the old leader stays, as a follower).
    Move,
}

/// Replaces the leader of `cluster` by `change`; returns the members still running and the new
/// leader's index.
async fn change_leader(cluster: &mut Cluster, change: LeaderChange) -> (Vec<usize>, usize) {
    let old = cluster.wait_leader(&cluster.running());
    match change {
        LeaderChange::Kill => cluster.kill9(old),
        LeaderChange::Move => {
            let target = cluster.others(old)[0];
            let target_id = cluster.id(target);
            let mut leader = cluster.member(old).client().await;
            tokio::time::timeout(DEADLINE, leader.move_leader(target_id))
                .await
                .expect("move-leader answered")
                .unwrap_or_else(|e| panic!("move-leader to {target_id:x}: {e}"));
        }
    }
    let running = cluster.running();
    let new = cluster.wait_leader(&running);
    assert_ne!(new, old, "{change:?}: the leader did not change");
    (running, new)
}

/// `remaining` (seconds, as a time-to-live answered it at `answered`) is at least what a leader
/// elected after `changed` guarantees: a new leader restarts each lease at its full TTL (etcd:
/// plus an election timeout), so at `answered` at least `ttl - (answered - changed)` is left.
/// The reported seconds may be truncated (etcd) or rounded up (Bulwark): one second of slack.
/// A slow machine only makes `answered - changed` longer, which loosens the bound; a lease whose
/// clock kept running from its grant instead would fall short by the time it had already run.
#[track_caller]
fn assert_not_shortened_by_the_change(
    remaining: i64,
    ttl: i64,
    changed: Instant,
    answered: Instant,
) {
    let since_change = answered.duration_since(changed).as_secs_f64();
    assert!(
        remaining as f64 > ttl as f64 - since_change - 1.0,
        "{remaining} s left of a {ttl} s lease {since_change:.1} s after the leader changed: \
         the new leader did not restart its clock"
    );
    // etcd's new leader adds one election timeout (at most 1 s with the test timings).
    assert!(
        remaining <= ttl + 1,
        "{remaining} s left of a {ttl} s lease"
    );
}

/// A lease whose clock has run for a while is not shortened by a leader change, still holds its
/// key on every member, and still expires afterwards once nobody renews it.
async fn a_leader_change_does_not_shorten_a_lease(change: LeaderChange) {
    const TTL: i64 = 12;
    /// How long the lease's clock runs before the change: what a carried-over deadline would
    /// lose.
    const RUN_BEFORE_CHANGE: Duration = Duration::from_secs(5);
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    // Grant and attach through a member that survives either change.
    let survivor = cluster.others(leader)[1];
    let mut client = cluster.member(survivor).client().await;
    let (lease, ttl) = grant(&mut client, TTL).await;
    assert_eq!(ttl, TTL);
    let after_put = put_leased(&mut client, "lc/key", lease).await + 1;
    tokio::time::sleep(RUN_BEFORE_CHANGE).await;

    let changed = Instant::now();
    let (running, _) = change_leader(&mut cluster, change).await;
    let (remaining, granted, keys) = time_to_live(&mut client, lease).await;
    let answered = Instant::now();
    assert_eq!((granted, keys), (TTL, vec!["lc/key".to_string()]));
    assert_not_shortened_by_the_change(remaining, TTL, changed, answered);
    for index in &running {
        let mut member = cluster.member(*index).client().await;
        assert_eq!(
            local_keys(&mut member, "lc/").await,
            ["lc/key"],
            "member {index} after the change"
        );
    }

    // Nobody renews it: the new leader still ends it, on every member.
    let mut streams = Vec::new();
    for index in &running {
        let member = cluster.member(*index).client().await;
        streams.push((
            *index,
            watch_prefix(&member, "lc/", after_put).await,
            member,
        ));
    }
    let mut revisions = BTreeSet::new();
    for (index, (_watcher, stream), member) in &mut streams {
        revisions.insert(assert_deleted_together(stream, &["lc/key"], lease).await);
        assert!(
            local_keys(member, "lc/").await.is_empty(),
            "member {index} still holds the key"
        );
    }
    assert_eq!(revisions.len(), 1, "members deleted at different revisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_does_not_shorten_a_lease() {
    a_leader_change_does_not_shorten_a_lease(LeaderChange::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_moved_does_not_shorten_a_lease() {
    a_leader_change_does_not_shorten_a_lease(LeaderChange::Move).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_alive_lease_outlives_a_killed_leader_renewed_through_any_member() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    let mut client = cluster.member(follower).client().await;
    let (lease, ttl) = grant(&mut client, 5).await;
    put_leased(&mut client, "ka/key", lease).await;
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let before = answers
        .message()
        .await
        .unwrap()
        .expect("a keep-alive answer");
    assert_eq!(before.ttl(), ttl);

    let (running, new_leader) = change_leader(&mut cluster, LeaderChange::Kill).await;
    // Renew for two TTLs past the change, alternately through the new leader itself and through
    // the other survivor (which forwards to it); each keep-alive on a fresh stream, as a client
    // whose stream broke with the old leader reconnects.
    let mut through = Vec::new();
    for index in &running {
        through.push((*index, cluster.member(*index).client().await));
    }
    let until = Instant::now() + Duration::from_secs(ttl as u64 * 2);
    let mut round = 0;
    while Instant::now() < until {
        let count = through.len();
        let (index, member) = &mut through[round % count];
        let answer = retry_unavailable(DEADLINE, || {
            let mut member = member.clone();
            async move { member.lease_keep_alive(lease).await }
        })
        .await;
        match answer {
            Ok(_) => {}
            Err(error) => {
                panic!("keep-alive through member {index} (leader {new_leader}): {error}")
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(ttl as u64 * 1000 / 3)).await;
    }
    for (index, member) in &mut through {
        let (remaining, granted, keys) = time_to_live(member, lease).await;
        assert!(
            remaining > 0 && remaining <= ttl,
            "member {index}: remaining {remaining}"
        );
        assert_eq!((granted, keys), (ttl, vec!["ka/key".to_string()]));
        assert_eq!(
            local_keys(member, "ka/").await,
            ["ka/key"],
            "member {index}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_granted_on_a_follower_expires_on_every_member_with_delete_events() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let followers = cluster.others(leader);
    let mut granter = cluster.member(followers[0]).client().await;
    let mut writer = cluster.member(followers[1]).client().await;
    let (lease, _) = grant(&mut granter, 1).await;
    // The keys are attached through another member than the grant: the lease is replicated
    // state, not the granting member's.
    let mut after_puts = 0;
    for key in ["x/a", "x/b"] {
        after_puts = put_leased(&mut writer, key, lease).await + 1;
    }
    let mut clients = Vec::new();
    for index in 0..3 {
        let client = cluster.member(index).client().await;
        clients.push((index, watch_prefix(&client, "x/", after_puts).await, client));
    }
    let mut revisions = BTreeSet::new();
    for (index, (_watcher, stream), client) in &mut clients {
        revisions.insert(assert_deleted_together(stream, &["x/a", "x/b"], lease).await);
        assert!(
            local_keys(client, "x/").await.is_empty(),
            "member {index} still holds keys of the expired lease"
        );
    }
    assert_eq!(revisions.len(), 1, "members deleted at different revisions");
    assert_eq!(time_to_live(&mut granter, lease).await.0, -1);
}

// ---------------------------------------------------------------------------------------------
// etcdctl

/// The step's JSON output in the etcd reference samples.
fn sample_json(step: &str) -> Value {
    serde_json::from_str(etcd_sample_output(step).trim())
        .unwrap_or_else(|e| panic!("sample {step} is not JSON: {e}"))
}

#[test]
fn etcdctl_lease_commands_print_what_they_print_against_etcd() {
    let cluster = Cluster::single();
    let etcdctl = cluster.member(0).etcdctl();

    // Step 21: lease grant -w json.
    let granted = etcdctl
        .run(&["lease", "grant", "-w", "json", "600"])
        .assert_success()
        .json();
    assert_eq!(shape(&granted), shape(&sample_json("21-lease-grant-json")));
    assert_eq!(
        (&granted["TTL"], &granted["Error"]),
        (&600.into(), &"".into())
    );
    let lease = granted["ID"].as_i64().expect("an ID");
    let id = hex(lease);

    let simple = etcdctl.run(&["lease", "grant", "600"]);
    let other = granted_id(simple.assert_success());
    assert_eq!(
        simple.stdout,
        format!("lease {} granted with TTL(600s)\n", hex(other))
    );

    // Step 22: put with the lease.
    let put = etcdctl.run(&["put", &format!("--lease={id}"), "leased", "v"]);
    assert_eq!(put.assert_success().stdout, "OK\n");

    // Steps 23 and 24: timetolive --keys, JSON and simple.
    let ttl = etcdctl
        .run(&["lease", "timetolive", "-w", "json", "--keys", &id])
        .assert_success()
        .json();
    assert_eq!(shape(&ttl), shape(&sample_json("23-lease-ttl-json")));
    assert_eq!(ttl["id"].as_i64(), Some(lease), "{ttl}");
    assert_eq!(ttl["granted-ttl"], 600, "{ttl}");
    assert_eq!(ttl["keys"], serde_json::json!(["bGVhc2Vk"]), "{ttl}");
    let remaining = ttl["ttl"].as_i64().expect("a ttl");
    assert!(remaining > 0 && remaining <= 600, "{ttl}");
    let simple = etcdctl.run(&["lease", "timetolive", "--keys", &id]);
    let line = simple.assert_success().stdout.clone();
    let expected_start = format!("lease {id} granted with TTL(600s), remaining(");
    assert!(
        line.starts_with(&expected_start) && line.ends_with("s), attached keys([leased])\n"),
        "{simple}"
    );

    // Step 25: lease list -w json; and the simple form.
    let list = etcdctl
        .run(&["lease", "list", "-w", "json"])
        .assert_success()
        .json();
    let listed: BTreeSet<i64> = list["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["id"].as_i64().expect("an id"))
        .collect();
    assert_eq!(listed, BTreeSet::from([lease, other]), "{list}");
    let mut reference = sample_json("25-lease-list-json");
    let one = reference["leases"][0].clone();
    reference["leases"].as_array_mut().unwrap().push(one);
    assert_eq!(shape(&list), shape(&reference));
    let simple = etcdctl.run(&["lease", "list"]);
    let mut ids = [hex(lease), hex(other)];
    ids.sort();
    let printed: BTreeSet<&str> = simple.assert_success().stdout.lines().skip(1).collect();
    assert!(simple.stdout.starts_with("found 2 leases\n"), "{simple}");
    assert_eq!(
        printed,
        ids.iter().map(String::as_str).collect(),
        "{simple}"
    );

    // keep-alive --once.
    let kept = etcdctl.run(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(
        kept.assert_success().stdout,
        format!("lease {id} keepalived with TTL(600)\n")
    );

    // Steps 26 and 27: revoke, then timetolive of the revoked lease.
    let revoked = etcdctl.run(&["lease", "revoke", &id]);
    assert_eq!(
        revoked.assert_success().stdout,
        etcd_sample_output("26-lease-revoke").replace("0111a2231d152c1a", &id)
    );
    let gone = etcdctl.run(&["lease", "timetolive", &id]);
    assert_eq!(
        gone.assert_success().stdout,
        etcd_sample_output("27-lease-ttl-gone").replace("0111a2231d152c1a", &id)
    );
    let keys = etcdctl.run(&["get", "leased"]);
    assert_eq!(
        keys.assert_success().stdout,
        "",
        "the revoke deleted the key"
    );
}

#[test]
fn etcdctl_lease_errors_are_etcds() {
    let cluster = Cluster::single();
    let etcdctl = cluster.member(0).etcdctl();
    let unknown = hex(UNKNOWN);

    let revoke = etcdctl.run(&["lease", "revoke", &unknown]);
    assert_eq!(
        etcdctl_error(revoke.assert_failure()),
        format!("Error: failed to revoke lease ({NOT_FOUND})")
    );
    // etcdctl turns the server's TTL 0 into etcd's "not found".
    let keep_alive = etcdctl.run(&["lease", "keep-alive", "--once", &unknown]);
    assert_eq!(
        etcdctl_error(keep_alive.assert_failure()),
        format!("Error: {NOT_FOUND}")
    );
    let put = etcdctl.run(&["put", &format!("--lease={unknown}"), "k", "v"]);
    assert_eq!(
        etcdctl_error(put.assert_failure()),
        format!("Error: {NOT_FOUND}")
    );
    let too_long = etcdctl.run(&["lease", "grant", &(MAX_LEASE_TTL + 1).to_string()]);
    assert_eq!(
        etcdctl_error(too_long.assert_failure()),
        format!("Error: failed to grant lease ({TOO_LARGE})")
    );
    let ttl = etcdctl.run(&["lease", "timetolive", &unknown]);
    assert_eq!(
        ttl.assert_success().stdout,
        format!("lease {unknown} already expired\n")
    );
}

/// etcd reports the remaining TTL truncated to whole seconds (`int64(l.Remaining().Seconds())`
/// in `etcdserver/v3_server.go`): right after a grant of 600 s, the reference printed
/// `remaining(599s)` (sample 24), and any time after the grant it is below the granted TTL.
#[test]
fn etcdctl_timetolive_truncates_the_remaining_seconds_as_etcd_does() {
    let cluster = Cluster::single();
    let etcdctl = cluster.member(0).etcdctl();
    let lease = granted_id(etcdctl.run(&["lease", "grant", "600"]).assert_success());
    let ttl = etcdctl
        .run(&["lease", "timetolive", "-w", "json", &hex(lease)])
        .assert_success()
        .json();
    let remaining = ttl["ttl"].as_i64().expect("a ttl");
    assert!(
        remaining < 600,
        "etcd answers at most 599 for a 600 s lease granted before the question: {ttl}"
    );
}

// ---------------------------------------------------------------------------------------------
// bulwark lease

#[test]
fn bulwark_lease_grants_shows_keeps_alive_lists_and_revokes() {
    let cluster = Cluster::single();
    let member = cluster.member(0);

    let granted = member.cli(&["lease", "grant", "600"]);
    let lease = granted_id(granted.assert_success());
    let id = hex(lease);
    assert_eq!(
        granted.stdout,
        format!("lease {id} granted with TTL(600s)\n")
    );
    let json = member
        .cli(&["lease", "grant", "300", "-w", "json"])
        .assert_success()
        .json();
    assert_eq!(shape(&json), shape(&sample_json("21-lease-grant-json")));
    assert_eq!(json["TTL"], 300, "{json}");
    let other = json["ID"].as_i64().expect("an ID");

    member
        .cli(&["put", "held", "v", "--lease", &id])
        .assert_success();
    let ttl = member.cli(&["lease", "ttl", &id, "--keys"]);
    let line = ttl.assert_success().stdout.clone();
    assert!(
        line.starts_with(&format!("lease {id} granted with TTL(600s), remaining("))
            && line.contains("held"),
        "{ttl}"
    );
    let kept = member.cli(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(
        kept.assert_success().stdout,
        format!("lease {id} keepalived with TTL(600)\n")
    );
    let list = member.cli(&["lease", "list"]);
    let mut expected = [hex(lease), hex(other)];
    expected.sort();
    assert_eq!(
        list.assert_success().stdout,
        format!("found 2 leases\n{}\n", expected.join("\n"))
    );

    let revoked = member.cli(&["lease", "revoke", &id]);
    assert_eq!(
        revoked.assert_success().stdout,
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        member
            .etcdctl()
            .run(&["get", "held"])
            .assert_success()
            .stdout,
        "",
        "the revoke deleted the attached key"
    );
    let gone = member.cli(&["lease", "ttl", &id]);
    assert_eq!(
        gone.assert_success().stdout,
        format!("lease {id} already expired\n")
    );

    // Errors: one line on stderr, a non-zero exit.
    for (args, message) in [
        (vec!["lease", "revoke", id.as_str()], NOT_FOUND.to_string()),
        (
            vec!["lease", "keep-alive", "--once", id.as_str()],
            format!("lease {id} expired or revoked"),
        ),
        (vec!["lease", "grant", "9000000001"], TOO_LARGE.to_string()),
    ] {
        let output = member.cli(&args);
        output.assert_failure();
        assert_eq!(output.stderr, format!("Error: {message}\n"), "{output}");
        assert_eq!(output.stdout, "", "{output}");
    }
}

/// `bulwark lease` prints etcdctl's lines (`-w simple` is etcdctl's format, `-w json` is
/// etcdctl's JSON for scripts, README "Run it"): the same attached-keys list as etcdctl, and
/// the same JSON for `ttl`, `list` and `keep-alive` as `lease grant -w json` already gives.
#[test]
fn bulwark_lease_prints_what_etcdctl_prints() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let etcdctl = member.etcdctl();
    let lease = granted_id(member.cli(&["lease", "grant", "600"]).assert_success());
    let id = hex(lease);
    member
        .cli(&["put", "held", "v", "--lease", &id])
        .assert_success();

    // The remaining seconds may tick between the two commands: compare around them.
    let ours = member.cli(&["lease", "ttl", &id, "--keys", "-w", "simple"]);
    let theirs = etcdctl.run(&["lease", "timetolive", "--keys", &id]);
    let without_remaining = |line: &str| {
        let (start, rest) = line.split_once("remaining(").expect("a remaining TTL");
        format!(
            "{start}{}",
            rest.split_once(')').expect("a closing paren").1
        )
    };
    assert_eq!(
        without_remaining(&ours.assert_success().stdout),
        without_remaining(&theirs.assert_success().stdout)
    );

    for (ours, theirs) in [
        (
            vec!["lease", "ttl", id.as_str(), "--keys"],
            vec!["lease", "timetolive", id.as_str(), "--keys"],
        ),
        (vec!["lease", "list"], vec!["lease", "list"]),
        (
            vec!["lease", "keep-alive", "--once", id.as_str()],
            vec!["lease", "keep-alive", "--once", id.as_str()],
        ),
    ] {
        let mut ours = ours.clone();
        ours.extend(["-w", "json"]);
        let mut theirs = theirs.clone();
        theirs.extend(["-w", "json"]);
        let ours_json: Value =
            serde_json::from_str(member.cli(&ours).assert_success().stdout.trim())
                .unwrap_or_else(|e| panic!("bulwark {ours:?} did not print JSON: {e}"));
        let theirs_json = etcdctl.run(&theirs).assert_success().json();
        assert_eq!(shape(&ours_json), shape(&theirs_json), "{ours:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bulwark_lease_keep_alive_keeps_a_lease_alive_until_it_is_killed() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let mut client = member.client().await;
    // Long enough for the command to start and send its first keep-alive on a loaded machine.
    let (lease, ttl) = grant(&mut client, 4).await;
    let after_put = put_leased(&mut client, "cli/key", lease).await + 1;

    let mut keep_alive = member.spawn_cli(&["lease", "keep-alive", &hex(lease)]);
    keep_alive.wait_for_stdout(
        &format!("lease {} keepalived with TTL({ttl})", hex(lease)),
        DEADLINE,
    );
    // Two TTLs later the lease and its key are still there.
    tokio::time::sleep(Duration::from_secs(ttl as u64 * 2)).await;
    assert!(keep_alive.is_running(), "{}", keep_alive.output());
    let (remaining, _, keys) = time_to_live(&mut client, lease).await;
    assert!(remaining > 0, "remaining {remaining}");
    assert_eq!(keys, ["cli/key"]);

    let (_watcher, mut stream) = watch_prefix(&client, "cli/", after_put).await;
    keep_alive.kill9();
    assert_deleted_together(&mut stream, &["cli/key"], lease).await;
}
