//! The client port speaks gRPC over mutual TLS only: the admin identity `init` wrote is
//! accepted; no certificate, a certificate from another cluster's CA, and plaintext are refused,
//! whichever client tries (etcdctl, the etcd-client crate, a raw TLS handshake), and a refused
//! client changes nothing.

mod common;

use std::time::Duration;

use common::client::{connect, tls_options};
use common::raw::{
    assert_raw_tls_refused, client_config, connection_start, identity_config, tls_connect,
    write_then_read_to_end, H2, SETTINGS,
};
use common::{Cluster, Etcdctl, TlsFiles};
use etcd_client::{Certificate, Client, ConnectOptions, TlsOptions};

/// etcdctl retries a refused handshake until its command timeout: keep that short.
const REFUSED_TIMEOUT: Duration = Duration::from_secs(3);

/// Bounds a request that must fail; `Err(())` if it did not even finish.
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> Result<T, ()> {
    tokio::time::timeout(Duration::from_secs(90), future)
        .await
        .map_err(|_| ())
}

/// Asserts the key was never written (the refused client changed nothing).
fn assert_absent(admin: &Etcdctl, key: &str) {
    let output = admin.run(&["get", key, "--print-value-only"]);
    assert_eq!(output.assert_success().stdout, "", "{key} must not exist");
}

#[tokio::test]
async fn the_admin_identity_is_accepted_by_every_client() {
    let cluster = Cluster::single();
    let member = cluster.member(0);

    let etcdctl = member.etcdctl();
    assert_eq!(
        etcdctl.run(&["put", "k", "v"]).assert_success().stdout,
        "OK\n"
    );
    assert_eq!(etcdctl.run(&["get", "k"]).assert_success().stdout, "k\nv\n");

    let mut client = member.client().await;
    let response = client
        .get("k", None)
        .await
        .expect("get with the admin identity");
    assert_eq!(response.kvs()[0].value(), b"v");

    // The same handshake by hand: the server then speaks HTTP/2 to us.
    let stream = tls_connect(member.client_addr(), identity_config(&member.admin()))
        .await
        .expect("mutual TLS handshake with the admin identity");
    let (_, session) = stream.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server negotiates HTTP/2"
    );
    let mut h2 = H2::start(stream).await.expect("HTTP/2 preface");
    let settings = h2
        .await_server_settings()
        .await
        .expect("reading the server's SETTINGS")
        .expect("the server's SETTINGS frame before EOF");
    assert_eq!(settings.kind, SETTINGS);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let admin = member.admin();

    let output = Etcdctl::new(&member.endpoint())
        .cacert(&admin.ca.display().to_string())
        .timeouts(REFUSED_TIMEOUT, REFUSED_TIMEOUT)
        .run(&["put", "no-cert", "v"]);
    output.assert_failure();

    let ca_only = ConnectOptions::new()
        .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(
            std::fs::read_to_string(&admin.ca).unwrap(),
        )))
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(30));
    let result = bounded(async {
        let mut client = Client::connect([member.endpoint()], Some(ca_only)).await?;
        client.put("no-cert", "v", None).await
    })
    .await;
    assert!(
        !matches!(result, Ok(Ok(_))),
        "a put without a client certificate succeeded: {result:?}"
    );

    assert_raw_tls_refused(member.client_addr(), client_config(&admin.ca, None)).await;

    assert_absent(&member.etcdctl(), "no-cert");
}

#[tokio::test]
async fn a_certificate_from_another_cluster_is_refused() {
    let cluster = Cluster::single();
    let other = Cluster::single();
    let member = cluster.member(0);
    let ours = member.admin();
    let theirs = other.member(0).admin();
    // The other cluster's admin certificate, presented to a client that trusts our CA: only
    // the server's check of the client certificate can refuse it.
    let foreign = TlsFiles {
        ca: ours.ca.clone(),
        cert: theirs.cert.clone(),
        key: theirs.key.clone(),
    };
    // Sanity: the foreign identity is valid where it belongs.
    other
        .member(0)
        .etcdctl()
        .run(&["put", "k", "v"])
        .assert_success();

    for (what, identity) in [
        ("another cluster's client certificate", &foreign),
        ("another cluster's whole identity", &theirs),
    ] {
        let output = Etcdctl::new(&member.endpoint())
            .tls(identity)
            .timeouts(REFUSED_TIMEOUT, REFUSED_TIMEOUT)
            .run(&["put", "foreign", "v"]);
        assert!(
            matches!(output.code, Some(code) if code != 0),
            "etcdctl with {what} must fail:\n{output}"
        );
    }

    let result = bounded(async {
        let mut client = Client::connect([member.endpoint()], Some(tls_options(&foreign))).await?;
        client.put("foreign", "v", None).await
    })
    .await;
    assert!(
        !matches!(result, Ok(Ok(_))),
        "a put with another cluster's certificate succeeded: {result:?}"
    );

    assert_raw_tls_refused(member.client_addr(), identity_config(&foreign)).await;

    assert_absent(&member.etcdctl(), "foreign");
    // Our own identity still works.
    let mut client = connect(&member.endpoint(), &ours).await;
    client
        .put("mine", "ok", None)
        .await
        .expect("our own identity");
}

#[tokio::test]
async fn plaintext_grpc_is_refused() {
    let cluster = Cluster::single();
    let member = cluster.member(0);
    let plaintext = format!("http://{}", member.client_addr());

    let output = Etcdctl::new(&plaintext)
        .timeouts(REFUSED_TIMEOUT, REFUSED_TIMEOUT)
        .run(&["put", "plain", "v"]);
    output.assert_failure();

    let result = bounded(async {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(30));
        let mut client = Client::connect([plaintext.as_str()], Some(options)).await?;
        client.put("plain", "v", None).await
    })
    .await;
    assert!(
        !matches!(result, Ok(Ok(_))),
        "a plaintext put succeeded: {result:?}"
    );

    // By hand: an HTTP/2 preface in the clear gets no HTTP/2 back, at most a TLS alert record.
    let mut tcp = tokio::net::TcpStream::connect(member.client_addr())
        .await
        .expect("TCP connect");
    let reaction = write_then_read_to_end(&mut tcp, &connection_start()).await;
    assert!(
        reaction.bytes.is_empty() || reaction.bytes[0] == 0x15,
        "a plaintext HTTP/2 client got something other than a TLS alert: {:?}",
        reaction.bytes
    );

    assert_absent(&member.etcdctl(), "plain");
}
