//! Client identities renew themselves: `bulwark renew` and `bulwark agent` replace an identity's
//! key and certificate from its current one, before it expires; a certificate past its expiry is
//! refused, the renewed one accepted. (Members' own renewal: `cluster.rs`,
//! `members_renew_their_certificates_by_themselves_while_writes_go_on`.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::background::Background;
use common::{Cluster, Etcdctl, TlsFiles, BULWARK};

/// How long each issued certificate lives here: the floor for a test that waits for expiry.
const LIFETIME: &str = "20s";
/// Generous bound on two renewals and the original certificate's expiry.
const DEADLINE: Duration = Duration::from_secs(90);

fn serial(dir: &Path) -> String {
    let pem = std::fs::read_to_string(dir.join("client.crt")).expect("client.crt");
    let der = bulwark::pki::first_cert_der(&pem).expect("a certificate");
    bulwark::pki::identity_of(&der)
        .expect("an identity")
        .serial_hex
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("client.crt"),
        key: dir.join("client.key"),
    }
}

#[test]
fn the_agent_keeps_an_identity_valid_past_its_first_certificate_which_is_then_refused() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let dir = common::temp_dir();
    let bob = dir.path().join("bob");
    member
        .cli(&[
            "identity",
            "issue",
            "bob",
            "--ttl",
            LIFETIME,
            "--out",
            bob.to_str().unwrap(),
        ])
        .assert_success();
    // A copy of the first identity, never renewed.
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    for name in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(bob.join(name), first.join(name)).unwrap();
    }
    let first_serial = serial(&bob);
    let issued = Instant::now();

    let mut agent = Background::spawn({
        let mut command = Command::new(BULWARK);
        command.args(["agent", "--dir", bob.to_str().unwrap()]);
        command
    });
    // Two renewals by the agent (at 50-80 % of each 20 s lifetime), then past the first
    // certificate's expiry.
    let mut serials = vec![first_serial.clone()];
    while serials.len() < 3 || issued.elapsed() < Duration::from_secs(21) {
        assert!(
            issued.elapsed() < DEADLINE,
            "the agent renewed {} time(s) in {DEADLINE:?}: {}",
            serials.len() - 1,
            agent.output()
        );
        assert!(agent.is_running(), "the agent stopped: {}", agent.output());
        let now = serial(&bob);
        if serials.last() != Some(&now) {
            serials.push(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let renewed = Etcdctl::new(&member.endpoint()).tls(&files(&bob));
    renewed.run(&["put", "renewed", "v"]).assert_success();
    let expired = Etcdctl::new(&member.endpoint()).tls(&files(&first));
    expired.run(&["get", "renewed"]).assert_failure();

    // The registry lists every certificate bob held; the first one as expired.
    let listed = member
        .cli(&["identity", "list", "-w", "json"])
        .assert_success()
        .json();
    let states: Vec<_> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|entry| entry["name"] == "bob")
        .map(|entry| {
            (
                entry["serial"].as_str().unwrap().to_string(),
                entry["state"].clone(),
            )
        })
        .collect();
    assert!(states.len() >= 3, "{listed}");
    assert!(
        states.contains(&(first_serial, serde_json::json!("expired"))),
        "{listed}"
    );
}

#[test]
fn bulwark_renew_replaces_the_key_and_certificate_and_keeps_the_name() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let dir = common::temp_dir();
    let alice = dir.path().join("alice");
    member
        .cli(&[
            "identity",
            "issue",
            "alice",
            "--out",
            alice.to_str().unwrap(),
        ])
        .assert_success();
    let key_before = std::fs::read(alice.join("client.key")).unwrap();
    let serial_before = serial(&alice);

    let out = common::run_bulwark(&["renew", "--dir", alice.to_str().unwrap()]);
    out.assert_success();
    assert_ne!(serial(&alice), serial_before);
    assert_ne!(std::fs::read(alice.join("client.key")).unwrap(), key_before);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(alice.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(alice.join("client.crt")).unwrap();
    let identity = bulwark::pki::identity_of(&bulwark::pki::first_cert_der(&pem).unwrap()).unwrap();
    assert_eq!(identity.common_name, "alice");
    // ~90 days, like the certificate it replaced.
    let left = identity
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(89 * 86_400), "{left:?}");
    Etcdctl::new(&member.endpoint())
        .tls(&files(&alice))
        .run(&["put", "k", "v"])
        .assert_success();

    // A revoked identity cannot renew itself back into the cluster.
    member
        .cli(&["identity", "revoke", "alice"])
        .assert_success();
    common::run_bulwark(&["renew", "--dir", alice.to_str().unwrap()]).assert_failure();
}
