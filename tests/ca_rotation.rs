//! CA rotation with no downtime (`bulwark ca rotate`): a new root cross-signed by the old one;
//! members and renewing clients move to it while writes go on, then the old root is retired and
//! the join tokens change. Nothing fails for a TLS reason along the way; afterwards the old root
//! opens nothing, and the cluster keeps working (restarts, joins) on the new one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::background::Background;
use common::{Cluster, ClusterOptions, Etcdctl, TlsFiles, BULWARK};
use serde_json::Value;

/// Generous bound on a whole rotation (members move within seconds; the grace period is 15 s).
const ROTATION_DEADLINE: Duration = Duration::from_secs(120);
const NEW_ROOT: &str = "Bulwark Root CA 2";

fn issuer_of(pem_path: &Path) -> String {
    let pem = std::fs::read_to_string(pem_path).expect("a certificate file");
    let der = bulwark::pki::first_cert_der(&pem).expect("a certificate");
    bulwark::pki::identity_of(&der).expect("an identity").issuer
}

fn copy_identity(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// The identity in `dir`, read whole: a renewal may be replacing it at this moment (the key
/// first, then the certificate), so a key that does not match its certificate is read again.
fn read_identity(dir: &Path) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let (ca, cert, key) = (read("ca.crt"), read("client.crt"), read("client.key"));
        let pair = bulwark::pki::CertifiedKey {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
        };
        if !ca.is_empty() && bulwark::pki::LiveIdentity::new(&pair).is_ok() {
            return (ca, cert, key);
        }
        assert!(
            Instant::now() < deadline,
            "no consistent identity in {dir:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts through one member in short sessions: each session connects with the identity files as
/// they are now (as any client that reconnects does), writes a few keys and disconnects. Every
/// failure is kept, with its message.
struct Writer {
    done: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_writer(endpoint: String, identity: PathBuf, stop: Arc<AtomicBool>) -> Writer {
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let (done, failures) = (done.clone(), failures.clone());
        async move {
            let mut written = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (ca, cert, key) = read_identity(&identity);
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(10))
                    .with_tls(
                        etcd_client::TlsOptions::new()
                            .ca_certificate(etcd_client::Certificate::from_pem(ca))
                            .identity(etcd_client::Identity::from_pem(cert, key)),
                    );
                let mut client =
                    match etcd_client::Client::connect([endpoint.as_str()], Some(options)).await {
                        Ok(client) => client,
                        Err(error) => {
                            failures.lock().unwrap().push(format!("connect: {error:?}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                for _ in 0..10 {
                    match client.put(format!("rotation/{written}"), "v", None).await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => failures.lock().unwrap().push(format!("put: {error:?}")),
                    }
                    written += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    Writer {
        done,
        failures,
        task,
    }
}

/// Members take a retirement into use within a few seconds of it being recorded. (etcdctl only
/// says that its connection failed; the callers check the member still serves others.)
fn assert_refused_soon(etcdctl: &Etcdctl) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = etcdctl.run(&["get", "k"]);
        if !outcome.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still accepted 30 s after the retirement"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ca_status(cluster: &Cluster, via: usize) -> Value {
    cluster
        .member(via)
        .cli(&["ca", "status", "-w", "json"])
        .assert_success()
        .json()
}

fn token(cluster: &Cluster, role: &str) -> String {
    cluster
        .member(0)
        .cli(&["token", "show", role])
        .assert_success()
        .stdout
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_under_live_writers_fails_no_request_and_retires_the_old_root() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let pids = cluster.pids();
    let old_tokens = (token(&cluster, "manager"), token(&cluster, "client"));
    let dir = common::temp_dir();

    // A client identity kept current by the agent, and a copy of it nobody renews.
    let writer_identity = dir.path().join("writer");
    cluster
        .member(0)
        .cli(&[
            "identity",
            "issue",
            "writer",
            "--out",
            writer_identity.to_str().unwrap(),
        ])
        .assert_success();
    let stale = dir.path().join("stale");
    copy_identity(&writer_identity, &stale);
    let mut agent = Background::spawn({
        let mut command = Command::new(BULWARK);
        command.args(["agent", "--dir", writer_identity.to_str().unwrap()]);
        command
    });

    // One writer through every member: followers forward to the leader over peer TLS too.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<Writer> = cluster
        .members()
        .iter()
        .map(|member| spawn_writer(member.endpoint(), writer_identity.clone(), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Only one rotation at a time. The command renews the identity it runs as (the cluster's
    // admin identity, a copy outside any member's directory).
    let admin = cluster.admin();
    cluster
        .member(1)
        .cli_as(&admin, &["ca", "rotate", "--grace", "15s", "--detach"])
        .assert_success();
    let refused = cluster.member(2).cli(&["ca", "rotate", "--detach"]);
    refused.assert_failure();
    assert!(refused.stderr.contains("in progress"), "{refused}");

    // While rotating: both roots trusted, members move to the new one.
    let started = Instant::now();
    let status = loop {
        assert!(
            started.elapsed() < ROTATION_DEADLINE,
            "the rotation did not finish in {ROTATION_DEADLINE:?}: {}",
            ca_status(&cluster, 0)
        );
        assert!(agent.is_running(), "the agent stopped: {}", agent.output());
        let status = ca_status(&cluster, 0);
        if status["rotation"]["retired_at"].as_i64().unwrap_or(0) != 0 {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let done_at_retirement: Vec<u64> = writers
        .iter()
        .map(|writer| writer.done.load(Ordering::SeqCst))
        .collect();
    // Writes go on after the retirement too (connections on the old root were closed).
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    for (index, writer) in writers.into_iter().enumerate() {
        writer.task.await.expect("writer task");
        let failures = writer.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "writer through member {index} saw {} failure(s), first: {:?}",
            failures.len(),
            failures.first()
        );
        let done = writer.done.load(Ordering::SeqCst);
        assert!(
            done_at_retirement[index] > 0 && done > done_at_retirement[index],
            "writer through member {index} wrote {} before and {done} in all",
            done_at_retirement[index]
        );
    }

    // The end state: one issuing root, the old one retired, every member and the renewed
    // identities on the new root, no member restarted.
    let roots = status["roots"].as_array().expect("roots");
    let state_of = |subject: &str| {
        roots
            .iter()
            .find(|root| root["subject"] == subject)
            .map(|root| root["state"].clone())
    };
    assert_eq!(state_of(NEW_ROOT), Some(Value::from("issuing")), "{status}");
    assert_eq!(
        state_of("Bulwark Root CA"),
        Some(Value::from("retired")),
        "{status}"
    );
    for member in status["members"].as_array().expect("members") {
        assert_eq!(member["issuer"], NEW_ROOT, "{status}");
    }
    assert_eq!(issuer_of(&writer_identity.join("client.crt")), NEW_ROOT);
    assert_eq!(
        issuer_of(&admin.cert),
        NEW_ROOT,
        "`ca rotate` renewed its identity"
    );
    let own_admin = TlsFiles::admin_of(cluster.member(0).data_dir());
    assert_eq!(
        issuer_of(&own_admin.cert),
        NEW_ROOT,
        "the member moved its admin identity"
    );
    let now_pids = cluster.pids();
    assert_eq!(pids, now_pids, "a member restarted");

    // Tokens changed and name the new root.
    let new_digest = roots
        .iter()
        .find(|root| root["subject"] == NEW_ROOT)
        .and_then(|root| root["digest"].as_str())
        .expect("the new root's digest")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_manager = loop {
        let manager = token(&cluster, "manager");
        if manager.contains(&new_digest) && token(&cluster, "client").contains(&new_digest) {
            break manager;
        }
        assert!(
            Instant::now() < deadline,
            "tokens still pin the old root: {manager}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_ne!(new_manager, old_tokens.0);

    // The old root opens nothing: the unrenewed identity is refused by every member.
    for member in cluster.members() {
        assert_refused_soon(&Etcdctl::new(&member.endpoint()).tls(&TlsFiles::client_in(&stale)));
    }
    // A restarted member comes back on the files the rotation wrote.
    cluster.terminate(2);
    cluster.restart(2);
    cluster.wait_voter(2);
    cluster
        .etcdctl()
        .run(&["put", "after-restart", "v"])
        .assert_success();
    // The old manager token is refused; the new one admits a member.
    let dir_old = dir.path().join("with-old-token");
    let refused = common::run_bulwark(&[
        "join",
        "--data-dir",
        dir_old.to_str().unwrap(),
        "--token",
        &old_tokens.0,
        "--peer",
        &cluster.member(0).peer_addr().to_string(),
        "--listen-client",
        "127.0.0.1:0",
        "--listen-peer",
        "127.0.0.1:0",
    ]);
    refused.assert_failure();
    cluster.refresh_token();
    let joined = cluster.join("m3");
    cluster.wait_voter(joined);
    cluster
        .member(joined)
        .etcdctl()
        .run(&["get", "after-restart"])
        .assert_success();
    // `bulwark status` shows every member, one leader, and the certificate each presents.
    let status = cluster
        .member(1)
        .cli(&["status", "-w", "json"])
        .assert_success()
        .json();
    let rows = status.as_array().expect("a row per member");
    assert_eq!(rows.len(), 4, "{status}");
    let leaders = rows
        .iter()
        .filter(|row| row["status"]["is_leader"] == true)
        .count();
    assert_eq!(leaders, 1, "{status}");
    for row in rows {
        assert_eq!(row["certificate"]["issuer"], NEW_ROOT, "{status}");
        assert!(
            row["certificate"]["seconds_left"].as_u64().unwrap() > 0,
            "{status}"
        );
    }
    agent.kill9();
}

/// A member joins halfway through a rotation with a token that still pins the old root; `ca
/// rotate` (without `--detach`) follows a rotation to its end; a second rotation moves on from the
/// first.
#[test]
fn members_join_mid_rotation_and_rotations_follow_each_other() {
    let mut cluster = Cluster::start(ClusterOptions::new(1));
    let dir = common::temp_dir();
    let ops = dir.path().join("ops");
    cluster
        .member(0)
        .cli(&["identity", "issue", "ops", "--out", ops.to_str().unwrap()])
        .assert_success();
    let ops_files = TlsFiles::client_in(&ops);
    // `ops` is not an admin: it cannot rotate.
    cluster
        .member(0)
        .cli_as(&ops_files, &["ca", "rotate", "--grace", "0s"])
        .assert_failure();

    // As the cluster's admin identity (a copy outside the member), which the command renews.
    cluster
        .member(0)
        .cli_as(
            &cluster.admin(),
            &["ca", "rotate", "--grace", "20s", "--detach"],
        )
        .assert_success();
    let joined = cluster.join("m1");
    let started = Instant::now();
    while ca_status(&cluster, 0)["rotation"]["retired_at"].as_i64() == Some(0) {
        assert!(
            started.elapsed() < ROTATION_DEADLINE,
            "the rotation did not finish: {}",
            ca_status(&cluster, 0)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let member_cert = cluster.member(joined).data_dir().join("pki/member.crt");
    assert_eq!(issuer_of(&member_cert), NEW_ROOT);
    // Not renewed and not an agent's: `ops` is refused now.
    assert_refused_soon(&Etcdctl::new(&cluster.member(0).endpoint()).tls(&ops_files));

    let again = cluster.member(1).cli(&["ca", "rotate", "--grace", "0s"]);
    again.assert_success();
    assert!(again.stdout.contains("retired"), "{again}");
    let status = ca_status(&cluster, 0);
    assert_eq!(status["rotation"]["generation"], 3, "{status}");
    assert_eq!(
        status["roots"][0]["subject"], "Bulwark Root CA 3",
        "{status}"
    );
    for member in status["members"].as_array().expect("members") {
        assert_eq!(member["issuer"], "Bulwark Root CA 3", "{status}");
    }
    cluster.etcdctl().run(&["put", "k", "v"]).assert_success();
}

/// A certificate signed with the cluster's CA key outside the cluster (a leaked key) chains to a
/// trusted root but is in no registry: the client port refuses it, while identities the cluster
/// issued keep working.
#[test]
fn a_certificate_the_cluster_never_issued_is_refused_on_the_client_port() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let pki = member.data_dir().join("pki");
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).expect("a CA file");
    let leaked = bulwark::pki::ClusterCa::from_pem(&read("ca.crt"), &read("ca.key")).unwrap();
    let dir = common::temp_dir();
    let forged = dir.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    let identity = leaked
        .issue_client("root", Duration::from_secs(3600))
        .unwrap();
    std::fs::write(forged.join("ca.crt"), leaked.cert_pem()).unwrap();
    std::fs::write(forged.join("client.crt"), &identity.cert_pem).unwrap();
    std::fs::write(forged.join("client.key"), &identity.key_pem).unwrap();

    Etcdctl::new(&member.endpoint())
        .tls(&TlsFiles::client_in(&forged))
        .run(&["get", "k"])
        .assert_failure();
    member.etcdctl().run(&["put", "k", "v"]).assert_success();
}
