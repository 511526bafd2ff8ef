//! The `etcd-client` crate as a test client: connecting with an identity, asserting on the gRPC
//! code and message of an error (clients match on etcd's exact strings), asking again through a
//! leader change, and reading a watch stream with a bound.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Error, Identity, TlsOptions, WatchResponse, WatchStream,
};

use super::{Member, TlsFiles};

/// Bounds every request so a hung server fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect options presenting `files` as the client identity and trusting `files.ca`.
pub fn tls_options(files: &TlsFiles) -> ConnectOptions {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)))
        .identity(Identity::from_pem(read(&files.cert), read(&files.key)));
    ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
}

/// A client of `endpoint` with identity `files`. etcd-client connects lazily: a refused
/// handshake shows on the first request, not here.
pub async fn connect(endpoint: &str, files: &TlsFiles) -> Client {
    Client::connect([endpoint], Some(tls_options(files)))
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

impl Member {
    /// A client of this member with the admin identity.
    pub async fn client(&self) -> Client {
        connect(&self.endpoint(), &self.admin()).await
    }
}

/// The gRPC status inside an etcd-client error, if the server answered one.
pub fn status_of(error: &etcd_client::Error) -> Option<&tonic::Status> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

/// Panics unless `result` is the gRPC error `code` with exactly `message`.
#[track_caller]
pub fn assert_grpc_error<T: Debug>(
    result: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Ok(value) => panic!("expected {code:?} {message:?}, got a success: {value:?}"),
        Err(error) => match status_of(&error) {
            Some(status) => assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "wrong gRPC error (full status: {status:?})"
            ),
            None => panic!("expected {code:?} {message:?}, got a non-gRPC error: {error:?}"),
        },
    }
}

/// Panics unless `header` identifies a real cluster and member and carries `revision`.
#[track_caller]
pub fn assert_header(header: Option<&etcd_client::ResponseHeader>, revision: i64) {
    let header = header.expect("a response header");
    assert_ne!(header.cluster_id(), 0, "cluster_id is zero: {header:?}");
    assert_ne!(header.member_id(), 0, "member_id is zero: {header:?}");
    assert_ne!(header.raft_term(), 0, "raft_term is zero: {header:?}");
    assert_eq!(header.revision(), revision, "header revision: {header:?}");
}

/// Asks `request` again while the member answers `Unavailable` ("no leader", "request timed
/// out": a leader change in progress), until `deadline` has passed; returns the first other
/// answer, or the last `Unavailable` one. An answer is never asked again: what a request that
/// got through returned is what the test checks.
pub async fn retry_unavailable<T, F, Fut>(deadline: Duration, mut request: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match request().await {
            Err(error)
                if status_of(&error).is_some_and(|s| s.code() == tonic::Code::Unavailable)
                    && tokio::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
}

/// The next response on a watch stream; panics if none comes within `timeout`, or the stream
/// ends or fails.
pub async fn next_watch_response(stream: &mut WatchStream, timeout: Duration) -> WatchResponse {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => panic!("no watch response within {timeout:?}"),
        Ok(Err(error)) => panic!("the watch stream failed: {error}"),
        Ok(Ok(None)) => panic!("the watch stream ended"),
        Ok(Ok(Some(response))) => response,
    }
}

/// A tonic channel to `member` with the admin identity, for the generated `bulwark::proto`
/// clients: they show what `etcd-client` hides (a keep-alive's TTL 0, raw watch flags).
pub async fn raw_channel(member: &Member) -> tonic::transport::Channel {
    use tonic::transport::{Certificate as RawCertificate, Channel, ClientTlsConfig};
    let files = member.admin();
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(RawCertificate::from_pem(read(&files.ca)))
        .identity(tonic::transport::Identity::from_pem(
            read(&files.cert),
            read(&files.key),
        ))
        .domain_name("127.0.0.1");
    Channel::from_shared(member.endpoint())
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", member.endpoint()))
}
