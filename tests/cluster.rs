//! Multi-member clusters as operators meet them: joining with the manager token, reads and writes
//! on any member, the peer port's refusals, the etcd Cluster API, and failures (a killed leader,
//! a follower that needs a snapshot, a lost disk, no quorum, a paused leader, network
//! partitions and slow links through the proxy).
//!
//! Raft, section numbers of the extended paper (Ongaro & Ousterhout, 2014): leader election
//! (5.2) and the election restriction (5.4.1) are what "a new leader, no acknowledged write
//! lost" checks; log compaction (7) what the snapshot test checks; membership changes (6) the
//! add/remove tests; linearizable reads (8) the reads on followers and on a cut-off leader.
//!
//! Every cluster uses short Raft timings (`--heartbeat-interval 50 --election-timeout 500`).
//! Nothing here asserts how fast anything happens: every wait has a generous deadline, and a
//! deadline missed is "it never happened". A request whose outcome is unknown (a timeout, a
//! member killed under it) is never counted as done or as not done.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark::proto::bulwarkpb::join_client::JoinClient;
use bulwark::proto::bulwarkpb::peer_client::PeerClient;
use bulwark::proto::bulwarkpb::{FetchCaRequest, ReadIndexRequest};
use common::client::{assert_grpc_error, status_of};
use common::proxy::{Fault, Network};
use common::raw::{assert_raw_tls_refused, client_config, identity_config};
use common::{free_port, loopback, run_bulwark, temp_dir, Cluster, ClusterOptions, TlsFiles};
use etcd_client::{Client, Compare, CompareOp, GetOptions, GetResponse, Txn, TxnOp};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;

/// Bound on a request that must fail (no quorum, a cut-off leader): the server answers
/// `Unavailable` within its own ~10 s; past this, it hung.
const MUST_FAIL_WITHIN: Duration = Duration::from_secs(40);
/// Bound on asking again a linearizable read answered `Unavailable`.
const READ_RETRY_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on the writers reaching a number of acknowledged writes.
const WRITE_PHASE_DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Member ids as etcdctl takes them.
fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// Puts `key` through `client`; returns the revision of the write.
async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    client
        .put(key, value, None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
        .header()
        .expect("a response header")
        .revision()
}

