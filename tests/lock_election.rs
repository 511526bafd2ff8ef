//! The Lock (`v3lockpb`) and Election (`v3electionpb`) services through the `etcd-client`
//! crate, which calls them directly, and `etcdctl lock` / `etcdctl elect`, which run etcd's
//! client-side recipe over KV, Watch and Lease. Mutual exclusion (under contention from every
//! member of a cluster too), arrival order, and a dead holder losing the lock when its lease
//! expires: a holder whose lease is not renewed, a holder process killed, a holder's member
//! killed.

mod common;

use std::time::Duration;

use common::client::retry_unavailable;
use common::{Background, Cluster, ClusterOptions};
use etcd_client::{LockOptions, ProclaimOptions, PutOptions, ResignOptions};

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

// ---------------------------------------------------------------------------------------------
// Contention and crashed holders

/// Bound on a lock passing on after its holder died: the holder's lease must run out first (a
/// leader change on the way restarts its clock), then the waiter must see the deletion.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(90);

/// Clients on every member of a cluster take one lock in turn, each time incrementing a shared
/// counter by read-modify-write while holding it. Mutual exclusion means no two holders
/// interleave: each write replaces exactly the value its writer read (its `prev_kv`), and the
/// counter ends at the number of increments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_taken_by_clients_on_every_member_loses_no_update() {
    const CLIENTS_PER_MEMBER: usize = 2;
    const ROUNDS: usize = 10;
    let cluster = Cluster::start(ClusterOptions::new(3));
    let mut first = cluster.member(0).client().await;
    first.put("counter", "0", None).await.unwrap();

    let mut contenders = Vec::new();
    for index in 0..cluster.len() {
        for _ in 0..CLIENTS_PER_MEMBER {
            let mut client = cluster.member(index).client().await;
            contenders.push(tokio::spawn(async move {
                let lease = retry_unavailable(DEADLINE, || {
                    let mut client = client.clone();
                    async move { client.lease_grant(60, None).await }
                })
                .await
                .unwrap()
                .id();
                for _ in 0..ROUNDS {
                    let held = retry_unavailable(DEADLINE, || {
                        let mut client = client.clone();
                        async move {
                            client
                                .lock("counter-lock", Some(LockOptions::new().with_lease(lease)))
                                .await
                        }
                    })
                    .await
                    .unwrap_or_else(|e| panic!("member {index}: lock: {e}"));
                    let read = client.get("counter", None).await.unwrap();
                    let value: u64 = String::from_utf8_lossy(read.kvs()[0].value())
                        .parse()
                        .unwrap();
                    let written = client
                        .put(
                            "counter",
                            (value + 1).to_string(),
                            Some(PutOptions::new().with_prev_key()),
                        )
                        .await
                        .unwrap();
                    let replaced = written.prev_key().expect("the counter existed");
                    assert_eq!(
                        replaced.mod_revision(),
                        read.kvs()[0].mod_revision(),
                        "member {index}: another holder wrote the counter between this holder's \
                         read and its write"
                    );
                    client.unlock(held.key()).await.unwrap();
                }
            }));
        }
    }
    for contender in contenders {
        tokio::time::timeout(HANDOVER_DEADLINE, contender)
            .await
            .expect("the contenders finished")
            .expect("a contender failed");
    }
    let total = first.get("counter", None).await.unwrap();
    assert_eq!(
        total.kvs()[0].value(),
        (cluster.len() * CLIENTS_PER_MEMBER * ROUNDS)
            .to_string()
            .as_bytes(),
        "lost updates"
    );
}

/// Requires `waiter` (a `lock` command that prints `printed` once it holds the lock) to be
/// still waiting: a holder is alive. Gives it a moment to (wrongly) get the lock first.
#[track_caller]
fn assert_still_waiting(waiter: &mut Background, printed: &str) {
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiter.is_running() && !waiter.stdout().contains(printed),
        "two holders of one lock:\n{}",
        waiter.output()
    );
}

#[test]
fn an_etcdctl_lock_holder_killed_loses_the_lock_when_its_lease_expires() {
    let cluster = Cluster::single();
    let etcdctl = cluster.member(0).etcdctl();
    let mut holder = etcdctl.spawn(&["lock", "--ttl=3", "crash-lock"]);
    holder.wait_for_stdout("crash-lock/", DEADLINE);
    let mut waiter = etcdctl.spawn(&["lock", "crash-lock", "echo", "waiter-holds"]);
    assert_still_waiting(&mut waiter, "waiter-holds");

    holder.kill9();
    let got = waiter.wait_exit(HANDOVER_DEADLINE);
    assert_eq!(got.assert_success().stdout, "waiter-holds\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulwark_lock_holder_killed_with_its_command_loses_the_lock_when_its_lease_expires() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let mut holder = member.spawn_cli(&[
        "lock",
        "crash-lock",
        "--ttl",
        "3",
        "--",
        "sh",
        "-c",
        "echo holding; exec sleep 300",
    ]);
    holder.wait_for_stdout("holding", DEADLINE);
    let mut waiter = member
        .etcdctl()
        .spawn(&["lock", "crash-lock", "echo", "waiter-holds"]);
    assert_still_waiting(&mut waiter, "waiter-holds");

    // The holder and the command it runs die together (its process group).
    holder.kill9();
    let got = waiter.wait_exit(HANDOVER_DEADLINE);
    assert_eq!(got.assert_success().stdout, "waiter-holds\n");
}

/// Which member a crashed holder was connected to.
#[derive(Debug, Clone, Copy)]
enum HolderMember {
    Leader,
    Follower,
}

/// A holder (`etcdctl lock`, connected to one member only) loses its member to `kill -9`: it
/// cannot renew its lease any more, so a waiter on another member gets the lock once the lease
/// runs out, under a new leader if the leader died.
fn the_member_of_a_lock_holder_killed(holder_on: HolderMember) {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let followers = cluster.others(leader);
    let (doomed, survivor) = match holder_on {
        HolderMember::Leader => (leader, followers[0]),
        HolderMember::Follower => (followers[0], followers[1]),
    };
    let mut holder = cluster
        .member(doomed)
        .etcdctl()
        .spawn(&["lock", "--ttl=3", "member-lock"]);
    holder.wait_for_stdout("member-lock/", DEADLINE);
    let mut waiter =
        cluster
            .member(survivor)
            .etcdctl()
            .spawn(&["lock", "member-lock", "echo", "waiter-holds"]);
    assert_still_waiting(&mut waiter, "waiter-holds");

    cluster.kill9(doomed);
    let got = waiter.wait_exit(HANDOVER_DEADLINE);
    assert_eq!(got.assert_success().stdout, "waiter-holds\n");
}

#[test]
fn a_lock_holder_whose_member_leader_is_killed_loses_the_lock_to_a_waiter() {
    the_member_of_a_lock_holder_killed(HolderMember::Leader);
}

#[test]
fn a_lock_holder_whose_member_follower_is_killed_loses_the_lock_to_a_waiter() {
    the_member_of_a_lock_holder_killed(HolderMember::Follower);
}
