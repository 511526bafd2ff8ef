//! The Lock (`v3lockpb`) and Election (`v3electionpb`) services through the `etcd-client`
//! crate, which calls them directly, and `etcdctl lock` / `etcdctl elect`, which run etcd's
//! client-side recipe over KV, Watch and Lease. Mutual exclusion, arrival order, and a dead
//! holder losing the lock when its lease expires.

mod common;

use std::time::Duration;

use common::Cluster;
use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

/// A bound on every wait in this file; never a timing assertion.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_excludes_a_second_holder_until_unlocked() {
    let cluster = Cluster::single();
    let mut first = cluster.member(0).client().await;
    let mut second = cluster.member(0).client().await;
    let lease_a = first.lease_grant(60, None).await.unwrap().id();
    let lease_b = first.lease_grant(60, None).await.unwrap().id();

    let held = first
        .lock("jobs", Some(LockOptions::new().with_lease(lease_a)))
        .await
        .unwrap();
    assert!(held.key().starts_with(b"jobs/"));

    let waiter = tokio::spawn(async move {
        second
            .lock("jobs", Some(LockOptions::new().with_lease(lease_b)))
            .await
            .map(|r| r.key().to_vec())
    });
    // The second contender must still be waiting while the first holds the lock: give it a
    // chance to (wrongly) finish, then check it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "two holders of one lock");

    first.unlock(held.key()).await.unwrap();
    let second_key = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the waiter gets the lock after the unlock")
        .unwrap()
        .unwrap();
    assert_ne!(second_key, held.key());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_whose_lease_expires_loses_the_lock() {
    let cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    // The shortest TTL the member accepts (it raises shorter ones to its minimum).
    let dying = client.lease_grant(1, None).await.unwrap().id();
    let waiting = client.lease_grant(60, None).await.unwrap().id();
    client
        .lock("shared", Some(LockOptions::new().with_lease(dying)))
        .await
        .unwrap();
    // Nobody keeps `dying` alive: when it expires, its key goes and the waiter is granted.
    let granted = tokio::time::timeout(
        DEADLINE,
        client.lock("shared", Some(LockOptions::new().with_lease(waiting))),
    )
    .await
    .expect("the lock passes on when the holder's lease expires")
    .unwrap();
    assert!(granted.key().ends_with(format!("{waiting:x}").as_bytes()));
}

#[tokio::test(flavor = "multi_thread")]
async fn elections_campaign_proclaim_observe_and_resign() {
    let cluster = Cluster::single();
    let mut a = cluster.member(0).client().await;
    let mut b = cluster.member(0).client().await;
    let lease_a = a.lease_grant(60, None).await.unwrap().id();
    let lease_b = b.lease_grant(60, None).await.unwrap().id();

    let won = a.campaign("pick", "a-1", lease_a).await.unwrap();
    let leader_a = won.leader().unwrap().clone();
    let current = a.leader("pick").await.unwrap();
    assert_eq!(current.kv().unwrap().value(), b"a-1");

    let mut observer = a.observe("pick").await.unwrap();
    let first_seen = tokio::time::timeout(DEADLINE, observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first_seen.kv().unwrap().value(), b"a-1");

    a.proclaim(
        "a-2",
        Some(ProclaimOptions::new().with_leader(leader_a.clone())),
    )
    .await
    .unwrap();
    let proclaimed = tokio::time::timeout(DEADLINE, observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(proclaimed.kv().unwrap().value(), b"a-2");

    let challenger = tokio::spawn(async move { b.campaign("pick", "b-1", lease_b).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!challenger.is_finished(), "two leaders of one election");

    a.resign(Some(ResignOptions::new().with_leader(leader_a)))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, challenger)
        .await
        .expect("the challenger wins after the resignation")
        .unwrap()
        .unwrap();
    let after = tokio::time::timeout(DEADLINE, observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(after.kv().unwrap().value(), b"b-1");
    assert_eq!(
        a.leader("pick").await.unwrap().kv().unwrap().value(),
        b"b-1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_lock_and_elect_work() {
    let cluster = Cluster::single();
    let etcdctl = cluster.member(0).etcdctl();
    let locked = etcdctl.run(&["lock", "tool-lock", "echo", "got-lock"]);
    assert_eq!(locked.code, Some(0), "{locked:?}");
    assert_eq!(locked.stdout.trim(), "got-lock");
}
