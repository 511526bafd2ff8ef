//! Client identities and their lifecycle (issue 4) as operators meet them: `bulwark login` with
//! the client join token, `bulwark identity issue|list|revoke`, `bulwark token show|rotate`, and
//! what the identities they hand out can do against real members.
//!
//! - Login: the token pins the CA (another CA's digest aborts before the secret or a CSR is
//!   sent, and nothing is written); a wrong secret, the manager token, and the admin's name are
//!   refused; the files written work with etcdctl and `etcd-client`; existing files are never
//!   overwritten. The certificate is read with x509-parser, not with Bulwark's own code.
//! - Tokens: a rotated token is refused at once by every member (login reads linearizably);
//!   identities and members admitted before keep working.
//! - Revocation: every member refuses the identity at its next handshake, and its open
//!   connections (a watch, a loop of reads) are cut; other identities are untouched.
//! - Only the admin identity manages identities and tokens: not a client, not a member
//!   certificate.
//! - Every member holds the CA key: issuing keeps working after the first member is removed.
//!
//! One test is ignored until the server is fixed (the bug is described on it): removing the
//! leader denies its certificate before the membership change has committed.
//!
//! A client certificate on the peer port is covered by `cluster::the_peer_port_serves_members_only`
//! (the admin identity is a client certificate; the peer service checks the role, not the name).
//!
//! Every wait has a generous deadline: the server sweeps open connections every second, and
//! followers apply a revocation a heartbeat after the leader; nothing here asserts how fast.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::client::{connect, next_watch_response};
use common::proxy::Fault;
use common::raw::{assert_raw_tls_refused, identity_config};
use common::{
    run_bulwark, temp_dir, Cluster, ClusterOptions, Etcdctl, Member, MemberOptions, Origin, Output,
    PeerAddress, TlsFiles,
};
use etcd_client::{Client, GetOptions, WatchOptions, WatchStream, Watcher};
use serde_json::Value;

/// Bound on a revocation reaching every member and every open connection: never a speed
/// assertion.
const REVOCATION_DEADLINE: Duration = Duration::from_secs(30);
/// etcdctl retries a refused handshake until its command timeout: keep it short.
const REFUSED_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on an etcd-client request that must fail or succeed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

const PERMISSION_DENIED: &str = "etcdserver: permission denied";
const CA_MISMATCH: &str = "does not match the token's digest";
const INVALID_TOKEN: &str = "invalid join token";
const CLIENT_OU: &str = "bulwark-client";
/// The lifetime of a client identity without `--ttl`: 90 days.
const DEFAULT_CLIENT_TTL: i64 = 90 * 86_400;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `bulwark login --token TOKEN --peer PEER --name NAME --out OUT`.
fn login(token: &str, peer: SocketAddr, name: &str, out: &Path) -> Output {
    run_bulwark(&[
        "login",
        "--token",
        token,
        "--peer",
        &peer.to_string(),
        "--name",
        name,
        "--out",
        &out.display().to_string(),
    ])
}

/// Logs in as `name` through `member`'s peer port; returns the identity written in `out`.
fn logged_in(member: &Member, token: &str, name: &str, out: &Path) -> TlsFiles {
    login(token, member.advertised_peer_addr(), name, out).assert_success();
    TlsFiles::client_in(out)
}

/// A login expected to be refused: fails, says `reason`, and writes nothing at all.
#[track_caller]
fn assert_login_refused(token: &str, peer: SocketAddr, name: &str, out: &Path, reason: &str) {
    let output = login(token, peer, name, out);
    output.assert_failure();
    assert!(
        output.stderr.contains(reason),
        "the refusal must say {reason:?}:\n{output}"
    );
    assert!(
        !out.exists(),
        "a refused login created {}:\n{output}",
        out.display()
    );
}

/// `bulwark identity issue NAME [ARGS] --out OUT` through `member` with the admin identity.
fn issued(member: &Member, name: &str, args: &[&str], out: &Path) -> TlsFiles {
    let out_arg = out.display().to_string();
    let mut all = vec!["identity", "issue", name, "--out", &out_arg];
    all.extend_from_slice(args);
    member.cli(&all).assert_success();
    TlsFiles::client_in(out)
}

