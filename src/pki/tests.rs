//! Real TLS handshakes over loopback TCP between the configurations this module builds.
//!
//! The server writes one byte after a successful handshake and the client reads it: in TLS 1.3
//! the client finishes its handshake before the server has checked the client certificate, so a
//! refusal only shows on the client as a failed read.

use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

fn trust(roots_pem: &str) -> Arc<LiveTrust> {
    LiveTrust::new(roots_pem).unwrap()
}

const LIMIT: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// What each side saw of one connection.
struct Outcome {
    /// The client identity the server read, or why the server refused.
    server: Result<PeerIdentity, String>,
    /// The ALPN protocol, once the client got the server's byte, or why it failed.
    client: Result<Option<Vec<u8>>, String>,
}

/// Connects a client using `client` to a server using `server` on 127.0.0.1, asking for
/// `server_name`. Every wait is bounded by `LIMIT`.
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("handshake completed without a client certificate")?
            .clone();
        let identity = identity_of(&leaf).map_err(|e| e.to_string())?;
        tls.write_all(b"!").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(identity)
    });
    let server_name = ServerName::try_from(server_name.to_string()).unwrap();
    let client = async move {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    };
    let client = timeout(LIMIT, client).await.expect("client timed out");
    let server = timeout(LIMIT, server)
        .await
        .expect("server timed out")
        .expect("server task panicked");
    Outcome { server, client }
}

/// A cluster CA with a member certificate for the loopback names and its server config.
fn cluster() -> (ClusterCa, Arc<ServerConfig>) {
    let ca = ClusterCa::generate(0x5eed).unwrap();
    let member = ca.issue_member("m1", &[], 90 * DAY).unwrap();
    let server = server_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&member).unwrap(),
    )
    .unwrap();
    (ca, server)
}

#[tokio::test]
async fn client_with_a_certificate_from_the_ca_is_accepted_and_identified() {
    let (ca, server) = cluster();
    let alice = ca.issue_client("alice", DAY).unwrap();
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&alice).unwrap(),
    )
    .unwrap();

    let outcome = connect(server, client, "localhost").await;
    let identity = outcome.server.unwrap();
    assert_eq!(identity.common_name, "alice");
    assert_eq!(identity.role, Role::Client);
    assert_eq!(outcome.client.unwrap().as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn member_certificate_authenticates_as_a_peer() {
    let (ca, server) = cluster();
    let m2 = ca.issue_member("m2", &[], DAY).unwrap();
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&m2).unwrap(),
    )
    .unwrap();

    let identity = connect(server, client, "localhost").await.server.unwrap();
    assert_eq!(
        (identity.common_name.as_str(), identity.role),
        ("m2", Role::Member)
    );
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let (ca, server) = cluster();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_cert_der(ca.cert_pem()).unwrap()).unwrap();
    let anonymous =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

    let outcome = connect(server, Arc::new(anonymous), "localhost").await;
    let refusal = outcome.server.unwrap_err();
    assert!(refusal.contains("peer sent no certificates"), "{refusal}");
    let alert = outcome.client.unwrap_err();
    assert!(alert.contains("CertificateRequired"), "{alert}");
}

/// A stranger CA claiming our cluster id has our CA's exact subject, so the chain is built and
/// fails on the signature; with another cluster id no issuer is found at all.
#[tokio::test]
async fn client_with_a_certificate_from_another_ca_is_refused() {
    let (ca, server) = cluster();
    for (cluster_id, expected) in [(0x5eed, "BadSignature"), (0xbad, "UnknownIssuer")] {
        let stranger_ca = ClusterCa::generate(cluster_id).unwrap();
        let mallory = stranger_ca.issue_client("alice", DAY).unwrap();
        // Mallory trusts our CA, so only our server's check can stop her.
        let client = client_tls_config(
            &trust(ca.cert_pem()),
            &crate::pki::LiveIdentity::new(&mallory).unwrap(),
        )
        .unwrap();

        let outcome = connect(server.clone(), client, "localhost").await;
        let refusal = outcome.server.unwrap_err();
        assert!(refusal.contains(expected), "{refusal}");
        assert!(outcome.client.is_err());
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let (ca, server) = cluster();
    let expired = ca.issue_client("alice", Duration::ZERO).unwrap();
    // X.509 times have one-second resolution; make sure "now" is past not_after.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&expired).unwrap(),
    )
    .unwrap();

    let outcome = connect(server, client, "localhost").await;
    let refusal = outcome.server.unwrap_err();
    assert!(refusal.contains("certificate expired"), "{refusal}");
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn member_certificate_verifies_for_localhost_and_loopback_ips() {
    let (ca, server) = cluster();
    let alice = ca.issue_client("alice", DAY).unwrap();
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&alice).unwrap(),
    )
    .unwrap();

    for name in ["localhost", "127.0.0.1", "::1"] {
        let outcome = connect(server.clone(), client.clone(), name).await;
        assert!(outcome.client.is_ok(), "{name}: {:?}", outcome.client);
        assert!(outcome.server.is_ok(), "{name}");
    }
    let outcome = connect(server, client, "db9.example.com").await;
    let refusal = outcome.client.unwrap_err();
    assert!(refusal.contains("not valid for name"), "{refusal}");
}

