//! etcd's Maintenance API and Bulwark's snapshot commands against real `bulwark` members:
//!
//! - the NOSPACE alarm (`--quota-backend-bytes`): growing writes (puts, txns with puts, lease
//!   grants) fail with `etcdserver: mvcc: database space exceeded` while it is raised, reads,
//!   deletes and compaction keep working, the alarm survives a restart, and `alarm disarm` after
//!   space was freed lets puts in again (etcd's `etcdserver/apply.go` `applierV3Capped`,
//!   `etcdserver/api/v3rpc/quota.go`).
//! - snapshots: `etcdctl snapshot save` and `bulwark snapshot save`, then `bulwark snapshot
//!   restore` and `bulwark serve` give the same keys, history and `HashKV` at the same revision;
//!   `--keep-ca-from` keeps the old identities working; a truncated or corrupted file is refused
//!   with a checksum error and nothing is written.
//! - `Hash` and `HashKV` agree on every member of a cluster; `Status` (`etcdctl endpoint
//!   status`) on a leader and on followers.
//! - online `Defragment`: reads and writes keep working while it runs.
//!
//! No assertion is about speed; every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{assert_grpc_error, retry_unavailable};
use common::json::shape;
use common::{
    etcd_sample_output, free_port, loopback, run_bulwark, Cluster, ClusterOptions, Etcdctl, Member,
    MemberOptions,
};
use etcd_client::{
    AlarmAction, AlarmType, Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp,
};
use serde_json::Value;
use tonic::Code;

/// Bound on waits (an alarm appearing, members converging, a restored member serving).
const DEADLINE: Duration = Duration::from_secs(60);

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

// ---------------------------------------------------------------------------------------------
// NOSPACE

/// The quota of the alarm tests: a few dozen of [`BIG`] values fill it.
const QUOTA: u64 = 1_000_000;
/// A value size that fills [`QUOTA`] in a handful of puts.
const BIG: usize = 100_000;
/// Bound on the puts it takes to fill the quota.
const MAX_FILLING_PUTS: usize = 100;

/// A member with a small `--quota-backend-bytes`, and a client of it.
async fn small_quota_member() -> (Cluster, Client) {
    let cluster = Cluster::init(MemberOptions::default().quota_backend_bytes(QUOTA));
    let client = cluster.member(0).client().await;
    (cluster, client)
}

/// Puts [`BIG`] values under `fill/` until a put is refused; requires that refusal to be etcd's
/// NOSPACE error and returns the keys written before it.
async fn fill_until_nospace(client: &mut Client) -> Vec<String> {
    let value = vec![b'x'; BIG];
    let mut written = Vec::new();
    for index in 0..MAX_FILLING_PUTS {
        let key = format!("fill/{index:03}");
        match client.put(key.as_str(), value.clone(), None).await {
            Ok(_) => written.push(key),
            Err(error) => {
                assert_grpc_error(Err::<(), _>(error), Code::ResourceExhausted, NO_SPACE);
                return written;
            }
        }
    }
    panic!("{MAX_FILLING_PUTS} puts of {BIG} bytes never exceeded a quota of {QUOTA} bytes");
}

/// The (member id, alarm) pairs `Alarm(GET)` lists.
async fn alarms(client: &mut Client) -> Vec<(u64, AlarmType)> {
    client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap_or_else(|e| panic!("alarm list: {e}"))
        .alarms()
        .iter()
        .map(|alarm| (alarm.member_id(), alarm.alarm()))
        .collect()
}

