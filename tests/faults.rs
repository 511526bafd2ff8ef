//! Fault runs (Raft issue, point 9): concurrent clients do put, get and compare-and-set on a few
//! keys against every member while a fault strikes; the recorded history must be linearizable
//! (checked per key by `checker`, proven on the Jepsen histories), and afterwards every member
//! must hold the same keys and the same `HashKV`.
//!
//! A request that failed with an error counts as "may have happened, at any later time"
//! (Unknown) unless it was a read. Each fault's short run is a normal test; set
//! `BULWARK_SOAK_SECONDS` to run each fault's load for longer (soak), e.g.
//! `BULWARK_SOAK_SECONDS=120 cargo test --release --test faults`.

mod checker;
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use checker::{check, Op, Outcome, Recorder, Verdict};
use common::{Cluster, ClusterOptions};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

const KEYS: [&str; 3] = ["reg-a", "reg-b", "reg-c"];
const CLIENTS: usize = 6;
/// Per-request bound: a request that takes longer is recorded as Unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long load runs before and after the fault (longer with `BULWARK_SOAK_SECONDS`).
fn phase() -> Duration {
    std::env::var("BULWARK_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(2))
}

/// Clients hammering the cluster, recording every operation.
struct Load {
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(cluster: &Cluster) -> Load {
        let recorder = Recorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let next_value = Arc::new(AtomicU64::new(0));
        let next_process = Arc::new(AtomicU64::new(CLIENTS as u64));
        let mut tasks = Vec::new();
        for client_index in 0..CLIENTS {
            // Spread clients over the members; etcd-client fails over among all endpoints.
            let mut endpoints: Vec<String> = cluster
                .members()
                .iter()
                .map(|member| member.endpoint())
                .collect();
            let first = client_index % endpoints.len();
            endpoints.rotate_left(first);
            let client = Client::connect(
                endpoints,
                Some(common::client::tls_options(&cluster.admin())),
            )
            .await
            .expect("connecting");
            tasks.push(tokio::spawn(client_loop(
                client,
                client_index as u64,
                recorder.clone(),
                stop.clone(),
                next_value.clone(),
                next_process.clone(),
            )));
        }
        Load {
            recorder,
            stop,
            tasks,
        }
    }

    /// Stops the clients and checks the history.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, task).await;
        }
        let history = self.recorder.history();
        let operations = history.ops.len();
        let verdict = tokio::task::spawn_blocking(move || check(&history))
            .await
            .unwrap();
        match verdict {
            Verdict::Linearizable => {
                eprintln!("{operations} operations recorded; the history is linearizable");
                operations
            }
            other => panic!("the history of {operations} operations is not linearizable: {other}"),
        }
    }
}