#[tokio::test]
async fn member_certificate_verifies_for_its_configured_hosts() {
    let ca = ClusterCa::generate(9).unwrap();
    let hosts = ["db1.example.com".to_string(), "127.0.0.2".to_string()];
    let member = ca.issue_member("m1", &hosts, DAY).unwrap();
    let server = server_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&member).unwrap(),
    )
    .unwrap();
    let alice = ca.issue_client("alice", DAY).unwrap();
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&alice).unwrap(),
    )
    .unwrap();

    for name in ["db1.example.com", "127.0.0.2"] {
        let outcome = connect(server.clone(), client.clone(), name).await;
        assert!(outcome.client.is_ok(), "{name}: {:?}", outcome.client);
    }
}

#[tokio::test]
async fn client_identity_cannot_serve() {
    let (ca, _) = cluster();
    let alice = ca.issue_client("alice", DAY).unwrap();
    let bob = ca.issue_client("bob", DAY).unwrap();
    let impostor = server_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&alice).unwrap(),
    )
    .unwrap();
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&bob).unwrap(),
    )
    .unwrap();

    let refusal = connect(impostor, client, "localhost")
        .await
        .client
        .unwrap_err();
    assert!(
        refusal.contains("does not allow extended key usage for server authentication"),
        "{refusal}"
    );
}

#[tokio::test]
async fn a_reloaded_ca_issues_certificates_the_original_trusts() {
    let (ca, server) = cluster();
    let reloaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let alice = reloaded.issue_client("alice", DAY).unwrap();
    let client = client_tls_config(
        &trust(ca.cert_pem()),
        &crate::pki::LiveIdentity::new(&alice).unwrap(),
    )
    .unwrap();

    let identity = connect(server, client, "localhost").await.server.unwrap();
    assert_eq!(identity.common_name, "alice");
}

#[test]
fn identity_with_a_mismatched_key_is_refused() {
    let ca = ClusterCa::generate(1).unwrap();
    let alice = ca.issue_client("alice", DAY).unwrap();
    let bob = ca.issue_client("bob", DAY).unwrap();
    let crossed = CertifiedKey {
        cert_pem: alice.cert_pem,
        key_pem: bob.key_pem,
    };
    // The pair is refused where it is loaded, so no config can ever present it; a renewal
    // that wrote a mismatched pair is refused the same way (`LiveIdentity::replace`).
    assert!(matches!(
        crate::pki::LiveIdentity::new(&crossed),
        Err(PkiError::Tls(_))
    ));
    let live = crate::pki::LiveIdentity::new(&ca.issue_client("carol", DAY).unwrap()).unwrap();
    assert!(matches!(live.replace(&crossed), Err(PkiError::Tls(_))));
}

/// TLS 1.2 is offered for older clients; it must enforce the client certificate just the same.
#[tokio::test]
async fn tls12_clients_are_held_to_the_same_rule() {
    let (ca, server) = cluster();
    let alice = ca.issue_client("alice", DAY).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_cert_der(ca.cert_pem()).unwrap()).unwrap();
    let tls12 = || {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let with_cert = tls12()
        .with_client_auth_cert(
            pem::certs_from_pem(&alice.cert_pem).unwrap(),
            pem::key_from_pem(&alice.key_pem).unwrap(),
        )
        .unwrap();
    let identity = connect(server.clone(), Arc::new(with_cert), "localhost")
        .await
        .server
        .unwrap();
    assert_eq!(identity.common_name, "alice");

    let without = connect(server, Arc::new(tls12().with_no_client_auth()), "localhost").await;
    assert!(without.server.is_err());
    assert!(without.client.is_err());
}