/// `bulwark token show ROLE` with the admin identity.
fn token(member: &Member, role: &str) -> String {
    let output = member.cli(&["token", "show", role]);
    output.assert_success();
    let token = output.stdout.trim().to_string();
    assert!(token.starts_with("BWTKN-1-"), "not a join token:\n{output}");
    token
}

/// A token's `BWTKN-1-<CA digest>` and its secret.
fn token_parts(token: &str) -> (&str, &str) {
    token.rsplit_once('-').expect("BWTKN-1-DIGEST-SECRET")
}

/// `bulwark identity list -w json` with the admin identity.
fn identity_list(member: &Member) -> Vec<Value> {
    let list = member
        .cli(&["identity", "list", "-w", "json"])
        .assert_success()
        .json();
    list.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {list}"))
        .clone()
}

/// The listed entry of certificate `serial`.
#[track_caller]
fn entry<'a>(list: &'a [Value], serial: &str) -> &'a Value {
    list.iter()
        .find(|entry| entry["serial"] == serial)
        .unwrap_or_else(|| panic!("serial {serial} is not listed: {list:#?}"))
}

/// The states listed for the certificates named `name`.
fn states_of(list: &[Value], name: &str) -> Vec<String> {
    list.iter()
        .filter(|entry| entry["name"] == name)
        .map(|entry| entry["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Every file in `dir` with its contents.
fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// What the tests check in a certificate, read with x509-parser.
#[derive(Debug)]
struct Certificate {
    common_names: Vec<String>,
    units: Vec<String>,
    organizations: Vec<String>,
    /// Lowercase hex, as `identity list` shows it.
    serial: String,
    /// Seconds since the Unix epoch.
    not_after: i64,
}

fn read_certificate(path: &Path) -> Certificate {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .unwrap_or_else(|e| panic!("{}: not PEM: {e}", path.display()));
    let cert = pem
        .parse_x509()
        .unwrap_or_else(|e| panic!("{}: not a certificate: {e}", path.display()));
    let strings = |values: Vec<&x509_parser::x509::AttributeTypeAndValue>| -> Vec<String> {
        values
            .into_iter()
            .map(|value| value.as_str().expect("a string attribute").to_string())
            .collect()
    };
    let subject = cert.subject();
    Certificate {
        common_names: strings(subject.iter_common_name().collect()),
        units: strings(subject.iter_organizational_unit().collect()),
        organizations: strings(subject.iter_organization().collect()),
        serial: hex(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `identity list`'s EXPIRES column: RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .expect("a representable time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats as RFC 3339")
}

/// etcdctl against `member` as `identity`.
fn etcdctl_as(member: &Member, identity: &TlsFiles) -> Etcdctl {
    Etcdctl::new(&member.endpoint()).tls(identity)
}

/// `identity` writes and reads a key on `member` with etcdctl.
#[track_caller]
fn assert_accepted(member: &Member, identity: &TlsFiles, key: &str) {
    let etcdctl = etcdctl_as(member, identity);
    assert_eq!(
        etcdctl.run(&["put", key, "v"]).assert_success().stdout,
        "OK\n"
    );
    assert_eq!(
        etcdctl.run(&["get", key]).assert_success().stdout,
        format!("{key}\nv\n")
    );
}

/// Waits until `member` refuses a new connection of `identity` (a member applies a revocation
/// when the entry reaches it), then checks that every client is refused: etcd-client, etcdctl,
/// a raw handshake; and that the refused puts wrote nothing.
async fn assert_refused_by(member: &Member, identity: &TlsFiles, what: &str) {
    let refusal = |request: &str| format!("member {}: {request} with {what}", member.name());
    let fresh_put = |key: String| async move {
        let mut client = connect(&member.endpoint(), identity).await;
        tokio::time::timeout(REQUEST_DEADLINE, client.put(key, "v", None))
            .await
            .unwrap_or_else(|_| panic!("{} hung", refusal("an etcd-client put")))
    };
    let key = format!("refused/{}", member.name());
    let deadline = Instant::now() + REVOCATION_DEADLINE;
    while fresh_put(key.clone()).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{} still succeeds {REVOCATION_DEADLINE:?} after the revocation",
            refusal("a new connection")
        );
        member.etcdctl().run(&["del", &key]).assert_success();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = etcdctl_as(member, identity)
        .timeouts(REFUSED_TIMEOUT, REFUSED_TIMEOUT)
        .run(&["put", &key, "v"]);
    assert!(!output.success(), "{}:\n{output}", refusal("etcdctl"));
    assert_raw_tls_refused(member.client_addr(), identity_config(identity)).await;
    let left = member.etcdctl().run(&["get", &key, "--print-value-only"]);
    assert_eq!(
        left.assert_success().stdout,
        "",
        "a refused put wrote {key}"
    );
}

/// Opens a watch on `prefix`; bounded. Keep the watcher: it holds the request side open.
async fn open_watch(client: &Client, prefix: &str) -> (Watcher, WatchStream) {
    let options = WatchOptions::new().with_prefix();
    tokio::time::timeout(
        REQUEST_DEADLINE,
        client.watch_client().watch(prefix, Some(options)),
    )
    .await
    .unwrap_or_else(|_| panic!("watch {prefix} not created within {REQUEST_DEADLINE:?}"))
    .unwrap_or_else(|e| panic!("watch {prefix}: {e}"))
}

/// Reads `stream` until it ends or fails; panics if it still runs after the deadline.
async fn assert_watch_cut(mut stream: WatchStream, what: &str) {
    let ended = tokio::time::timeout(REVOCATION_DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "{what}: the watch stream of a revoked identity is still open after \
         {REVOCATION_DEADLINE:?}"
    );
}

/// Reads a key in a loop on `client`'s open connection, counting the reads, until one fails;
/// a failure before `revoked` is set fails the test.
fn spawn_reader(
    mut client: Client,
    reads: Arc<AtomicUsize>,
    revoked: Arc<AtomicBool>,
    what: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let read = client
                .get("alice/probe", Some(GetOptions::new().with_serializable()))
                .await;
            match read {
                Ok(_) => {
                    reads.fetch_add(1, Ordering::SeqCst);
                }
                Err(error) => {
                    assert!(
                        revoked.load(Ordering::SeqCst),
                        "{what}: a read failed before the revocation: {error}"
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Login

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_writes_an_identity_that_etcdctl_and_etcd_client_use() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let dir = temp_dir();
    let out = dir.path().join("identities/alice");

    let before = now_unix();
    let output = login(
        &token(member, "client"),
        member.advertised_peer_addr(),
        "alice",
        &out,
    );
    let after = now_unix();
    output.assert_success();
    assert!(
        output.stdout.contains("etcdctl --cacert="),
        "login prints how to use the identity:\n{output}"
    );
    let alice = TlsFiles::client_in(&out);

    // The files: only their owner may read them, in a directory only its owner may enter.
    assert_eq!(mode(&out), 0o700, "the identity directory");
    for file in [&alice.ca, &alice.cert, &alice.key] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(
        fs::read(&alice.ca).unwrap(),
        fs::read(member.data_dir().join("pki/ca.crt")).unwrap(),
        "ca.crt is the cluster's CA"
    );
    let key = fs::read_to_string(&alice.key).unwrap();
    assert!(key.contains("PRIVATE KEY-----"), "client.key: {key}");

    // The certificate: CN the name, OU the client role, the default lifetime.
    let cert = read_certificate(&alice.cert);
    assert_eq!(cert.common_names, ["alice"], "{cert:?}");
    assert_eq!(cert.units, [CLIENT_OU], "{cert:?}");
    assert!(
        (before + DEFAULT_CLIENT_TTL - 1..=after + DEFAULT_CLIENT_TTL + 1)
            .contains(&cert.not_after),
        "a login certificate lives 90 days: not_after {} for a login between {before} and \
         {after}",
        cert.not_after
    );

    // etcdctl.
    assert_accepted(member, &alice, "from-etcdctl");
    // The etcd-client crate; O is the cluster id its answers carry.
    let mut client = connect(&member.endpoint(), &alice).await;
    client
        .put("from-etcd-client", "w", None)
        .await
        .expect("a put as alice");
    let got = client.get("from-etcd-client", None).await.expect("a get");
    assert_eq!(got.kvs()[0].value(), b"w");
    let cluster_id = client
        .status()
        .await
        .expect("status as alice")
        .header()
        .expect("a header")
        .cluster_id();
    assert_eq!(
        cert.organizations,
        [format!("{cluster_id:016x}")],
        "O must be the cluster id {cluster_id:x}: {cert:?}"
    );
    // One keyspace: the admin sees alice's writes.
    assert_eq!(
        member
            .etcdctl()
            .run(&["get", "from-etcd-client", "--print-value-only"])
            .assert_success()
            .stdout,
        "w\n"
    );
}

#[test]
fn a_client_token_pinning_another_ca_aborts_login_before_sending_anything() {
    let cluster = Cluster::single();
    let other = Cluster::single();
    let member = cluster.member(0);
    let ours = token(member, "client");
    let theirs = token(other.member(0), "client");
    let (their_digest, _) = token_parts(&theirs);
    let (_, our_secret) = token_parts(&ours);
    let before = identity_list(member);
    let dir = temp_dir();
    // Their CA's digest with our secret: only the pinning can refuse it (sent, it would be
    // accepted); and their whole token.
    for (what, token) in [
        (
            "their-digest-our-secret",
            format!("{their_digest}-{our_secret}"),
        ),
        ("their-token", theirs.clone()),
    ] {
        assert_login_refused(
            &token,
            member.advertised_peer_addr(),
            "intruder",
            &dir.path().join(what),
            CA_MISMATCH,
        );
    }
    assert_eq!(identity_list(member), before, "the registry changed");
    let logs = member.logs();
    assert!(
        !logs.contains("intruder") && !logs.contains("refused a wrong or rotated join token"),
        "the login request reached the member after the CA did not match:\n{logs}"
    );
}

#[test]
fn login_refuses_a_wrong_secret_the_manager_token_and_the_admin_name() {
    let cluster = Cluster::start(ClusterOptions::new(1));
    let member = cluster.member(0);
    let peer = member.advertised_peer_addr();
    let client_token = token(member, "client");
    let (digest, secret) = token_parts(&client_token);
    let wrong_secret: String = secret
        .chars()
        .map(|c| if c == 'a' { 'b' } else { 'a' })
        .collect();
    let before = identity_list(member);
    let dir = temp_dir();

    assert_login_refused(
        &format!("{digest}-{wrong_secret}"),
        peer,
        "mallory",
        &dir.path().join("wrong-secret"),
        INVALID_TOKEN,
    );
    // The manager token pins the same CA, but it admits members, not clients.
    assert_login_refused(
        &cluster.token(),
        peer,
        "mallory",
        &dir.path().join("manager-token"),
        INVALID_TOKEN,
    );
    // The client token cannot get the admin identity.
    assert_login_refused(
        &client_token,
        peer,
        "root",
        &dir.path().join("root"),
        "admin identity",
    );
    // ... nor admit a member.
    let refused = Member::try_create(
        &dir.path().join("joiner"),
        MemberOptions::default().fast_raft().name("joiner"),
        &Origin::Join {
            token: client_token.clone(),
            peer,
            admin: cluster.admin(),
        },
        PeerAddress::default(),
    );
    match refused {
        Ok(_) => panic!("the client token admitted a member"),
        Err(text) => assert!(text.contains(INVALID_TOKEN), "{text}"),
    }
    assert!(!dir.path().join("joiner/member.toml").exists());
    assert_eq!(cluster.membership(0).len(), 1);
    assert_eq!(identity_list(member), before, "the registry changed");
}

#[test]
fn login_and_issue_never_overwrite_existing_identity_files() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let client_token = token(member, "client");
    let dir = temp_dir();
    let alice_dir = dir.path().join("alice");
    let alice = logged_in(member, &client_token, "alice", &alice_dir);
    // A whole identity, and each file alone: nothing is replaced, nor completed half-way.
    let mut outs = vec![alice_dir];
    for file in ["client.key", "client.crt", "ca.crt"] {
        let out = dir.path().join(format!("lone-{file}"));
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join(file), "someone else's file\n").unwrap();
        outs.push(out);
    }
    for out in &outs {
        let before = files_in(out);
        let out_arg = out.display().to_string();
        for output in [
            login(&client_token, member.advertised_peer_addr(), "bob", out),
            member.cli(&["identity", "issue", "bob", "--out", &out_arg]),
        ] {
            output.assert_failure();
            assert!(
                output.stderr.contains("exists"),
                "the refusal names the existing file:\n{output}"
            );
            assert!(
                files_in(out) == before,
                "{} changed:\n{output}",
                out.display()
            );
        }
    }
    assert_accepted(member, &alice, "still-alice");
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[test]
fn a_rotated_client_token_is_refused_at_once_and_issued_identities_keep_working() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let dir = temp_dir();
    let manager = cluster.token();
    let old = token(cluster.member(0), "client");
    let alice = logged_in(cluster.member(1), &old, "alice", &dir.path().join("alice"));

    let output = cluster.member(2).cli(&["token", "rotate", "client"]);
    output.assert_success();
    let new = output.stdout.trim().to_string();
    assert_ne!(new, old);
    assert_eq!(
        token_parts(&new).0,
        token_parts(&old).0,
        "the new token pins the same CA"
    );
    // Every member refuses the old token at once (login reads linearizably) and shows the new.
    for via in 0..3 {
        let member = cluster.member(via);
        assert_login_refused(
            &old,
            member.advertised_peer_addr(),
            "mallory",
            &dir.path().join(format!("mallory-{via}")),
            INVALID_TOKEN,
        );
        assert_eq!(token(member, "client"), new, "member {via}");
    }
    for via in 0..3 {
        let member = cluster.member(via);
        let carol = logged_in(
            member,
            &new,
            &format!("carol-{via}"),
            &dir.path().join(format!("carol-{via}")),
        );
        assert_accepted(member, &carol, &format!("carol-{via}"));
        assert_accepted(member, &alice, &format!("alice-{via}"));
    }
    assert_eq!(
        token(cluster.member(0), "manager"),
        manager,
        "rotating the client token changed the manager token"
    );
    let list = identity_list(cluster.member(0));
    assert!(states_of(&list, "mallory").is_empty(), "{list:#?}");
}

#[test]
fn a_rotated_manager_token_is_refused_and_the_new_one_admits_a_member() {
    let mut cluster = Cluster::start(ClusterOptions::new(1));
    let old = cluster.token();
    let client_token = token(cluster.member(0), "client");

    let output = cluster.member(0).cli(&["token", "rotate", "manager"]);
    output.assert_success();
    let new = output.stdout.trim().to_string();
    assert_ne!(new, old);
    assert_eq!(token(cluster.member(0), "manager"), new);
    assert_eq!(
        token(cluster.member(0), "client"),
        client_token,
        "rotating the manager token changed the client token"
    );

    // The harness joins with the token it read at start: the old one.
    let before = cluster.membership(0);
    match cluster.try_join("intruder") {
        Ok(index) => panic!("the rotated token admitted member {index}"),
        Err(text) => assert!(text.contains(INVALID_TOKEN), "{text}"),
    }
    assert!(!cluster.dir().join("intruder/member.toml").exists());
    assert_eq!(cluster.membership(0), before, "the membership changed");

    let newcomer = Member::create(
        &cluster.dir().join("m1"),
        MemberOptions::default().fast_raft().name("m1"),
        &Origin::Join {
            token: new,
            peer: cluster.member(0).advertised_peer_addr(),
            admin: cluster.admin(),
        },
        PeerAddress::default(),
    );
    let names: Vec<String> = cluster
        .membership(0)
        .into_iter()
        .map(|(_, name, _)| name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"m1".to_string()), "{names:?}");
    // The first member's certificate and the admin identity are unaffected.
    let cli = newcomer.cli(&["put", "after-rotation", "v"]);
    cli.assert_success();
    assert_accepted(cluster.member(0), &cluster.admin(), "admin-after-rotation");
}

// ---------------------------------------------------------------------------------------------
// Issuing and listing

#[test]
fn identity_issue_honours_the_ttl_and_identity_list_shows_every_certificate() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let dir = temp_dir();
    let alice = logged_in(
        member,
        &token(member, "client"),
        "alice",
        &dir.path().join("alice"),
    );
    let out = dir.path().join("carol");
    let before = now_unix();
    let carol = issued(member, "carol", &["--ttl", "1h"], &out);
    let after = now_unix();

    let cert = read_certificate(&carol.cert);
    assert_eq!(cert.common_names, ["carol"], "{cert:?}");
    assert_eq!(cert.units, [CLIENT_OU], "{cert:?}");
    assert!(
        (before + 3600 - 1..=after + 3600 + 1).contains(&cert.not_after),
        "--ttl 1h: not_after {} for an issue between {before} and {after}",
        cert.not_after
    );
    assert_eq!(mode(&out), 0o700);
    for file in [&carol.ca, &carol.cert, &carol.key] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_accepted(member, &carol, "from-carol");

    let expected = [
        ("m0", "member", member.data_dir().join("pki/member.crt")),
        ("root", "client", cluster.admin().cert),
        ("alice", "client", alice.cert.clone()),
        ("carol", "client", carol.cert.clone()),
    ];
    let list = identity_list(member);
    assert_eq!(list.len(), expected.len(), "{list:#?}");
    for (name, role, path) in &expected {
        let cert = read_certificate(path);
        let listed = entry(&list, &cert.serial);
        assert_eq!(listed["name"], *name, "{listed}");
        assert_eq!(listed["role"], *role, "{listed}");
        assert_eq!(listed["not_after"], cert.not_after, "{listed}");
        assert_eq!(listed["state"], "valid", "{listed}");
        assert_eq!(listed["issuer"], "Bulwark Root CA", "{listed}");
    }

    // The table shows the same rows.
    let table = member.cli(&["identity", "list"]).assert_success().clone();
    let rows: Vec<Vec<String>> = table
        .stdout
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "ROLE", "SERIAL", "ISSUER", "EXPIRES", "STATE"],
        "{table}"
    );
    assert_eq!(rows.len(), list.len() + 1, "{table}");
    for listed in &list {
        let serial = listed["serial"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|row| row[2] == serial)
            .unwrap_or_else(|| panic!("serial {serial} not in the table:\n{table}"));
        assert_eq!(
            row,
            &[
                listed["name"].as_str().unwrap().to_string(),
                listed["role"].as_str().unwrap().to_string(),
                serial.to_string(),
                "Bulwark Root CA".to_string(),
                utc(listed["not_after"].as_i64().unwrap()),
                listed["state"].as_str().unwrap().to_string(),
            ],
            "{table}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation and the admin's rights

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_identity_is_refused_by_every_member_and_its_open_connections_are_cut() {
    let cluster = Cluster::start(ClusterOptions::new(3));
    let dir = temp_dir();
    let client_token = token(cluster.member(0), "client");
    let alice = logged_in(
        cluster.member(1),
        &client_token,
        "alice",
        &dir.path().join("alice"),
    );
    let bob = logged_in(
        cluster.member(2),
        &client_token,
        "bob",
        &dir.path().join("bob"),
    );

    // Alice holds an open connection to every member, with a watch and a loop of reads on it;
    // bob holds one with a watch.
    let revoked = Arc::new(AtomicBool::new(false));
    let mut alice_watches = Vec::new();
    let mut readers = Vec::new();
    let mut bob_watches = Vec::new();
    for index in 0..3 {
        let member = cluster.member(index);
        let mut client = connect(&member.endpoint(), &alice).await;
        client
            .put(format!("alice/{index}"), "v", None)
            .await
            .expect("a put as alice");
        alice_watches.push(open_watch(&client, "watched/").await);
        let reads = Arc::new(AtomicUsize::new(0));
        let task = spawn_reader(
            client,
            reads.clone(),
            revoked.clone(),
            format!("alice's reader on member {index}"),
        );
        readers.push((reads, task));
        let bob_client = connect(&member.endpoint(), &bob).await;
        bob_watches.push((
            bob_client.clone(),
            open_watch(&bob_client, "watched/").await,
        ));
    }
    // Every watch is live.
    cluster
        .etcdctl()
        .run(&["put", "watched/before", "v"])
        .assert_success();
    for (_, stream) in alice_watches
        .iter_mut()
        .chain(bob_watches.iter_mut().map(|(_, w)| w))
    {
        let response = next_watch_response(stream, REQUEST_DEADLINE).await;
        assert_eq!(response.events().len(), 1, "{response:?}");
    }
    let deadline = Instant::now() + REQUEST_DEADLINE;
    while readers
        .iter()
        .any(|(reads, _)| reads.load(Ordering::SeqCst) == 0)
    {
        assert!(Instant::now() < deadline, "alice's readers never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    revoked.store(true, Ordering::SeqCst);
    let output = cluster.member(2).cli(&["identity", "revoke", "alice"]);
    output.assert_success();
    assert!(output.stdout.contains("alice revoked"), "{output}");

    // Open connections are cut: the reads fail, the watches end.
    for (index, (_, task)) in readers.into_iter().enumerate() {
        match tokio::time::timeout(REVOCATION_DEADLINE, task).await {
            Err(_) => panic!(
                "alice's reads on member {index} still succeed {REVOCATION_DEADLINE:?} after \
                 the revocation"
            ),
            Ok(result) => result.expect("the reader"),
        }
    }
    for (index, (_watcher, stream)) in alice_watches.into_iter().enumerate() {
        assert_watch_cut(stream, &format!("member {index}")).await;
    }
    // New connections are refused by every member.
    for index in 0..3 {
        assert_refused_by(cluster.member(index), &alice, "alice's revoked identity").await;
    }

    // Bob's open connections were left alone, and he still connects anew.
    cluster
        .etcdctl()
        .run(&["put", "watched/after", "v"])
        .assert_success();
    for (index, (mut client, (_watcher, mut stream))) in bob_watches.into_iter().enumerate() {
        let response = next_watch_response(&mut stream, REQUEST_DEADLINE).await;
        assert_eq!(
            response.events().len(),
            1,
            "bob's watch on member {index}: {response:?}"
        );
        client
            .get("watched/after", None)
            .await
            .unwrap_or_else(|e| panic!("bob's open connection to member {index}: {e}"));
        assert_accepted(cluster.member(index), &bob, &format!("bob/{index}"));
    }

    let list = identity_list(cluster.member(0));
    assert_eq!(states_of(&list, "alice"), ["revoked"], "{list:#?}");
    assert_eq!(states_of(&list, "bob"), ["valid"], "{list:#?}");
}

#[test]
fn revoke_refuses_members_unknown_names_and_the_callers_own_identity() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let before = identity_list(member);

    let output = member.cli(&["identity", "revoke", "m0"]);
    output.assert_failure();
    assert!(
        output.stderr.contains("is a member") && output.stderr.contains("member remove"),
        "revoking a member must point at `member remove`:\n{output}"
    );
    let output = member.cli(&["identity", "revoke", "nobody"]);
    output.assert_failure();
    assert!(
        output.stderr.contains("no identity named \"nobody\""),
        "{output}"
    );
    let output = member.cli(&["identity", "revoke", "root"]);
    output.assert_failure();
    assert!(
        output
            .stderr
            .contains("identity this request was made with"),
        "{output}"
    );

    assert_eq!(
        identity_list(member),
        before,
        "a refused revoke changed the registry"
    );
    assert_accepted(member, &cluster.admin(), "admin-still-works");
}

#[test]
fn only_the_admin_identity_manages_identities_and_tokens() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let dir = temp_dir();
    let client_token = token(member, "client");
    let manager_token = token(member, "manager");
    let alice = logged_in(member, &client_token, "alice", &dir.path().join("alice"));
    let member_identity = TlsFiles::member_of(member.data_dir());
    let issued_out = dir.path().join("mallory");
    let issued_out = issued_out.display().to_string();
    let admin_commands: [&[&str]; 7] = [
        &["identity", "list"],
        &["identity", "issue", "mallory", "--out", &issued_out],
        &["identity", "revoke", "alice"],
        &["token", "show", "client"],
        &["token", "show", "manager"],
        &["token", "rotate", "client"],
        &["token", "rotate", "manager"],
    ];
    for (who, identity) in [
        ("alice's client identity", &alice),
        ("a member certificate", &member_identity),
    ] {
        for args in admin_commands {
            let output = member.cli_as(identity, args);
            output.assert_failure();
            assert!(
                output.stderr.contains(PERMISSION_DENIED) && !output.stdout.contains("BWTKN"),
                "{who} must be denied:\n{output}"
            );
        }
    }
    assert!(!Path::new(&issued_out).exists());
    assert_eq!(token(member, "client"), client_token);
    assert_eq!(token(member, "manager"), manager_token);
    let list = identity_list(member);
    assert_eq!(states_of(&list, "alice"), ["valid"], "{list:#?}");
    assert!(states_of(&list, "mallory").is_empty(), "{list:#?}");
    // Alice is still a full client of the keyspace.
    assert_accepted(member, &alice, "alice-key");
}

// ---------------------------------------------------------------------------------------------
// The CA key on every member

#[test]
fn issuing_keeps_working_after_the_initial_member_is_removed() {
    let mut cluster = Cluster::start(ClusterOptions::new(3));
    let dir = temp_dir();
    let alice = issued(cluster.member(0), "alice", &[], &dir.path().join("alice"));
    let first_serial =
        read_certificate(&cluster.member(0).data_dir().join("pki/member.crt")).serial;

    // The initial member leads; it hands leadership over first (removing a leader hits the bug
    // `removing_the_leader_commits_before_its_certificate_is_denied` guards).
    let first = cluster.id(0);
    let deadline = Instant::now() + REQUEST_DEADLINE;
    while cluster.wait_leader(&[0, 1, 2]) == 0 {
        assert!(
            Instant::now() < deadline,
            "the initial member keeps leading"
        );
        let target = format!("{:x}", cluster.id(1));
        cluster.member(0).etcdctl().run(&["move-leader", &target]);
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster
        .member(1)
        .etcdctl()
        .run(&["member", "remove", &format!("{first:x}")])
        .assert_success();
    cluster.kill9(0);
    cluster.wait_leader(&[1, 2]);
    assert!(
        cluster.membership(1).iter().all(|(id, _, _)| *id != first),
        "member 0 is still listed"
    );

    let mut identities = vec![("alice".to_string(), alice)];
    for via in [1, 2] {
        let member = cluster.member(via);
        let name = format!("dave-{via}");
        let dave = issued(member, &name, &[], &dir.path().join(&name));
        identities.push((name, dave));
        let name = format!("erin-{via}");
        let erin = logged_in(
            member,
            &token(member, "client"),
            &name,
            &dir.path().join(&name),
        );
        identities.push((name, erin));
    }
    for via in [1, 2] {
        for (name, identity) in &identities {
            assert_accepted(cluster.member(via), identity, &format!("{name}-on-{via}"));
        }
    }
    let list = identity_list(cluster.member(2));
    assert_eq!(
        entry(&list, &first_serial)["state"],
        "revoked",
        "the removed member's certificate: {list:#?}"
    );
    for (name, _) in &identities {
        assert_eq!(states_of(&list, name), ["valid"], "{name}: {list:#?}");
    }
}

/// `member remove` of the leader, sent to a follower (forwarded), over peer links slow enough
/// (150 ms each way) that the followers would apply a denial of the leader's certificate (and
/// cut its connections at their next sweep) before it has committed the membership change: it
/// failed 3 of 3 runs that way before the fix. Slower links (400 ms) fail too, for another
/// reason: the election that follows, over fresh TLS connections at 800 ms round trips, takes
/// longer than etcdctl's 20 s command timeout here. etcd commits the change, answers, and
/// then the leader steps down.
#[test]
fn removing_the_leader_commits_before_its_certificate_is_denied() {
    let mut cluster = Cluster::start(ClusterOptions::new(3).raft_timings(100, 1500).proxied());
    let leader = cluster.wait_leader(&[0, 1, 2]);
    let rest = cluster.others(leader);
    let leader_id = cluster.id(leader);
    for index in 0..3 {
        cluster.set_links_of(index, Fault::Delay(Duration::from_millis(150)));
    }
    let output =
        cluster
            .member(rest[0])
            .etcdctl()
            .run(&["member", "remove", &format!("{leader_id:x}")]);
    cluster.heal();
    output.assert_success();
    cluster.kill9(leader);
    cluster.wait_leader(&rest);
    for via in &rest {
        assert!(
            cluster
                .membership(*via)
                .iter()
                .all(|(id, _, _)| *id != leader_id),
            "member {via} still lists the removed leader"
        );
    }
    cluster
        .member(rest[0])
        .etcdctl()
        .run(&["put", "after-removal", "v"])
        .assert_success();
}