async fn client_loop(
    mut client: Client,
    mut process: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicU64>,
    next_process: Arc<AtomicU64>,
) {
    // Bounded even if `stop` never came.
    for round in 0..100_000u64 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let key = KEYS[(round as usize + process as usize) % KEYS.len()];
        let choice = (round + process * 7) % 5;
        let outcome_known = match choice {
            0 | 1 => {
                let id = recorder.invoke(process, key, Op::Read);
                match tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, None)).await {
                    Ok(Ok(response)) => {
                        let value = response
                            .kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                        recorder.complete(id, Outcome::read(value.as_deref()));
                    }
                    // A failed read had no effect.
                    _ => recorder.complete(id, Outcome::Failed),
                }
                true
            }
            2 | 3 => {
                let value = format!("v{}", next_value.fetch_add(1, Ordering::SeqCst));
                let id = recorder.invoke(process, key, Op::Write(value.clone()));
                match tokio::time::timeout(REQUEST_TIMEOUT, client.put(key, value, None)).await {
                    Ok(Ok(_)) => {
                        recorder.complete(id, Outcome::written());
                        true
                    }
                    _ => {
                        recorder.complete(id, Outcome::Unknown);
                        false
                    }
                }
            }
            _ => {
                // Compare-and-set from what this client last saw (or the absent key).
                let current = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, None))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|r| {
                        r.kvs()
                            .first()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    });
                let new = format!("v{}", next_value.fetch_add(1, Ordering::SeqCst));
                let compare = match &current {
                    Some(value) => Compare::value(key, CompareOp::Equal, value.as_str()),
                    None => Compare::create_revision(key, CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key, new.clone(), None)]);
                let id = recorder.invoke(
                    process,
                    key,
                    Op::Cas {
                        expected: current,
                        new,
                    },
                );
                match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
                    Ok(Ok(response)) => {
                        recorder.complete(id, Outcome::cas(response.succeeded()));
                        true
                    }
                    _ => {
                        recorder.complete(id, Outcome::Unknown);
                        false
                    }
                }
            }
        };
        if !outcome_known {
            // Jepsen's rule: a process whose operation may still take effect is not reused.
            process = next_process.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Every member holds the same keys and revision, and agrees on `HashKV`.
fn assert_converged(cluster: &Cluster) {
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    cluster.wait_converged(&everyone);
    let output = cluster.etcdctl().run(&["endpoint", "hashkv", "-w", "json"]);
    assert!(output.success(), "{output:?}");
    let answers: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap();
    let hashes: Vec<u64> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| answer["HashKV"]["hash"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(hashes.len(), cluster.len(), "{answers}");
    assert!(
        hashes.windows(2).all(|pair| pair[0] == pair[1]),
        "members disagree on HashKV: {answers}"
    );
}

fn three_members() -> Cluster {
    Cluster::start(ClusterOptions::new(3))
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_under_load() {
    let mut cluster = three_members();
    let load = Load::start(&cluster).await;
    tokio::time::sleep(phase()).await;
    let leader = cluster.wait_leader(&[0, 1, 2]);
    cluster.kill9(leader);
    tokio::time::sleep(phase()).await;
    cluster.restart(leader);
    tokio::time::sleep(phase()).await;
    let operations = load.finish().await;
    assert!(
        operations > CLIENTS,
        "the load hardly ran: {operations} operations"
    );
    assert_converged(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_follower_under_load() {
    let mut cluster = three_members();
    let load = Load::start(&cluster).await;
    tokio::time::sleep(phase()).await;
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    cluster.kill9(follower);
    tokio::time::sleep(phase()).await;
    cluster.restart(follower);
    tokio::time::sleep(phase()).await;
    load.finish().await;
    assert_converged(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn pausing_the_leader_under_load() {
    let cluster = three_members();
    let load = Load::start(&cluster).await;
    tokio::time::sleep(phase()).await;
    let leader = cluster.wait_leader(&[0, 1, 2]);
    cluster.pause(leader);
    tokio::time::sleep(phase()).await;
    cluster.resume(leader);
    tokio::time::sleep(phase()).await;
    load.finish().await;
    assert_converged(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn partitioning_the_leader_from_the_majority_under_load() {
    let cluster = Cluster::start(ClusterOptions::new(3).proxied());
    let load = Load::start(&cluster).await;
    tokio::time::sleep(phase()).await;
    let leader = cluster.wait_leader(&[0, 1, 2]);
    cluster.isolate(leader);
    tokio::time::sleep(phase() * 2).await;
    cluster.heal();
    tokio::time::sleep(phase()).await;
    load.finish().await;
    assert_converged(&cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_down_long_enough_to_need_a_snapshot_under_load() {
    let mut cluster = Cluster::start(ClusterOptions::new(3).snapshot_count(20));
    let load = Load::start(&cluster).await;
    tokio::time::sleep(phase()).await;
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    cluster.kill9(follower);
    // Long enough for far more than `snapshot_count` entries to commit without it.
    tokio::time::sleep(phase() * 2).await;
    // openraft says at info level when a follower installs a snapshot from the leader.
    cluster.member_mut(follower).options_mut().log_filter = Some("info".to_string());
    cluster.restart(follower);
    tokio::time::sleep(phase()).await;
    load.finish().await;
    assert_converged(&cluster);
    assert!(
        cluster
            .member(follower)
            .logs()
            .contains("install_full_snapshot"),
        "the follower caught up without installing a snapshot: this test no longer tests what \
         it claims"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_and_re_adding_a_member_under_load() {
    let mut cluster = three_members();
    let load = Load::start(&cluster).await;
    tokio::time::sleep(phase()).await;
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    // Wipe its data, remove it, and join it again (a new member id, a fresh copy).
    let id = cluster.id(follower);
    cluster.wipe(follower);
    let removed = cluster
        .member(leader)
        .etcdctl()
        .run(&["member", "remove", &format!("{id:x}")]);
    assert!(removed.success(), "{removed:?}");
    cluster.rejoin(follower);
    tokio::time::sleep(phase()).await;
    load.finish().await;
    assert_converged(&cluster);
}