/// A rotation in miniature: certificates from the new root travel with its cross-signed copy, so
/// every combination of old and new trust and old and new certificates works while both roots are
/// trusted, and only new certificates once the old root is retired.
#[tokio::test]
async fn cross_signed_successor_is_trusted_by_old_and_new_roots() {
    let old = ClusterCa::generate(0x5eed).unwrap();
    let successor = old.successor(2).unwrap();
    let new = &successor.ca;
    assert_eq!(new.common_name(), "Bulwark Root CA 2");
    assert_eq!(new.cluster_id(), old.cluster_id());
    let both = format!("{}{}", new.cert_pem(), old.cert_pem());
    let old_member = old.issue_member("m1", &[], DAY).unwrap();
    let new_member = new.issue_member("m1", &[], DAY).unwrap();
    assert_eq!(certs_from_pem(&new_member.cert_pem).unwrap().len(), 2);
    let old_client = old.issue_client("alice", DAY).unwrap();
    let new_client = new.issue_client("alice", DAY).unwrap();
    let identity = identity_of(&first_cert_der(&new_client.cert_pem).unwrap()).unwrap();
    assert_eq!(identity.issuer, "Bulwark Root CA 2");

    let server = |roots: &str, member: &CertifiedKey| {
        server_tls_config(&trust(roots), &LiveIdentity::new(member).unwrap()).unwrap()
    };
    let client = |roots: &str, identity: &CertifiedKey| {
        client_tls_config(&trust(roots), &LiveIdentity::new(identity).unwrap()).unwrap()
    };
    // (server trusts, server presents, client trusts, client presents, accepted)
    let cases = [
        (
            old.cert_pem(),
            &new_member,
            old.cert_pem(),
            &new_client,
            true,
        ),
        (
            old.cert_pem(),
            &old_member,
            old.cert_pem(),
            &new_client,
            true,
        ),
        (
            both.as_str(),
            &new_member,
            old.cert_pem(),
            &old_client,
            true,
        ),
        (
            both.as_str(),
            &old_member,
            new.cert_pem(),
            &new_client,
            false,
        ),
        (both.as_str(), &new_member, both.as_str(), &old_client, true),
        (
            new.cert_pem(),
            &new_member,
            new.cert_pem(),
            &new_client,
            true,
        ),
        (
            new.cert_pem(),
            &new_member,
            old.cert_pem(),
            &new_client,
            true,
        ),
        (
            new.cert_pem(),
            &new_member,
            both.as_str(),
            &old_client,
            false,
        ),
    ];
    for (number, (server_trusts, presents, client_trusts, client_presents, accepted)) in
        cases.into_iter().enumerate()
    {
        let outcome = connect(
            server(server_trusts, presents),
            client(client_trusts, client_presents),
            "localhost",
        )
        .await;
        assert_eq!(
            outcome.server.is_ok() && outcome.client.is_ok(),
            accepted,
            "case {number}: server {:?}, client {:?}",
            outcome.server,
            outcome.client
        );
    }
}

#[tokio::test]
async fn replacing_the_trusted_roots_applies_to_the_next_handshake() {
    let old = ClusterCa::generate(0x5eed).unwrap();
    let new = old.successor(2).unwrap().ca;
    let trusted = trust(&format!("{}{}", old.cert_pem(), new.cert_pem()));
    let member = new.issue_member("m1", &[], DAY).unwrap();
    let server = server_tls_config(&trusted, &LiveIdentity::new(&member).unwrap()).unwrap();
    let alice = old.issue_client("alice", DAY).unwrap();
    let alice_chain = certs_from_pem(&alice.cert_pem).unwrap();
    let client =
        client_tls_config(&trust(old.cert_pem()), &LiveIdentity::new(&alice).unwrap()).unwrap();
    assert!(trusted.accepts_client(&alice_chain));
    assert!(connect(server.clone(), client.clone(), "localhost")
        .await
        .server
        .is_ok());

    let epoch = trusted.epoch();
    trusted.replace(new.cert_pem()).unwrap();
    assert_ne!(trusted.epoch(), epoch);
    assert!(!trusted.accepts_client(&alice_chain));
    let outcome = connect(server, client, "localhost").await;
    let refusal = outcome.server.unwrap_err();
    assert!(
        refusal.contains("UnknownIssuer") || refusal.contains("BadSignature"),
        "{refusal}"
    );
}

#[test]
fn a_ca_loads_from_a_bundle_by_its_key() {
    let old = ClusterCa::generate(3).unwrap();
    let new = old.successor(2).unwrap().ca;
    let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
    let loaded = ClusterCa::from_pem(&bundle, new.key_pem()).unwrap();
    assert_eq!(loaded.cert_pem(), new.cert_pem());
    assert_eq!(loaded.common_name(), "Bulwark Root CA 2");
    let loaded = ClusterCa::from_pem(&bundle, old.key_pem()).unwrap();
    assert_eq!(loaded.cert_pem(), old.cert_pem());
    let stranger = ClusterCa::generate(3).unwrap();
    assert!(matches!(
        ClusterCa::from_pem(&bundle, stranger.key_pem()),
        Err(PkiError::KeyMismatch)
    ));
}