/// Requires every growing write to be refused with NOSPACE.
async fn assert_growing_writes_refused(client: &mut Client) {
    assert_grpc_error(
        client.put("small", "v", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    let txn = Txn::new()
        .when([Compare::version("small", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("small", "v", None)]);
    assert_grpc_error(client.txn(txn).await, Code::ResourceExhausted, NO_SPACE);
    assert_grpc_error(
        client.lease_grant(60, None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nospace_refuses_growing_writes_while_reads_deletes_and_compaction_work() {
    let (mut cluster, mut client) = small_quota_member().await;
    let lease = client.lease_grant(600, None).await.unwrap().id();
    client
        .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let written = fill_until_nospace(&mut client).await;
    assert!(!written.is_empty(), "the quota refused the very first put");
    let id = cluster.id(0);
    assert_eq!(alarms(&mut client).await, [(id, AlarmType::Nospace)]);

    // etcdctl shows the alarm as etcd's etcdctl does, and gets etcd's error.
    let etcdctl = cluster.member(0).etcdctl();
    let listed = etcdctl.run(&["alarm", "list"]);
    assert_eq!(
        listed.assert_success().stdout.trim_end(),
        format!("memberID:{id} alarm:NOSPACE")
    );
    let refused = etcdctl.run(&["put", "small", "v"]);
    assert_eq!(
        refused.assert_failure().stderr_messages().last().copied(),
        Some(format!("Error: {NO_SPACE}").as_str()),
        "{refused}"
    );
    assert_growing_writes_refused(&mut client).await;

    // Every acknowledged put is there; reads, deletes, read-only and deleting txns, revokes
    // and compaction work.
    let all = client
        .get(
            "fill/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let keys: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert_eq!(keys, written);
    let deleted = client.delete(written[0].as_str(), None).await.unwrap();
    assert_eq!(deleted.deleted(), 1);
    let txn = Txn::new()
        .when([Compare::version(written[1].as_str(), CompareOp::Greater, 0)])
        .and_then([
            TxnOp::get(written[1].as_str(), None),
            TxnOp::delete(written[1].as_str(), None),
        ]);
    assert!(client.txn(txn).await.unwrap().succeeded());
    client.lease_revoke(lease).await.unwrap();
    let revision = client.get("leased", None).await.unwrap();
    assert!(revision.kvs().is_empty(), "the revoke deleted the key");
    let current = revision.header().unwrap().revision();
    client.compact(current, None).await.unwrap();

    // The alarm is replicated state: it survives a crash and restart.
    drop(client);
    cluster.kill9(0);
    cluster.restart(0);
    let mut client = cluster.member(0).client().await;
    assert_eq!(alarms(&mut client).await, [(id, AlarmType::Nospace)]);
    assert_growing_writes_refused(&mut client).await;
}

/// etcd's way out of NOSPACE (its maintenance guide): compact, defragment, disarm. The quota
/// is on the database file's size, like etcd's (`backend.Size()` in `etcdserver/quota.go`):
/// compaction frees pages inside the file for reuse, but only Defragment gives them back, so
/// without it the file (here 1.3 MB after every key was deleted and compacted away) stays over
/// the quota.
#[tokio::test(flavor = "multi_thread")]
async fn compaction_defragment_and_disarm_let_puts_in_again() {
    let (cluster, mut client) = small_quota_member().await;
    let written = fill_until_nospace(&mut client).await;
    let deleted = client
        .delete(
            "fill/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted() as usize, written.len());
    let current = deleted.header().unwrap().revision();
    client.compact(current, None).await.unwrap();
    let etcdctl = cluster.member(0).etcdctl();
    let defrag = etcdctl.run(&["defrag"]);
    assert_eq!(
        defrag.assert_success().stdout,
        format!(
            "Finished defragmenting etcd member[{}]\n",
            cluster.member(0).endpoint()
        )
    );
    let size = client.status().await.unwrap().db_size();
    assert!(size < QUOTA as i64, "{size} bytes after the defrag");
    // Still refused until disarmed: the alarm stays until an operator says so.
    assert_growing_writes_refused(&mut client).await;

    let id = cluster.id(0);
    let disarm = etcdctl.run(&["alarm", "disarm"]);
    assert_eq!(
        disarm.assert_success().stdout.trim_end(),
        format!("memberID:{id} alarm:NOSPACE"),
        "etcdctl prints the alarms it disarmed"
    );
    assert!(alarms(&mut client).await.is_empty());
    client.put("small", "v", None).await.unwrap();
    client.lease_grant(60, None).await.unwrap();
    assert!(alarms(&mut client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn disarming_while_over_the_quota_raises_it_again_and_a_larger_quota_lets_puts_in() {
    let (mut cluster, mut client) = small_quota_member().await;
    fill_until_nospace(&mut client).await;
    let id = cluster.id(0);

    // Disarmed with the database still over its quota: the next growing write raises it again.
    let disarm = cluster.member(0).etcdctl().run(&["alarm", "disarm"]);
    disarm.assert_success();
    assert!(alarms(&mut client).await.is_empty());
    assert_grpc_error(
        client.put("small", "v", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    assert_eq!(alarms(&mut client).await, [(id, AlarmType::Nospace)]);

    // The operator's other way out (etcd's too): restart with a larger quota, then disarm.
    drop(client);
    cluster.kill9(0);
    cluster.member_mut(0).options_mut().quota_backend_bytes = Some(QUOTA * 100);
    cluster.restart(0);
    let mut client = cluster.member(0).client().await;
    assert_eq!(
        alarms(&mut client).await,
        [(id, AlarmType::Nospace)],
        "a restart does not clear the alarm"
    );
    assert_growing_writes_refused(&mut client).await;
    cluster
        .member(0)
        .etcdctl()
        .run(&["alarm", "disarm"])
        .assert_success();
    client.put("small", "v", None).await.unwrap();
    assert!(alarms(&mut client).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// A store with some history: puts, an overwrite, a delete, a txn, a lease with keys, a
/// compaction, and writes after it. Returns the lease and the revision at the end.
async fn write_history(client: &mut Client) -> (i64, i64) {
    for (key, value) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "1bis")] {
        client.put(key, value, None).await.unwrap();
    }
    client.delete("c", None).await.unwrap();
    let lease = client.lease_grant(3600, None).await.unwrap().id();
    client
        .put(
            "leased/x",
            "held",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "1bis")])
        .and_then([TxnOp::put("t1", "x", None), TxnOp::put("t2", "y", None)]);
    let compacted = client.txn(txn).await.unwrap().header().unwrap().revision();
    client.compact(compacted - 2, None).await.unwrap();
    client.put("b", "2bis", None).await.unwrap();
    let last = client.put("d", "4", None).await.unwrap();
    (lease, last.header().unwrap().revision())
}

/// `bulwark snapshot restore FILE --data-dir DIR --name NAME --listen-client ...
/// --listen-peer ...` on fresh ports, then `bulwark serve`: the restored member, serving.
fn restore_and_serve(file: &Path, dir: &Path, name: &str, keep_ca_from: Option<&Path>) -> Member {
    let client = loopback(free_port());
    let peer = loopback(free_port());
    let mut args = vec![
        "snapshot".to_string(),
        "restore".to_string(),
        file.display().to_string(),
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--name".to_string(),
        name.to_string(),
        "--listen-client".to_string(),
        client.to_string(),
        "--listen-peer".to_string(),
        peer.to_string(),
    ];
    if let Some(old) = keep_ca_from {
        args.extend(["--keep-ca-from".to_string(), old.display().to_string()]);
    }
    let restored = run_bulwark(&args);
    restored.assert_success();
    assert!(
        restored.stdout.contains(&format!(
            "start it with: bulwark serve --data-dir {}",
            dir.display()
        )),
        "{restored}"
    );
    let mut member = Member::prepared(dir, MemberOptions::default().name(name), client, peer);
    member.restart();
    member
}

/// What a member holds: every key-value with its revisions (`get "" --prefix -w json`), the
/// store revision, and the key-values as of `past` (a historical read).
fn contents(member: &Member, past: i64) -> (Value, i64, Value) {
    let etcdctl = member.etcdctl();
    let now = etcdctl
        .run(&["get", "", "--prefix", "-w", "json"])
        .assert_success()
        .json();
    let then = etcdctl
        .run(&[
            "get",
            "",
            "--prefix",
            "-w",
            "json",
            &format!("--rev={past}"),
        ])
        .assert_success()
        .json();
    (
        now["kvs"].clone(),
        now["header"]["revision"].as_i64().expect("a revision"),
        then["kvs"].clone(),
    )
}

/// `HashKV` at `revision`: (hash, compact revision).
async fn hash_kv(member: &Member, revision: i64) -> (u32, i64) {
    let client = member.client().await;
    let answer = retry_unavailable(DEADLINE, || {
        let mut client = client.clone();
        async move { client.hash_kv(revision).await }
    })
    .await
    .unwrap_or_else(|e| panic!("HashKV at {revision} on {}: {e}", member.name()));
    (answer.hash(), answer.compact_version())
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_save_then_restore_gives_the_same_keys_history_and_hash_kv() {
    let source = Cluster::single();
    let member = source.member(0);
    let mut client = member.client().await;
    let (lease, revision) = write_history(&mut client).await;
    let past = revision - 1;
    let expected = contents(member, past);
    let expected_hash = hash_kv(member, revision).await;
    assert_ne!(expected_hash.1, 0, "the history was compacted");

    let by_etcdctl = source.dir().join("etcdctl.snap");
    let saved = member
        .etcdctl()
        .run(&["snapshot", "save", &by_etcdctl.display().to_string()]);
    assert_eq!(
        saved.assert_success().stdout,
        etcd_sample_output("52-snapshot-save")
            .lines()
            .filter(|line| !line.starts_with('{'))
            .map(|line| line.replace("SNAPSHOT_FILE", &by_etcdctl.display().to_string()) + "\n")
            .collect::<String>()
    );
    let by_bulwark = source.dir().join("bulwark.snap");
    let saved = member.cli(&["snapshot", "save", &by_bulwark.display().to_string()]);
    assert!(
        saved
            .assert_success()
            .stdout
            .ends_with(&format!("Snapshot saved at {}\n", by_bulwark.display())),
        "{saved}"
    );

    for (file, name) in [(&by_etcdctl, "from-etcdctl"), (&by_bulwark, "from-bulwark")] {
        let dir = source.dir().join(name);
        let restored = restore_and_serve(file, &dir, name, None);
        assert_eq!(
            contents(&restored, past),
            expected,
            "{name}: keys and history"
        );
        assert_eq!(hash_kv(&restored, revision).await, expected_hash, "{name}");
        let mut client = restored.client().await;
        let ttl = client
            .lease_time_to_live(
                lease,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        assert_eq!(
            (ttl.granted_ttl(), ttl.keys()),
            (3600, &[b"leased/x".to_vec()][..]),
            "{name}: the lease and its key"
        );
        // A new one-member cluster under the given name and address, continuing the revisions.
        let members = client.member_list().await.unwrap();
        let listed: Vec<(&str, &[String])> = members
            .members()
            .iter()
            .map(|m| (m.name(), m.client_urls()))
            .collect();
        assert_eq!(listed, [(name, &[restored.endpoint()][..])], "{name}");
        let next = client.put("after", "restore", None).await.unwrap();
        assert_eq!(next.header().unwrap().revision(), revision + 1, "{name}");
    }
}

/// A snapshot saved while writers keep writing is the store at one revision: restored, it
/// holds exactly what the source held at that revision (keys and `HashKV`), and that revision
/// covers every write acknowledged before the save began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_saved_during_writes_is_the_store_at_one_revision() {
    let source = Cluster::single();
    let member = source.member(0);
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut writers = Vec::new();
    for writer in 0..2 {
        let mut client = member.client().await;
        let stop = stop.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // New keys, and one key both writers overwrite.
                let key = if n.is_multiple_of(3) {
                    "hot".to_string()
                } else {
                    format!("w{writer}/{n}")
                };
                let put = client
                    .put(key.as_str(), n.to_string(), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e}"));
                acknowledged.fetch_max(put.header().unwrap().revision(), Ordering::SeqCst);
            }
        }));
    }
    let deadline = Instant::now() + DEADLINE;
    while acknowledged.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "the writers never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_save = acknowledged.load(Ordering::SeqCst);
    let file = source.dir().join("busy.snap");
    let path = file.display().to_string();
    let saver = member.etcdctl();
    let saved = tokio::task::spawn_blocking(move || saver.run(&["snapshot", "save", &path]))
        .await
        .unwrap();
    saved.assert_success();
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("a writer failed");
    }

    let restored = restore_and_serve(&file, &source.dir().join("restored"), "restored", None);
    let (kvs, revision, _) = contents(&restored, 1);
    assert!(
        revision >= before_save,
        "the snapshot is at revision {revision}, before the write acknowledged at \
         {before_save} when the save began"
    );
    let at_that_revision = member
        .etcdctl()
        .run(&[
            "get",
            "",
            "--prefix",
            "-w",
            "json",
            &format!("--rev={revision}"),
        ])
        .assert_success()
        .json();
    assert_eq!(
        kvs, at_that_revision["kvs"],
        "the restored keys are not the source's at revision {revision}"
    );
    assert_eq!(
        hash_kv(&restored, revision).await,
        hash_kv(member, revision).await
    );
}

/// The recovery path when a quorum is lost for good: a snapshot saved earlier from a follower of
/// a three-member cluster seeds a new one-member cluster that elects itself and takes writes,
/// with the keys and `HashKV` the cluster had.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_of_a_follower_restores_into_a_one_member_cluster_after_the_quorum_is_lost() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    let mut client = cluster.member(leader).client().await;
    let (_, revision) = write_history(&mut client).await;
    cluster.wait_converged(&[0, 1, 2]);
    let expected = contents(cluster.member(leader), revision - 1);
    let expected_hash = hash_kv(cluster.member(leader), revision).await;

    let file = cluster.dir().join("follower.snap");
    cluster
        .member(follower)
        .etcdctl()
        .run(&["snapshot", "save", &file.display().to_string()])
        .assert_success();
    drop(client);
    for index in 0..3 {
        cluster.kill9(index);
    }

    let restored = restore_and_serve(&file, &cluster.dir().join("recovered"), "recovered", None);
    assert_eq!(contents(&restored, revision - 1), expected);
    assert_eq!(hash_kv(&restored, revision).await, expected_hash);
    let mut client = restored.client().await;
    let members = client.member_list().await.unwrap();
    assert_eq!(
        members.members().len(),
        1,
        "the old members do not carry over: {members:?}"
    );
    let status = client.status().await.unwrap();
    assert_eq!(
        status.leader(),
        status.header().unwrap().member_id(),
        "it leads itself"
    );
    let next = retry_unavailable(DEADLINE, || {
        let mut client = client.clone();
        async move { client.put("after", "recovery", None).await }
    })
    .await
    .unwrap();
    assert_eq!(next.header().unwrap().revision(), revision + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_keeping_the_old_ca_accepts_the_old_identities_and_one_without_refuses_them() {
    let source = Cluster::single();
    let member = source.member(0);
    member.etcdctl().run(&["put", "k", "v"]).assert_success();
    let file = source.dir().join("s.snap");
    member
        .cli(&["snapshot", "save", &file.display().to_string()])
        .assert_success();
    let old_admin = member.admin();

    let kept = restore_and_serve(
        &file,
        &source.dir().join("kept"),
        "kept",
        Some(member.data_dir()),
    );
    let with_old = Etcdctl::new(&kept.endpoint()).tls(&old_admin);
    assert_eq!(
        with_old
            .run(&["get", "k", "--print-value-only"])
            .assert_success()
            .stdout,
        "v\n",
        "the old admin identity works on the restored member"
    );
    assert_eq!(
        kept.etcdctl()
            .run(&["get", "k", "--print-value-only"])
            .assert_success()
            .stdout,
        "v\n",
        "and so does the new one in DIR/admin"
    );

    let fresh = restore_and_serve(&file, &source.dir().join("fresh"), "fresh", None);
    assert_eq!(
        fresh
            .etcdctl()
            .run(&["get", "k", "--print-value-only"])
            .assert_success()
            .stdout,
        "v\n"
    );
    let refused = Etcdctl::new(&fresh.endpoint())
        .tls(&old_admin)
        .timeouts(Duration::from_secs(2), Duration::from_secs(4))
        .run(&["get", "k"]);
    refused.assert_failure();
    assert!(!refused.stdout.contains('v'), "{refused}");
}

/// What `bulwark snapshot restore` of a damaged file must do: fail with a one-line checksum
/// error and leave `dir` as it was (absent, or empty).
#[track_caller]
fn assert_refused(file: &Path, dir: &Path, what: &str) {
    let existed = dir.exists();
    let output = run_bulwark(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &dir.display().to_string(),
    ]);
    output.assert_failure();
    assert!(
        output.stderr.contains("checksum") && output.stderr.trim().lines().count() == 1,
        "{what}: not a one-line checksum error:\n{output}"
    );
    if existed {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(left.is_empty(), "{what}: {} is not empty", dir.display());
    } else {
        assert!(!dir.exists(), "{what}: {} was created", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_or_corrupted_snapshot_is_refused_and_nothing_is_restored() {
    let source = Cluster::single();
    let member = source.member(0);
    let mut client = member.client().await;
    write_history(&mut client).await;
    let good = source.dir().join("good.snap");
    member
        .cli(&["snapshot", "save", &good.display().to_string()])
        .assert_success();
    let bytes = std::fs::read(&good).unwrap();
    assert!(bytes.len() > 600, "{} bytes", bytes.len());

    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [bytes.len() / 2, bytes.len() - 1, 100] {
        damaged.push((format!("cut to {cut} bytes"), bytes[..cut].to_vec()));
    }
    // A byte in the first record (the data), one in the padding, one in the checksum.
    for at in [20, bytes.len() - 40, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        damaged.push((format!("byte {at} flipped"), flipped));
    }
    for (index, (what, content)) in damaged.iter().enumerate() {
        let file = source.dir().join(format!("damaged-{index}.snap"));
        std::fs::write(&file, content).unwrap();
        assert_refused(&file, &source.dir().join(format!("absent-{index}")), what);
        let empty = source.dir().join(format!("empty-{index}"));
        std::fs::create_dir(&empty).unwrap();
        assert_refused(&file, &empty, what);
    }
    // The intact file restores.
    let restored = restore_and_serve(&good, &source.dir().join("restored"), "r", None);
    restored.etcdctl().run(&["get", "a"]).assert_success();
}

/// A snapshot holds every key, and the join tokens: etcdctl writes it readable by its owner
/// only (0600), and so must `bulwark snapshot save`.
#[test]
fn snapshot_save_writes_a_file_only_its_owner_can_read() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    member
        .etcdctl()
        .run(&["put", "secret", "v"])
        .assert_success();
    for (tool, file) in [("etcdctl", "etcdctl.snap"), ("bulwark", "bulwark.snap")] {
        let path = cluster.dir().join(file);
        let path_text = path.display().to_string();
        let output = match tool {
            "etcdctl" => member.etcdctl().run(&["snapshot", "save", &path_text]),
            _ => member.cli(&["snapshot", "save", &path_text]),
        };
        output.assert_success();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{tool} wrote {file} with mode {mode:o}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hash, HashKV and Status on a cluster

/// `etcdctl endpoint status -w json` against every member: one entry each, by member index.
fn statuses(cluster: &Cluster) -> Vec<Value> {
    (0..cluster.len())
        .map(|index| {
            let output = cluster
                .member(index)
                .etcdctl()
                .run(&["endpoint", "status", "-w", "json"])
                .assert_success()
                .json();
            output[0]["Status"].clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_agree_on_hash_kv_and_hash_after_the_same_writes() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    // Writes through every member.
    for index in 0..3 {
        let mut client = cluster.member(index).client().await;
        for n in 0..5 {
            let key = format!("m{index}/{n}");
            retry_unavailable(DEADLINE, || {
                let mut client = client.clone();
                let key = key.clone();
                async move { client.put(key, "v", None).await }
            })
            .await
            .unwrap();
        }
        if index == 1 {
            let lease = client.lease_grant(600, None).await.unwrap().id();
            client
                .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap();
            client
                .delete("m0/", Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .unwrap();
            let now = client
                .get("x", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            client.compact(now - 3, None).await.unwrap();
        }
    }
    let revision = cluster.wait_converged(&[0, 1, 2]);

    let mut hashes = BTreeSet::new();
    for member in cluster.members() {
        hashes.insert(hash_kv(member, revision).await);
    }
    assert_eq!(hashes.len(), 1, "HashKV at {revision} differs: {hashes:?}");
    // etcdctl's view: every endpoint at once.
    let all = cluster
        .etcdctl()
        .run(&[
            "endpoint",
            "hashkv",
            "-w",
            "json",
            &format!("--rev={revision}"),
        ])
        .assert_success()
        .json();
    let from_etcdctl: BTreeSet<u64> = all
        .as_array()
        .expect("one entry per endpoint")
        .iter()
        .map(|entry| entry["HashKV"]["hash"].as_u64().expect("a hash"))
        .collect();
    assert_eq!(from_etcdctl.len(), 1, "{all}");

    // Hash covers the whole store as each member applied it; members that applied the same
    // log agree once nothing is in flight.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut answers = Vec::new();
        for member in cluster.members() {
            let mut client = member.client().await;
            let hash = client.hash().await.unwrap();
            answers.push((hash.hash(), hash.header().unwrap().revision()));
        }
        let distinct: BTreeSet<_> = answers.iter().collect();
        if distinct.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never agreed on Hash: {answers:?}; statuses {:#?}",
            statuses(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn endpoint_status_names_one_leader_on_every_member() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let revision = cluster.wait_converged(&[0, 1, 2]);
    let ids: BTreeSet<u64> = (0..3).map(|index| cluster.id(index)).collect();
    let reference: Value =
        serde_json::from_str(etcd_sample_output("32-endpoint-status-json").trim())
            .expect("sample 32 is JSON");
    let reference_shape = shape(&reference[0]["Status"]);

    let all = statuses(&cluster);
    let leader = all[0]["leader"].as_u64().expect("a leader");
    assert!(ids.contains(&leader), "leader {leader:x} is not a member");
    let mut leaders = 0;
    for (index, status) in all.iter().enumerate() {
        assert_eq!(shape(status), reference_shape, "member {index}: {status}");
        let header = &status["header"];
        assert_eq!(
            header["member_id"].as_u64(),
            Some(cluster.id(index)),
            "{status}"
        );
        assert_eq!(
            header["cluster_id"], all[0]["header"]["cluster_id"],
            "{status}"
        );
        assert_eq!(header["revision"].as_i64(), Some(revision), "{status}");
        assert_eq!(
            status["leader"].as_u64(),
            Some(leader),
            "member {index}: {status}"
        );
        assert_eq!(
            status["raftTerm"], all[0]["raftTerm"],
            "member {index}: {status}"
        );
        assert_eq!(header["raft_term"], status["raftTerm"], "{status}");
        let index_of = |field: &str| status[field].as_u64().expect(field);
        assert!(
            index_of("raftAppliedIndex") <= index_of("raftIndex"),
            "{status}"
        );
        assert!(index_of("raftAppliedIndex") > 0, "{status}");
        let size = |field: &str| status[field].as_i64().expect(field);
        assert!(
            size("dbSize") > 0 && size("dbSizeInUse") <= size("dbSize"),
            "{status}"
        );
        assert!(
            !status["version"].as_str().unwrap_or("").is_empty(),
            "{status}"
        );
        if header["member_id"].as_u64() == Some(leader) {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "{all:#?}");

    // The table etcdctl prints for all endpoints at once: one leader row.
    let table = cluster
        .etcdctl()
        .run(&["endpoint", "status", "-w", "table"])
        .assert_success()
        .stdout
        .clone();
    let rows: Vec<&str> = table
        .lines()
        .filter(|line| line.contains("https://"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    let leader_rows = rows
        .iter()
        .filter(|row| row.split('|').nth(5).map(str::trim) == Some("true"))
        .count();
    assert_eq!(leader_rows, 1, "{table}");
}

// ---------------------------------------------------------------------------------------------
// Defragment

/// Online Defragment: `etcdctl defrag` succeeds while a writer and a reader run against the
/// member, and every one of their requests succeeds (etcd blocks requests during a defrag;
/// Bulwark must not). The history below the revision the defrag started at is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn defragment_keeps_reads_and_writes_working() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let mut client = member.client().await;
    // Fragment the store: many values, most deleted and compacted away.
    let value = vec![b'v'; 4096];
    for index in 0..300 {
        client
            .put(format!("frag/{index:04}"), value.clone(), None)
            .await
            .unwrap();
    }
    let deleted = client
        .delete(
            "frag/0",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let before = deleted.header().unwrap().revision();
    client.compact(before, None).await.unwrap();
    let hash_before = hash_kv(member, before).await;

    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for role in ["writer", "reader"] {
        let mut client = member.client().await;
        let stop = stop.clone();
        let requests = requests.clone();
        loops.push(tokio::spawn(async move {
            let mut last = 0;
            let mut index = 0u64;
            while !stop.load(Ordering::SeqCst) {
                index += 1;
                if role == "writer" {
                    let key = format!("live/{}", index % 50);
                    let answer = client
                        .put(key.as_str(), index.to_string(), None)
                        .await
                        .unwrap_or_else(|e| panic!("put {key} during defrag: {e}"));
                    last = answer.header().unwrap().revision();
                } else {
                    let answer = client
                        .get("live/", Some(GetOptions::new().with_prefix()))
                        .await
                        .unwrap_or_else(|e| panic!("get live/ during defrag: {e}"));
                    let revision = answer.header().unwrap().revision();
                    assert!(
                        revision >= last,
                        "reads went back from {last} to {revision}"
                    );
                    last = revision;
                }
                requests.fetch_add(1, Ordering::SeqCst);
            }
            last
        }));
    }
    // Let both loops get going before the defrag starts.
    let deadline = Instant::now() + DEADLINE;
    while requests.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "the loops never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let etcdctl = member.etcdctl();
    let defrag = tokio::task::spawn_blocking(move || etcdctl.run(&["defrag"]))
        .await
        .unwrap();
    let during = requests.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for handle in loops {
        handle.await.expect("a request failed during the defrag");
    }
    assert_eq!(
        defrag.assert_success().stdout,
        format!(
            "Finished defragmenting etcd member[{}]\n",
            member.endpoint()
        )
    );
    assert!(during > 20, "no requests ran");
    assert_eq!(
        hash_kv(member, before).await,
        hash_before,
        "the defrag changed the history"
    );
    let remaining = client
        .get(
            "frag/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(remaining.count(), 0);
}
