//! An acknowledged write is durable: it survives `kill -9` at an arbitrary moment, with
//! writes in flight, and a restart continues the revision sequence exactly where it stopped
//! (after a crash or a clean SIGTERM). A write that was not acknowledged may or may not be
//! there (the client cannot know), but if it is there it is whole.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::client::{assert_grpc_error, assert_header};
use common::{Cluster, ClusterOptions};
use etcd_client::{Client, GetOptions, Txn, TxnOp};

/// How many acknowledged puts at least before the crash.
const ACKNOWLEDGED_BEFORE_CRASH: usize = 300;
/// Generous bound on reaching that many acknowledgements.
const WRITE_PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// A random number for this run (std's hasher is randomly keyed per process).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish()
}

fn value_for(key: &str) -> String {
    format!("{key}:value")
}

/// An acknowledged put: key, value, and the revision the server answered.
type Acknowledged = Vec<(String, String, i64)>;

/// Runs `writers` tasks putting distinct keys under `prefix` as fast as they can, until the
/// member stops answering; returns once at least `crash_after` puts are acknowledged, with the
/// shared list of acknowledgements and the writer handles (still writing).
async fn start_writers(
    client: &Client,
    prefix: &str,
    writers: usize,
    crash_after: usize,
) -> (
    Arc<Mutex<Acknowledged>>,
    Vec<tokio::task::JoinHandle<usize>>,
) {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..writers)
        .map(|writer| {
            let mut kv = client.kv_client();
            let acknowledged = acknowledged.clone();
            let attempts = attempts.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                // Bounded: the member is killed while this runs, and every request has a
                // timeout, so the first failure ends the loop.
                for i in 0.. {
                    let key = format!("{prefix}w{writer}-{i:06}");
                    let value = value_for(&key);
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match kv.put(key.clone(), value.clone(), None).await {
                        Ok(response) => {
                            let revision = response.header().expect("header").revision();
                            acknowledged.lock().unwrap().push((key, value, revision));
                        }
                        Err(_) => return i,
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WRITE_PHASE_TIMEOUT;
    loop {
        if acknowledged.lock().unwrap().len() >= crash_after {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} puts acknowledged within {WRITE_PHASE_TIMEOUT:?} ({} attempted)",
            acknowledged.lock().unwrap().len(),
            attempts.load(Ordering::Relaxed)
        );
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "a writer stopped before the crash: the member refused a put"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (acknowledged, writers)
}

/// Every key under `prefix` the member holds, as key -> (value, create, mod, version).
async fn read_prefix(
    client: &mut Client,
    prefix: &str,
) -> BTreeMap<String, (String, i64, i64, i64)> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("reading back");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9_with_writes_in_flight() {
    survive_kill_9(Cluster::single(), 8).await;
}

/// Many writers share Raft entries (proposal batching), and a snapshot every few entries purges
/// the log behind the state machine, whose commits are only made durable periodically: a crash
/// at any moment must still lose nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batched_puts_survive_kill_9_between_snapshots() {
    // An entry carries at most one put per writer, so the least a round can make is
    // ACKNOWLEDGED_BEFORE_CRASH / WRITERS entries; the snapshot interval stays below that, or a
    // run where batching works well takes no snapshot at all.
    const WRITERS: usize = 64;
    const SNAPSHOT_EVERY: u64 = 3;
    const _: () = assert!(SNAPSHOT_EVERY < (ACKNOWLEDGED_BEFORE_CRASH / WRITERS) as u64);
    let cluster = survive_kill_9(
        Cluster::start(ClusterOptions::new(1).snapshot_count(SNAPSHOT_EVERY)),
        WRITERS,
    )
    .await;
    let snapshot = cluster.member(0).kept_snapshot();
    assert!(
        snapshot.exists(),
        "no snapshot was taken ({}): this test no longer tests what it claims",
        snapshot.display()
    );
}

async fn survive_kill_9(mut cluster: Cluster, writers: usize) -> Cluster {
    let seed = random_u64();
    let mut all_acknowledged: Acknowledged = Vec::new();

    for round in 0..2u64 {
        let crash_after = ACKNOWLEDGED_BEFORE_CRASH + ((seed >> (round * 16)) % 200) as usize;
        eprintln!("round {round}: kill -9 after {crash_after} acknowledged puts (seed {seed})");
        let prefix = format!("round{round}/");
        let client = cluster.member(0).client().await;
        let (acknowledged, writers) = start_writers(&client, &prefix, writers, crash_after).await;

        cluster.member_mut(0).kill9();
        // Writers stop at their first failed put, which the crash causes.
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(90), writer)
                .await
                .expect("a writer did not notice the crash within 90 s")
                .expect("writer task");
        }
        drop(client);
        let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
        assert!(acknowledged.len() >= crash_after);

        cluster.member_mut(0).restart();
        let mut client = cluster.member(0).client().await;
        let stored = read_prefix(&mut client, &prefix).await;
        let mut lost = Vec::new();
        for (key, value, revision) in &acknowledged {
            match stored.get(key) {
                Some(found) if *found == (value.clone(), *revision, *revision, 1) => {}
                other => lost.push(format!(
                    "{key}: acknowledged ({value}, revision {revision}), stored {other:?}"
                )),
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged puts lost or changed after kill -9 (seed {seed}):\n{}",
            lost.len(),
            acknowledged.len(),
            lost.join("\n")
        );
        for (key, (value, create, modified, version)) in &stored {
            assert_eq!(
                *value,
                value_for(key),
                "an unacknowledged put is whole if present"
            );
            assert_eq!((create, version), (modified, &1), "{key}: written once");
        }
        let mut revisions: Vec<i64> = acknowledged.iter().map(|a| a.2).collect();
        revisions.sort_unstable();
        revisions.dedup();
        assert_eq!(revisions.len(), acknowledged.len(), "one revision per put");
        let mut stored_revisions: Vec<i64> = stored.values().map(|s| s.2).collect();
        stored_revisions.sort_unstable();
        stored_revisions.dedup();
        assert_eq!(
            stored_revisions.len(),
            stored.len(),
            "one revision per stored put"
        );

        // Revisions continue after the last durable one.
        let current = client
            .get("x", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        let newest_stored = stored_revisions.last().copied().unwrap_or(0);
        assert!(
            current >= newest_stored && current >= *revisions.last().unwrap(),
            "current revision {current} is behind stored writes (newest {newest_stored})"
        );
        let response = client.put("after-crash", "x", None).await.expect("put");
        assert_header(response.header(), current + 1);

        all_acknowledged.extend(acknowledged);
    }

    // The first round's writes survived the second crash too.
    let mut client = cluster.member(0).client().await;
    let stored = read_prefix(&mut client, "round").await;
    for (key, value, revision) in &all_acknowledged {
        assert_eq!(
            stored.get(key).map(|s| (&s.0, s.2)),
            Some((value, *revision)),
            "{key} (seed {seed})"
        );
    }
    cluster
}

/// openraft stops consensus at a storage error it cannot go on from. The member must not linger
/// with its ports open and no consensus behind them: it exits, saying why, and a restart
/// recovers every write it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_consensus_stops_at_a_storage_error_exits_and_a_restart_recovers() {
    let mut cluster = Cluster::start(ClusterOptions::new(1).snapshot_count(5));
    let mut client = cluster.member(0).client().await;
    let mut acknowledged = Vec::new();
    for round in 0..10 {
        let key = format!("before{round:03}");
        let response = client.put(key.as_str(), "v", None).await.unwrap();
        acknowledged.push((key, response.header().unwrap().revision()));
    }
    // A later snapshot cannot be kept: a directory takes the name its record is written under
    // before it replaces `current`.
    let blocker = cluster
        .member(0)
        .kept_snapshot()
        .with_file_name("current.pending");
    // A save in flight holds the name for a moment (its record, before the rename): try again.
    let mut attempts = 0;
    while let Err(error) = std::fs::create_dir(&blocker) {
        attempts += 1;
        assert!(
            error.kind() == std::io::ErrorKind::AlreadyExists && attempts < 500,
            "the blocking directory: {error}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let writes = async {
        for round in 0..100 {
            let key = format!("k{round:03}");
            match client.put(key.as_str(), "v", None).await {
                Ok(response) => acknowledged.push((key, response.header().unwrap().revision())),
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(WRITE_PHASE_TIMEOUT, writes)
        .await
        .expect("the puts end, acknowledged or refused");

    let status = cluster.member_mut(0).wait_exit(WRITE_PHASE_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{status}");
    let logs = cluster.member(0).logs();
    assert!(logs.contains("consensus stopped"), "{logs}");

    std::fs::remove_dir(&blocker).unwrap();
    cluster.member_mut(0).restart();
    let mut client = cluster.member(0).client().await;
    for (key, revision) in &acknowledged {
        let response = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(
            response.kvs().first().map(|kv| kv.mod_revision()),
            Some(*revision),
            "{key}"
        );
    }
    client.put("after", "the restart", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_the_revision_sequence() {
    let mut cluster = Cluster::single();
    let mut client = cluster.member(0).client().await;
    for i in 0..5 {
        client.put(format!("k{i}"), "v", None).await.unwrap(); // 2..=6
    }
    client.delete("k0", None).await.unwrap(); // 7
    client
        .txn(Txn::new().and_then([TxnOp::put("k1", "v2", None), TxnOp::put("t", "x", None)]))
        .await
        .unwrap(); // 8
    client.compact(4, None).await.unwrap();

    // A clean stop.
    let status = cluster.member_mut(0).terminate();
    assert_eq!(status.code(), Some(0), "{status}");
    cluster.member_mut(0).restart();
    let mut client = cluster.member(0).client().await;
    let response = client.get("k1", None).await.unwrap();
    assert_header(response.header(), 8);
    let kv = &response.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"v2"[..], 3, 8, 2)
    );
    assert!(client.get("k0", None).await.unwrap().kvs().is_empty());
    assert_grpc_error(
        client
            .get("k1", Some(GetOptions::new().with_revision(3)))
            .await,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let response = client
        .get("k1", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(
        response.kvs()[0].value(),
        b"v",
        "history at the compaction point survives"
    );
    let response = client.put("k1", "v3", None).await.unwrap();
    assert_header(response.header(), 9);

    // A crash right after an acknowledged write.
    cluster.member_mut(0).kill9();
    cluster.member_mut(0).restart();
    let mut client = cluster.member(0).client().await;
    let response = client.get("k1", None).await.unwrap();
    assert_header(response.header(), 9);
    assert_eq!(response.kvs()[0].value(), b"v3");
    assert_eq!(response.kvs()[0].version(), 3);
    let response = client.put("k9", "v", None).await.unwrap();
    assert_header(response.header(), 10);
}