/// A linearizable read through `client`. A read answered `Unavailable` proved nothing either
/// way, so it is asked again (bounded): under load, a heartbeat round slower than the heartbeat
/// interval makes a healthy leader answer "no leader" (see
/// `writes_and_reads_succeed_when_every_peer_link_is_slower_than_a_heartbeat`). An answer is
/// never retried: whatever a successful read returns is what the test checks.
async fn read(client: &mut Client, key: &str, options: Option<GetOptions>) -> GetResponse {
    let deadline = tokio::time::Instant::now() + READ_RETRY_DEADLINE;
    loop {
        match client.get(key, options.clone()).await {
            Ok(response) => return response,
            Err(error)
                if status_of(&error).is_some_and(|s| s.code() == Code::Unavailable)
                    && tokio::time::Instant::now() < deadline =>
            {
                eprintln!("linearizable read of {key} answered {error}; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("get {key}: {error}"),
        }
    }
}

/// `key`'s (value, mod revision) in a linearizable read through `client`, `None` if absent.
async fn get(client: &mut Client, key: &str) -> Option<(String, i64)> {
    let response = read(client, key, None).await;
    response.kvs().first().map(|kv| {
        (
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.mod_revision(),
        )
    })
}

/// A client of every member, by index.
async fn clients(cluster: &Cluster) -> Vec<Client> {
    let mut clients = Vec::new();
    for member in cluster.members() {
        clients.push(member.client().await);
    }
    clients
}

/// Runs `future`, failing the test if it has not finished within `bound` (a hung request).
async fn bounded<T>(
    what: &str,
    bound: Duration,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {bound:?}"))
}

/// Panics unless `result` is etcd's answer without a quorum: `Unavailable` with "no leader" or
/// "request timed out".
#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, etcd_client::Error>) {
    let error = match result {
        Ok(value) => panic!("{what} succeeded without a quorum: {value:?}"),
        Err(error) => error,
    };
    let status = status_of(&error)
        .unwrap_or_else(|| panic!("{what}: expected a gRPC Unavailable, got {error:?}"));
    assert!(
        status.code() == Code::Unavailable
            && ["etcdserver: no leader", "etcdserver: request timed out"]
                .contains(&status.message()),
        "{what}: expected Unavailable \"etcdserver: no leader\" or \"etcdserver: request timed \
         out\", got {status:?}"
    );
}

/// The token's parts: (CA digest, secret).
fn token_parts(token: &str) -> (String, String) {
    let rest = token.strip_prefix("BWTKN-1-").expect("a BWTKN-1 token");
    let (digest, secret) = rest.split_once('-').expect("DIGEST-SECRET");
    (digest.to_string(), secret.to_string())
}

/// `bulwark join` that is expected to be refused: a fresh directory, fresh ports.
fn refused_join(token: &str, peer: SocketAddr, data_dir: &Path) -> common::Output {
    let output = run_bulwark(&[
        "join",
        "--data-dir",
        &data_dir.display().to_string(),
        "--token",
        token,
        "--peer",
        &peer.to_string(),
        "--name",
        "intruder",
        "--listen-client",
        &loopback(free_port()).to_string(),
        "--listen-peer",
        &loopback(free_port()).to_string(),
    ]);
    output.assert_failure();
    assert!(
        !data_dir.join("member.toml").exists(),
        "a refused join left a member behind in {}",
        data_dir.display()
    );
    output
}

/// A `bulwarkpb.Peer` client of `addr` trusting `ca` and presenting `identity`, or no
/// certificate.
fn peer_client(addr: SocketAddr, ca: &Path, identity: Option<&TlsFiles>) -> PeerClient<Channel> {
    let config = client_config(
        ca,
        identity.map(|files| (files.cert.as_path(), files.key.as_path())),
    );
    PeerClient::new(bulwark::raft::network::tls_channel(
        &addr.to_string(),
        config,
    ))
}

/// `bulwarkpb.Peer/ReadIndex` on `addr` as `identity` (or without a certificate).
async fn read_index(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<&TlsFiles>,
) -> Result<u64, tonic::Status> {
    let mut client = peer_client(addr, ca, identity);
    let mut request = tonic::Request::new(ReadIndexRequest {});
    request.set_timeout(Duration::from_secs(20));
    bounded("ReadIndex", MUST_FAIL_WITHIN, client.read_index(request))
        .await
        .map(|response| response.into_inner().index)
}

/// Whether a tonic call failed below gRPC (the connection was refused or closed, as after a
/// refused handshake) rather than being answered by a service.
fn is_transport_refusal(status: &tonic::Status) -> bool {
    let from_transport = std::error::Error::source(status)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    from_transport || status.message() == "transport error"
}

#[track_caller]
fn assert_status(result: Result<u64, tonic::Status>, code: Code, what: &str) {
    match result {
        Ok(index) => panic!("{what}: expected {code:?}, got a read index {index}"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

/// An acknowledged put: key and the revision the server answered.
type Acknowledged = Vec<(String, i64)>;

/// Concurrent writers, two per member, putting distinct keys under a prefix until stopped. A put
/// that fails is unknown: the writer moves on to its next key and never reuses that one.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Acknowledged>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(cluster: &Cluster, prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for index in 0..cluster.len() {
            for lane in 0..2 {
                let mut client = cluster.member(index).client().await;
                let stop = stop.clone();
                let acknowledged = acknowledged.clone();
                let prefix = format!("{prefix}m{index}-w{lane}-");
                tasks.push(tokio::spawn(async move {
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("{prefix}{sequence:06}");
                        sequence += 1;
                        match client.put(key.as_str(), value_of(&key), None).await {
                            Ok(response) => {
                                let revision = response.header().expect("header").revision();
                                acknowledged.lock().unwrap().push((key, revision));
                            }
                            // Unknown outcome (member down, no leader): try the next key later.
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }));
            }
        }
        Writers {
            stop,
            acknowledged,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until at least `count` puts are acknowledged in all.
    async fn wait_for(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + WRITE_PHASE_DEADLINE;
        while self.count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} puts acknowledged within {WRITE_PHASE_DEADLINE:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every writer (each finishes its request in flight, bounded by the client's
    /// timeout) and returns the acknowledged puts.
    async fn stop(self) -> Acknowledged {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            bounded("stopping a writer", MUST_FAIL_WITHIN, task)
                .await
                .expect("writer task");
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        acknowledged
    }
}

/// Every acknowledged put is held by the member behind `client` (linearizable read), with its
/// value and at the revision acknowledged; no two acknowledgements share a revision.
async fn assert_nothing_lost(client: &mut Client, prefix: &str, acknowledged: &Acknowledged) {
    let response = read(client, prefix, Some(GetOptions::new().with_prefix())).await;
    let held: BTreeMap<String, (String, i64)> = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect();
    for (key, revision) in acknowledged {
        let (value, mod_revision) = held
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged put {key} (revision {revision}) was lost"));
        assert_eq!(value, &value_of(key), "value of {key}");
        assert_eq!(mod_revision, revision, "mod revision of {key}");
    }
    let revisions: BTreeSet<i64> = acknowledged.iter().map(|(_, revision)| *revision).collect();
    assert_eq!(
        revisions.len(),
        acknowledged.len(),
        "two acknowledged puts share a revision"
    );
}

// ---------------------------------------------------------------------------------------------
// The proxy itself, proven before cluster tests rely on it

/// The proxy recognises which member opened a connection, and applies each fault to the right
/// direction: pass, delay (never earlier than the delay), blackhole (held, then delivered on
/// heal), drop (open connections closed, new ones closed at once); faults never apply to a
/// connection from an unknown process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_applies_each_fault_to_one_direction_of_one_link() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    // An echo server stands in for a member; this test process is the other member.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = socket.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    let network = Network::start();
    let (me, _) = network.add_node();
    let (server, proxy) = network.add_node();
    let my_pid = Arc::new(AtomicU32::new(std::process::id()));
    network.set_member(me, loopback(free_port()), my_pid.clone());
    network.set_member(server, echo_addr, Arc::new(AtomicU32::new(0)));

    const QUIET: Duration = Duration::from_millis(500);
    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        stream.write_all(bytes).await.unwrap();
        let mut answer = vec![0u8; bytes.len()];
        bounded(
            "echo",
            Duration::from_secs(20),
            stream.read_exact(&mut answer),
        )
        .await
        .expect("the echo");
        answer
    }
    /// Whether the peer closed the connection (EOF or reset) within the bound.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    let mut stream = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"pass").await, b"pass");

    let delay = Duration::from_millis(300);
    network.set_link(me, server, Fault::Delay(delay));
    let started = std::time::Instant::now();
    assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
    assert!(
        started.elapsed() >= delay,
        "a delayed link delivered early: {:?}",
        started.elapsed()
    );
    network.heal();

    // Only the answers are held: the request direction still passes.
    network.set_link(server, me, Fault::Blackhole);
    stream.write_all(b"held").await.unwrap();
    let mut answer = [0u8; 4];
    assert!(
        tokio::time::timeout(QUIET, stream.read_exact(&mut answer))
            .await
            .is_err(),
        "a blackholed direction delivered bytes"
    );
    network.heal();
    bounded(
        "held bytes",
        Duration::from_secs(20),
        stream.read_exact(&mut answer),
    )
    .await
    .expect("the held answer");
    assert_eq!(&answer, b"held");

    network.set_link(me, server, Fault::Drop);
    assert!(
        closed(&mut stream).await,
        "an open connection survived a drop"
    );
    let mut again = TcpStream::connect(proxy).await.unwrap();
    assert!(closed(&mut again).await, "a new connection survived a drop");

    // A process the proxy does not know is never subject to faults.
    network.set_member(me, loopback(free_port()), Arc::new(AtomicU32::new(0)));
    let mut unknown = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(round_trip(&mut unknown, b"anon").await, b"anon");
}

// ---------------------------------------------------------------------------------------------
// Joining

#[test]
fn three_members_join_with_the_manager_token_and_all_become_voters() {
    let cluster = Cluster::start(ClusterOptions::new(3));

    // The token pins the cluster CA: BWTKN-1-<sha256 of the CA certificate's DER>-<secret>.
    let (digest, secret) = token_parts(&cluster.token());
    let ca_pem = std::fs::read(&cluster.admin().ca).unwrap();
    let ca_der = CertificateDer::from_pem_slice(&ca_pem).expect("the CA certificate");
    assert_eq!(digest, hex_bytes(&Sha256::digest(&ca_der)));
    assert!(!secret.is_empty());

    let ids: BTreeSet<u64> = (0..3).map(|index| cluster.id(index)).collect();
    assert_eq!(ids.len(), 3, "three distinct member ids");
    for via in 0..3 {
        let list = cluster.member_list(via);
        let members = list["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "member {via} lists {list}");
        for index in 0..3 {
            let member = cluster.member(index);
            let entry = members
                .iter()
                .find(|entry| entry["ID"].as_u64() == Some(cluster.id(index)))
                .unwrap_or_else(|| panic!("member {via} does not list member {index}: {list}"));
            assert_eq!(entry["name"], json!(member.name()), "{list}");
            assert_eq!(
                entry["peerURLs"],
                json!([format!("https://{}", member.advertised_peer_addr())]),
                "{list}"
            );
            assert_eq!(entry["clientURLs"], json!([member.endpoint()]), "{list}");
            assert!(!entry["isLearner"].as_bool().unwrap_or(false), "{list}");
        }
    }

    let leader = cluster.wait_leader(&[0, 1, 2]);
    let statuses: Vec<_> = (0..3)
        .map(|index| cluster.status(index).expect("a status"))
        .collect();
    for status in &statuses {
        assert!(!status.is_learner, "{statuses:#?}");
        assert_eq!(status.leader, cluster.id(leader), "{statuses:#?}");
        assert_eq!(status.term, statuses[0].term, "{statuses:#?}");
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_join_token_with_a_wrong_secret_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let before = cluster.membership(0);
    let (digest, secret) = token_parts(&cluster.token());
    let wrong_secret: String = secret
        .chars()
        .map(|c| if c == 'a' { 'b' } else { 'a' })
        .collect();
    let wrong = format!("BWTKN-1-{digest}-{wrong_secret}");
    let dir = temp_dir();
    // Through every member: followers redirect to the leader, which checks the secret.
    for via in 0..3 {
        let output = refused_join(
            &wrong,
            cluster.member(via).advertised_peer_addr(),
            &dir.path().join(format!("joiner-{via}")),
        );
        assert!(
            output.stderr.contains("invalid join token"),
            "the refusal must say the token is invalid:\n{output}"
        );
    }
    for via in 0..3 {
        assert_eq!(
            cluster.membership(via),
            before,
            "member {via}'s membership changed"
        );
    }
}

#[test]
fn a_token_pinning_another_ca_aborts_the_join_before_asking() {
    let cluster = Cluster::start(ClusterOptions::new(1));
    let other = Cluster::start(ClusterOptions::new(1));
    let before = cluster.membership(0);
    let (_, our_secret) = token_parts(&cluster.token());
    let (their_digest, _) = token_parts(&other.token());
    let dir = temp_dir();
    // Their CA's digest with our secret: only the pinning can refuse it; and their whole token.
    for (what, token) in [
        (
            "their digest, our secret",
            format!("BWTKN-1-{their_digest}-{our_secret}"),
        ),
        ("their token", other.token()),
    ] {
        let output = refused_join(
            &token,
            cluster.member(0).advertised_peer_addr(),
            &dir.path().join(what.replace([' ', ','], "-")),
        );
        assert!(
            output.stderr.contains("does not match the token"),
            "{what}: the refusal must name the CA mismatch:\n{output}"
        );
    }
    assert_eq!(cluster.membership(0), before);
    let logs = cluster.member(0).logs();
    assert!(
        !logs.contains("refused a join") && !logs.contains("admitted a member"),
        "the joiner sent its request after the CA did not match:\n{logs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reads and writes on any member

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_a_follower_is_read_linearizably_on_every_member() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let mut clients = clients(&cluster).await;
    let mut last_revision = None;
    for writer in cluster.others(leader) {
        for round in 0..3 {
            let key = format!("k-{writer}-{round}");
            let value = format!("written on member {writer}");
            let revision = put(&mut clients[writer], &key, &value).await;
            if let Some(last) = last_revision {
                assert_eq!(revision, last + 1, "one write, one revision");
            }
            last_revision = Some(revision);
            // Acknowledged means visible: no retry, on every member at once.
            for (reader, client) in clients.iter_mut().enumerate() {
                assert_eq!(
                    get(client, &key).await,
                    Some((value.clone(), revision)),
                    "member {reader} does not see {key}, acknowledged by member {writer} at \
                     revision {revision}"
                );
            }
        }
    }
    let follower = cluster.others(leader)[0];
    let txn = Txn::new()
        .when([Compare::value(
            format!("k-{follower}-0"),
            CompareOp::Equal,
            format!("written on member {follower}"),
        )])
        .and_then([
            TxnOp::put("txn", "through a follower", None),
            TxnOp::delete(format!("k-{follower}-1"), None),
        ]);
    let response = clients[follower].txn(txn).await.expect("txn on a follower");
    assert!(response.succeeded());
    for (reader, client) in clients.iter_mut().enumerate() {
        assert_eq!(
            get(client, "txn").await.map(|(value, _)| value),
            Some("through a follower".to_string()),
            "member {reader}"
        );
        assert_eq!(
            get(client, &format!("k-{follower}-1")).await,
            None,
            "member {reader}"
        );
    }
}

/// etcd answers a write on the member that took it only once that member applied it, so a
/// client reads its own write there even serializably. Concurrent writers make the follower
/// forward several writes in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_a_follower_is_answered_once_that_follower_applied_it() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = cluster.member(follower).client().await;
        writers.push(tokio::spawn(async move {
            for round in 0..25 {
                let key = format!("own-{writer}-{round}");
                let revision = put(&mut client, &key, "v").await;
                let response = client
                    .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                    .await
                    .unwrap_or_else(|e| panic!("serializable get {key}: {e}"));
                let kv = response.kvs().first().unwrap_or_else(|| {
                    panic!("{key}, acknowledged at revision {revision}, is not on its member")
                });
                assert_eq!(kv.mod_revision(), revision, "{key}");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
}

// ---------------------------------------------------------------------------------------------
// The peer port

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_serves_members_only() {
    let cluster = Cluster::start(ClusterOptions::new(1));
    let other = Cluster::single();
    let member = cluster.member(0);
    let peer = member.advertised_peer_addr();
    let ours = TlsFiles::member_of(member.data_dir());
    let admin = cluster.admin();

    // A member certificate is served (the control).
    read_index(peer, &ours.ca, Some(&ours))
        .await
        .expect("ReadIndex with a member certificate");
    // A client certificate of the cluster: the handshake passes, the call does not.
    let result = read_index(peer, &ours.ca, Some(&admin)).await;
    assert_status(result, Code::PermissionDenied, "the admin identity");
    // No certificate: only the Join service answers.
    let result = read_index(peer, &ours.ca, None).await;
    assert_status(result, Code::Unauthenticated, "no certificate");
    let config = client_config(&ours.ca, None);
    let mut join = JoinClient::new(bulwark::raft::network::tls_channel(
        &peer.to_string(),
        config,
    ));
    let ca = bounded(
        "FetchCa",
        MUST_FAIL_WITHIN,
        join.fetch_ca(FetchCaRequest {}),
    )
    .await
    .expect("FetchCa without a certificate")
    .into_inner()
    .ca_cert_pem;
    assert_eq!(ca, std::fs::read_to_string(&ours.ca).unwrap());

    // Another cluster's certificates are refused at the handshake.
    let theirs = TlsFiles::member_of(other.member(0).data_dir());
    for (what, files) in [
        ("another cluster's member certificate", &theirs),
        (
            "another cluster's admin certificate",
            &other.member(0).admin(),
        ),
    ] {
        let foreign = TlsFiles {
            ca: ours.ca.clone(),
            cert: files.cert.clone(),
            key: files.key.clone(),
        };
        assert_raw_tls_refused(peer, identity_config(&foreign)).await;
        let result = read_index(peer, &ours.ca, Some(&foreign)).await;
        match result {
            Ok(index) => panic!("{what}: served a read index {index}"),
            Err(status) => assert!(
                is_transport_refusal(&status),
                "{what}: the handshake should have failed, the call was answered: {status:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Cluster API

#[test]
fn member_add_registers_a_member_that_join_adopts() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];

    // A learner on purpose, added through a follower.
    let reservation = cluster.reserve_peer_address();
    let url = format!("https://{}", reservation.advertised);
    let added = cluster
        .member(follower)
        .etcdctl()
        .run(&[
            "member",
            "add",
            "m3",
            "--peer-urls",
            &url,
            "--learner",
            "-w",
            "json",
        ])
        .assert_success()
        .json();
    let id = added["member"]["ID"]
        .as_u64()
        .unwrap_or_else(|| panic!("{added}"));
    assert_eq!(added["member"]["isLearner"], json!(true), "{added}");
    assert!(
        cluster
            .membership(leader)
            .contains(&(id, String::new(), true)),
        "an added member is an unnamed learner until it joins: {:?}",
        cluster.membership(leader)
    );
    let learner = cluster.join_reserved("m3", reservation);
    assert_eq!(
        cluster.id(learner),
        id,
        "the join adopted the registered member"
    );
    // It catches up...
    cluster
        .member(leader)
        .etcdctl()
        .run(&["put", "after-m3", "v"])
        .assert_success();
    cluster.wait_converged(&[0, 1, 2, learner]);
    // ...and stays a learner, as added: give the leader's promoter a few rounds to be wrong.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        cluster
            .membership(leader)
            .contains(&(id, "m3".to_string(), true)),
        "a learner added on purpose must stay a learner: {:?}",
        cluster.membership(leader)
    );
    assert!(cluster.status(learner).expect("status").is_learner);
    cluster
        .member(follower)
        .etcdctl()
        .run(&["member", "promote", &hex(id)])
        .assert_success();
    cluster.wait_voter(learner);

    // A voter to be: joins as a learner and is promoted once caught up.
    let reservation = cluster.reserve_peer_address();
    let url = format!("https://{}", reservation.advertised);
    let added = cluster
        .member(leader)
        .etcdctl()
        .run(&["member", "add", "m4", "--peer-urls", &url, "-w", "json"])
        .assert_success()
        .json();
    let id = added["member"]["ID"]
        .as_u64()
        .unwrap_or_else(|| panic!("{added}"));
    let voter = cluster.join_reserved("m4", reservation);
    assert_eq!(
        cluster.id(voter),
        id,
        "the join adopted the registered member"
    );
    cluster.wait_voter(voter);

    let names: Vec<(String, bool)> = cluster
        .membership(voter)
        .into_iter()
        .map(|(_, name, learner)| (name, learner))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        names,
        ["m0", "m1", "m2", "m3", "m4"].map(|name| (name.to_string(), false))
    );
}

/// A join that arrives while another membership change is being committed must wait for it,
/// not be refused. The harness first met this as a race: join m1, wait until `member list`
/// shows it as a voter, join m2, and the leader, still committing m1's promotion (joint, then
/// final configuration, section 6), refused m2 with "the cluster is already undergoing a
/// configuration change". Here the window is held open: m2's promotion cannot commit while
/// m1's acknowledgements are held, and m3 joins meanwhile.
#[test]
fn a_join_during_another_membership_change_waits_for_it() {
    let mut cluster = Cluster::start(ClusterOptions::new(2).proxied());
    let leader = cluster.wait_leader(&[0, 1]);
    let follower = 1 - leader;
    let network = cluster.network_handle();
    // m2 joins, but the leader's appends to it are held: it stays an unpromoted learner.
    let reservation = cluster.reserve_peer_address();
    let m2_node = reservation.node().expect("a proxied member");
    network.set_link(cluster.node(leader), m2_node, Fault::Blackhole);
    let m2 = cluster.join_reserved("m2", reservation);
    // Its promotion needs a majority of {m0, m1}: hold m1's acknowledgements, then let m2
    // catch up. The leader proposes the promotion, which cannot commit.
    cluster.set_link(follower, leader, Fault::Blackhole);
    network.set_link(cluster.node(leader), m2_node, Fault::Pass);
    cluster.wait_voter(m2); // m2 holds the joint configuration, not committed
    let held = (cluster.node(follower), cluster.node(leader));
    let healer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        network.set_link(held.0, held.1, Fault::Pass);
    });
    let m3 = cluster.try_join("m3");
    healer.join().unwrap();
    let m3 = m3.unwrap_or_else(|text| {
        panic!("a join during another membership change was refused:\n{text}")
    });
    cluster.wait_voter(m3);
    assert_eq!(cluster.membership(leader).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_errors_are_etcds() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    let before = cluster.membership(leader);
    let known: BTreeSet<u64> = before.iter().map(|(id, _, _)| *id).collect();
    let unknown = (1u64..).find(|id| !known.contains(id)).unwrap();
    let taken = format!(
        "https://{}",
        cluster.member(follower).advertised_peer_addr()
    );

    for via in [leader, follower] {
        let mut client = cluster.member(via).client().await;
        for voter in [leader, follower] {
            assert_grpc_error(
                client.member_promote(cluster.id(voter)).await,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            );
        }
        assert_grpc_error(
            client.member_remove(unknown).await,
            Code::NotFound,
            "etcdserver: member not found",
        );
        assert_grpc_error(
            client.member_promote(unknown).await,
            Code::NotFound,
            "etcdserver: member not found",
        );
        assert_grpc_error(
            client
                .member_update(unknown, vec![format!("https://{}", loopback(free_port()))])
                .await,
            Code::NotFound,
            "etcdserver: member not found",
        );
        assert_grpc_error(
            client.member_add([taken.as_str()], None).await,
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        );
    }
    // etcdctl shows the same messages.
    let output = cluster
        .member(follower)
        .etcdctl()
        .run(&["member", "remove", &hex(unknown)]);
    output.assert_failure();
    assert!(
        output.stderr.contains("etcdserver: member not found"),
        "{output}"
    );
    for via in 0..3 {
        assert_eq!(
            cluster.membership(via),
            before,
            "member {via}'s membership changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_is_refused_by_every_member_and_the_rest_keep_writing() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let victim = cluster.others(leader)[0];
    let rest = cluster.others(victim);
    let bystander = *rest.iter().find(|index| **index != leader).unwrap();
    let victim_id = cluster.id(victim);
    let mut victim_client = cluster.member(victim).client().await;
    put(&mut victim_client, "before-removal", "v").await;

    // Removed through the other follower (forwarded to the leader).
    cluster
        .member(bystander)
        .etcdctl()
        .run(&["member", "remove", &hex(victim_id)])
        .assert_success();
    for via in &rest {
        let ids: BTreeSet<u64> = cluster.membership(*via).iter().map(|m| m.0).collect();
        assert!(
            !ids.contains(&victim_id),
            "member {via} still lists the removed member"
        );
    }

    // Its certificate is on the deny list: every remaining member refuses its peer calls,
    // at the handshake or with PermissionDenied.
    let victim_identity = TlsFiles::member_of(cluster.member(victim).data_dir());
    for via in &rest {
        let result = read_index(
            cluster.member(*via).advertised_peer_addr(),
            &victim_identity.ca,
            Some(&victim_identity),
        )
        .await;
        match result {
            Ok(index) => panic!("member {via} served the removed member a read index {index}"),
            Err(status) if status.code() == Code::PermissionDenied => assert_eq!(
                status.message(),
                "this member was removed from the cluster",
                "member {via}"
            ),
            Err(status) => assert!(
                is_transport_refusal(&status),
                "member {via}: expected a refusal, got {status:?}"
            ),
        }
    }

    // The rest keep committing while the removed member times out and campaigns: its votes
    // are refused, so they never disturb the leader.
    let mut rest_clients = Vec::new();
    for via in &rest {
        rest_clients.push(cluster.member(*via).client().await);
    }
    for round in 0..20 {
        let count = rest_clients.len();
        let client = &mut rest_clients[round % count];
        put(client, &format!("after-removal-{round}"), "v").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The removed member cannot commit anything.
    let result = bounded(
        "a put through the removed member",
        MUST_FAIL_WITHIN,
        victim_client.put("from-the-removed", "x", None),
    )
    .await;
    assert!(
        result.is_err(),
        "a removed member acknowledged a write: {result:?}"
    );
    for client in &mut rest_clients {
        assert_eq!(get(client, "from-the-removed").await, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Crashes and recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let old = cluster.wait_leader(&[0, 1, 2]);
    let writers = Writers::start(&cluster, "k/").await;
    writers.wait_for(60).await;

    cluster.kill9(old);
    let survivors = cluster.others(old);
    let new = cluster.wait_leader(&survivors);
    assert_ne!(new, old);
    let acknowledged_at_crash = writers.count();
    writers.wait_for(acknowledged_at_crash + 60).await;
    let acknowledged = writers.stop().await;

    for survivor in &survivors {
        let mut client = cluster.member(*survivor).client().await;
        assert_nothing_lost(&mut client, "k/", &acknowledged).await;
    }
    // The old leader comes back as a follower with the same history.
    cluster.restart(old);
    cluster.wait_leader(&[0, 1, 2]);
    cluster.wait_converged(&[0, 1, 2]);
    let mut client = cluster.member(old).client().await;
    assert_nothing_lost(&mut client, "k/", &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_after_the_log_was_compacted_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(ClusterOptions::new(3).snapshot_count(20));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    let mut client = cluster.member(leader).client().await;
    put(&mut client, "before", "the crash").await;

    cluster.kill9(follower);
    // Well past several snapshots: the entries the follower misses are purged from the log. The
    // values make the snapshot larger than openraft's 3 MiB chunks, so it is sent in several.
    let padding = "x".repeat(32 * 1024);
    for round in 0..150 {
        let key = format!("key-{:02}", round % 40);
        put(&mut client, &key, &format!("round {round} {padding}")).await;
        if round % 10 == 9 {
            client
                .delete(format!("key-{:02}", (round + 1) % 40), None)
                .await
                .expect("delete");
        }
    }
    let snapshot = cluster.member(leader).kept_snapshot();
    assert!(
        snapshot.exists(),
        "--snapshot-count 20 made no snapshot on the leader ({})",
        snapshot.display()
    );
    let largest_data_file = std::fs::read_dir(snapshot.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0);
    assert!(
        largest_data_file > 3 * 1024 * 1024,
        "a snapshot of {largest_data_file} bytes goes in one chunk: this test no longer tests \
         what it claims"
    );

    // openraft says at info level when a follower installs a snapshot from the leader.
    cluster.member_mut(follower).options_mut().log_filter = Some("info".to_string());
    cluster.restart(follower);
    let revision = cluster.wait_converged(&[0, 1, 2]);
    assert!(revision > 150, "revision {revision}");
    let logs = cluster.member(follower).logs();
    assert!(
        logs.contains("install_full_snapshot"),
        "the follower caught up without installing a snapshot: this test no longer tests what \
         it claims (was the log purged behind the leader's snapshots?)"
    );
    let mut follower_client = cluster.member(follower).client().await;
    assert_eq!(
        get(&mut follower_client, "before")
            .await
            .map(|(value, _)| value),
        Some("the crash".to_string())
    );
    // And it takes part again: a write through it commits and is read everywhere.
    let revision = put(&mut follower_client, "after", "restart").await;
    assert_eq!(
        get(&mut client, "after").await,
        Some(("restart".to_string(), revision))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_its_data_is_removed_and_joins_again() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let victim = cluster.others(leader)[0];
    let mut client = cluster.member(leader).client().await;
    for round in 0..10 {
        put(&mut client, &format!("before-{round}"), "v").await;
    }
    let old_id = cluster.id(victim);

    cluster.wipe(victim);
    cluster
        .member(leader)
        .etcdctl()
        .run(&["member", "remove", &hex(old_id)])
        .assert_success();
    cluster.rejoin(victim);

    let new_id = cluster.id(victim);
    assert_ne!(new_id, old_id, "a re-joined member is a new member");
    for via in 0..3 {
        let membership = cluster.membership(via);
        assert_eq!(membership.len(), 3, "member {via}: {membership:?}");
        assert!(
            membership
                .iter()
                .all(|(id, _, learner)| *id != old_id && !learner),
            "member {via}: {membership:?}"
        );
    }
    cluster.wait_converged(&[0, 1, 2]);
    let mut rejoined = cluster.member(victim).client().await;
    let revision = put(&mut rejoined, "after-rejoin", "v").await;
    assert_eq!(
        get(&mut client, "after-rejoin").await,
        Some(("v".to_string(), revision))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_left_without_a_quorum_answers_unavailable_and_recovers() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let followers = cluster.others(leader);
    let survivor = followers[0];
    let mut client = cluster.member(survivor).client().await;
    put(&mut client, "before", "v").await;

    cluster.kill9(leader);
    cluster.kill9(followers[1]);
    let result = bounded("a put", MUST_FAIL_WITHIN, client.put("during", "x", None)).await;
    assert_unavailable("a put on a follower without a quorum", result);
    let result = bounded("a read", MUST_FAIL_WITHIN, client.get("before", None)).await;
    assert_unavailable("a linearizable read on a follower without a quorum", result);
    // A serializable read is local: it is still served.
    let response = client
        .get("before", Some(GetOptions::new().with_serializable()))
        .await
        .expect("a serializable read without a quorum");
    assert_eq!(response.kvs()[0].value(), b"v");

    cluster.restart(leader);
    cluster.restart(followers[1]);
    cluster.wait_leader(&[0, 1, 2]);
    put(&mut client, "after", "v").await;
    assert_eq!(
        get(&mut client, "before").await.map(|(value, _)| value),
        Some("v".to_string())
    );
    cluster.wait_converged(&[0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_left_without_a_quorum_answers_unavailable_and_recovers() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let mut client = cluster.member(leader).client().await;
    put(&mut client, "before", "v").await;

    let followers = cluster.others(leader);
    for follower in &followers {
        cluster.kill9(*follower);
    }
    let result = bounded("a put", MUST_FAIL_WITHIN, client.put("alone", "x", None)).await;
    assert_unavailable("a put on a leader without a quorum", result);
    let result = bounded("a read", MUST_FAIL_WITHIN, client.get("before", None)).await;
    assert_unavailable("a linearizable read on a leader without a quorum", result);
    let response = client
        .get("before", Some(GetOptions::new().with_serializable()))
        .await
        .expect("a serializable read without a quorum");
    assert_eq!(response.kvs()[0].value(), b"v");

    for follower in &followers {
        cluster.restart(*follower);
    }
    cluster.wait_leader(&[0, 1, 2]);
    put(&mut client, "recovered", "v").await;
    cluster.wait_converged(&[0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_is_replaced_and_follows_once_resumed() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let old = cluster.wait_leader(&[0, 1, 2]);
    let writers = Writers::start(&cluster, "p/").await;
    writers.wait_for(30).await;

    cluster.pause(old);
    let majority = cluster.others(old);
    cluster.wait_leader(&majority);
    let acknowledged_at_pause = writers.count();
    writers.wait_for(acknowledged_at_pause + 40).await;
    cluster.resume(old);

    cluster.wait_leader(&[0, 1, 2]);
    let acknowledged = writers.stop().await;
    cluster.wait_converged(&[0, 1, 2]);
    for index in 0..3 {
        let mut client = cluster.member(index).client().await;
        assert_nothing_lost(&mut client, "p/", &acknowledged).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Network faults (through the proxy)

/// A three-member cluster whose leader was cut off from the others while a put of `isolated`
/// was on its way to it, and the leader the others elected instead.
struct CutOff {
    old: usize,
    majority: Vec<usize>,
    new: usize,
    old_client: Client,
    new_client: Client,
    isolated_write: tokio::task::JoinHandle<Result<etcd_client::PutResponse, etcd_client::Error>>,
}

async fn cut_off_the_leader_with_a_write_in_flight(cluster: &Cluster) -> CutOff {
    let old = cluster.wait_leader(&[0, 1, 2]);
    let majority = cluster.others(old);
    let mut old_client = cluster.member(old).client().await;
    put(&mut old_client, "before", "the partition").await;

    cluster.isolate(old);
    // Client traffic is not proxied: the client still reaches the cut-off leader.
    let mut writer = old_client.clone();
    let isolated_write = tokio::spawn(async move { writer.put("isolated", "x", None).await });
    let new = cluster.wait_leader(&majority);
    let new_client = cluster.member(new).client().await;
    CutOff {
        old,
        majority,
        new,
        old_client,
        new_client,
        isolated_write,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_majority_is_replaced_and_commits_nothing() {
    let cluster = Cluster::start(ClusterOptions::new(3).proxied());
    let CutOff {
        majority,
        new,
        mut old_client,
        mut new_client,
        isolated_write,
        ..
    } = cut_off_the_leader_with_a_write_in_flight(&cluster).await;
    let revision = put(&mut new_client, "majority", "after the partition").await;
    let other = *majority.iter().find(|index| **index != new).unwrap();
    let mut other_client = cluster.member(other).client().await;
    assert_eq!(
        get(&mut other_client, "majority").await,
        Some(("after the partition".to_string(), revision))
    );

    // The old leader must neither acknowledge a write nor serve a stale linearizable read.
    let written = bounded("the isolated put", MUST_FAIL_WITHIN, isolated_write)
        .await
        .expect("the writer task");
    assert!(
        written.is_err(),
        "a leader cut off from the majority acknowledged a write: {written:?}"
    );
    let read = bounded(
        "a read on the cut-off leader",
        MUST_FAIL_WITHIN,
        old_client.get("majority", None),
    )
    .await;
    if let Ok(response) = &read {
        assert!(
            !response.kvs().is_empty(),
            "stale read: the cut-off leader answered a linearizable read without the majority's \
             write at revision {revision}"
        );
    }

    cluster.heal();
    cluster.wait_leader(&[0, 1, 2]);
    cluster.wait_converged(&[0, 1, 2]);
    assert_eq!(
        get(&mut old_client, "majority").await,
        Some(("after the partition".to_string(), revision))
    );
}

/// A leader cut off with a write in consensus is replaced and comes back before the write's
/// request times out. The new leader's log deletes the entry holding the write. That entry's
/// outcome is unknown to the member (in a larger cluster another member holding it could still
/// be elected and commit it), so the write must not be proposed again through the new leader,
/// which could apply it twice: the client gets etcd's unknown-outcome answer, and here, where
/// the entry never left the cut-off member, the write is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_deleted_from_a_cut_off_leaders_log_is_answered_unknown_not_written_again() {
    let cluster = Cluster::start(ClusterOptions::new(3).proxied());
    let CutOff {
        mut new_client,
        isolated_write,
        ..
    } = cut_off_the_leader_with_a_write_in_flight(&cluster).await;
    put(&mut new_client, "majority", "after the partition").await;
    cluster.heal();

    let written = bounded("the isolated put", MUST_FAIL_WITHIN, isolated_write)
        .await
        .expect("the writer task");
    let error = written.expect_err("a write only the cut-off leader held was acknowledged");
    let status = status_of(&error).unwrap_or_else(|| panic!("not a gRPC status: {error:?}"));
    // "leader changed" when the new leader's log reached the member within the request's time
    // (as in every run so far); "request timed out" if it came later.
    assert!(
        status.code() == Code::Unavailable
            && [
                "etcdserver: leader changed",
                "etcdserver: request timed out"
            ]
            .contains(&status.message()),
        "{status:?}"
    );
    cluster.wait_leader(&[0, 1, 2]);
    cluster.wait_converged(&[0, 1, 2]);
    for index in 0..3 {
        let mut client = cluster.member(index).client().await;
        assert_eq!(get(&mut client, "isolated").await, None, "member {index}");
    }
}

/// A leader cut off with a write in consensus is replaced, and comes back through a snapshot (the
/// majority wrote far past its snapshot interval meanwhile). The entry holding that write was
/// never on the majority. If openraft finds it conflicting with the new leader's log, the write
/// is answered "leader changed"; if the snapshot covers past it, openraft drops it unanswered,
/// and the member gives it up after the request timeout. Either
/// way the member's next writes, queued behind that entry (one entry in consensus at a time),
/// must go through, and a write it acknowledged must be on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_brought_back_by_a_snapshot_takes_writes_again() {
    let mut options = ClusterOptions::new(3).proxied().snapshot_count(20);
    // openraft says at info level when a member installs a snapshot from the leader.
    options.member = options.member.log_filter("info");
    let cluster = Cluster::start(options);
    let CutOff {
        old,
        mut old_client,
        mut new_client,
        isolated_write,
        ..
    } = cut_off_the_leader_with_a_write_in_flight(&cluster).await;
    // Several snapshot intervals, and past the 20 entries a snapshot keeps behind it.
    for round in 0..100 {
        put(&mut new_client, &format!("majority-{round:03}"), "v").await;
    }
    cluster.heal();
    let mut next_writer = old_client.clone();
    let next_write = tokio::spawn(async move { next_writer.put("after", "the heal", None).await });

    let written = bounded("the isolated put", MUST_FAIL_WITHIN, isolated_write)
        .await
        .expect("the writer task");
    let next = bounded("the put after the heal", MUST_FAIL_WITHIN, next_write)
        .await
        .expect("the writer task");
    // Queued behind the given-up entry, it may itself have timed out; a later one goes through.
    if next.is_err() {
        bounded(
            "a put after the heal",
            MUST_FAIL_WITHIN,
            put(&mut old_client, "after", "the heal"),
        )
        .await;
    }
    cluster.wait_leader(&[0, 1, 2]);
    cluster.wait_converged(&[0, 1, 2]);
    assert!(
        cluster.member(old).logs().contains("install_full_snapshot"),
        "the old leader caught up without installing a snapshot: this test no longer tests what \
         it claims"
    );
    let acknowledged = written.ok().map(|response| {
        (
            "x".to_string(),
            response.header().expect("a header").revision(),
        )
    });
    for index in 0..3 {
        let mut client = cluster.member(index).client().await;
        if acknowledged.is_some() {
            assert_eq!(
                get(&mut client, "isolated").await,
                acknowledged,
                "member {index}"
            );
        }
        assert_eq!(
            get(&mut client, "after").await.map(|(value, _)| value),
            Some("the heal".to_string()),
            "member {index}"
        );
    }
}

/// A follower behind slow links (100 ms round trips, within the 200 ms heartbeat interval this
/// cluster uses: links slower than a heartbeat are the subject of
/// `writes_and_reads_succeed_when_every_peer_link_is_slower_than_a_heartbeat`), then behind links that drop
/// every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_slow_then_dropped_links_keeps_up_and_converges() {
    let cluster = Cluster::start(ClusterOptions::new(3).raft_timings(200, 2000).proxied());
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let follower = cluster.others(leader)[0];
    let mut follower_client = cluster.member(follower).client().await;
    let mut leader_client = cluster.member(leader).client().await;

    // Slow links: forwarded writes and read-index reads still work, just later.
    cluster.set_links_of(follower, Fault::Delay(Duration::from_millis(50)));
    for round in 0..5 {
        let key = format!("slow-{round}");
        let revision = put(&mut follower_client, &key, "v").await;
        assert_eq!(
            get(&mut follower_client, &key).await,
            Some(("v".to_string(), revision))
        );
        assert_eq!(
            get(&mut leader_client, &key).await,
            Some(("v".to_string(), revision))
        );
    }

    // Dropped links: the other two are a quorum and keep writing.
    cluster.set_links_of(follower, Fault::Drop);
    for round in 0..30 {
        put(&mut leader_client, &format!("dropped-{round}"), "v").await;
    }

    cluster.heal();
    cluster.wait_converged(&[0, 1, 2]);
    assert_eq!(
        get(&mut follower_client, "dropped-29")
            .await
            .map(|(value, _)| value),
        Some("v".to_string())
    );
}

/// Links slower than a heartbeat but well within the election timeout (50 ms heartbeats,
/// 200 ms round trips, 500 ms election timeout): leadership is stable, since heartbeats keep
/// arriving, and a linearizable read and a write must both succeed, later than on a fast
/// network but surely.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_reads_succeed_when_every_peer_link_is_slower_than_a_heartbeat() {
    let cluster = Cluster::start(ClusterOptions::new(3).proxied());
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let mut client = cluster.member(leader).client().await;
    put(&mut client, "before", "v").await;
    for index in 0..3 {
        cluster.set_links_of(index, Fault::Delay(Duration::from_millis(100)));
    }
    let read = bounded("a read", MUST_FAIL_WITHIN, client.get("before", None)).await;
    let write = bounded("a put", MUST_FAIL_WITHIN, client.put("slow", "v", None)).await;
    if read.is_err() || write.is_err() {
        let statuses: Vec<_> = (0..3).map(|index| cluster.status(index)).collect();
        panic!(
            "over 200 ms round trips:\n  linearizable read: {:?}\n  put: {:?}\nstatuses (is the \
             commit index stuck?): {statuses:#?}",
            read.map(|_| ()),
            write.map(|_| ())
        );
    }
    cluster.heal();
    cluster.wait_converged(&[0, 1, 2]);
}

/// The serial of the member certificate in a member's directory.
fn member_cert_serial(member: &common::Member) -> String {
    let pem = std::fs::read(member.data_dir().join("pki/member.crt")).expect("member.crt");
    let der = CertificateDer::from_pem_slice(&pem).expect("a PEM certificate");
    bulwark::pki::identity_of(der.as_ref())
        .expect("a member certificate")
        .serial_hex
}

/// `bulwark ca update --cert-ttl 20s`: every member renews its certificate by itself (at once,
/// since its 90-day one outlives the new lifetime, then again at 50-80 % of 20 s), without a
/// restart, while a client keeps writing through every member and no request fails; the
/// renewed certificates are the ones presented, recorded, and listed by `ca status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_renew_their_certificates_by_themselves_while_writes_go_on() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let pids = cluster.pids();
    let first: Vec<String> = cluster.members().iter().map(member_cert_serial).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for index in 0..3 {
        let mut client = cluster.member(index).client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            while !stop.load(Ordering::SeqCst) {
                client
                    .put(format!("renewal/{index}/{written}"), "v", None)
                    .await
                    .unwrap_or_else(|e| panic!("a put through member {index} failed: {e}"));
                written += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        }));
    }

    cluster
        .member(0)
        .cli(&["ca", "update", "--cert-ttl", "20s"])
        .assert_success();
    // Two renewals each: the immediate one and a scheduled one. Generous bound: 20 s
    // lifetimes renew within 16 s each.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<BTreeSet<String>> =
        first.iter().map(|s| BTreeSet::from([s.clone()])).collect();
    while seen.iter().any(|serials| serials.len() < 3) {
        assert!(
            std::time::Instant::now() < deadline,
            "members did not renew twice within 120 s: {seen:?}"
        );
        for (index, member) in cluster.members().iter().enumerate() {
            seen[index].insert(member_cert_serial(member));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        assert!(writer.await.expect("writer") > 0, "a writer wrote nothing");
    }

    let now_pids = cluster.pids();
    assert_eq!(pids, now_pids, "a member restarted");
    let status = cluster
        .member(1)
        .cli(&["ca", "status", "-w", "json"])
        .assert_success()
        .json();
    assert_eq!(status["member_cert_ttl_seconds"], json!(20));
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    for member in members {
        let left = member["not_after"].as_i64().unwrap() - bulwark::identities::now_unix();
        assert!(
            left <= 20,
            "a member still shows a long-lived certificate: {status}"
        );
        assert_eq!(member["state"], json!("valid"), "{status}");
    }
    // New connections see the renewed certificates: a fresh client on every member works.
    for index in 0..3 {
        put(
            &mut cluster.member(index).client().await,
            "after-renewal",
            "v",
        )
        .await;
    }
}
