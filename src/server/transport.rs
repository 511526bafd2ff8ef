//! The listeners (client and peer): TCP, then a TLS handshake that requires a certificate from
//! the cluster CA, then gRPC. A connection that fails the handshake never reaches a service.
//!
//! Revocation: a connection whose certificate is on the deny list is closed right after its
//! handshake, and every open connection is re-checked every [`REVOCATION_SWEEP`]; one that has
//! become denied is closed (its reads and writes fail from then on), so removing a member or
//! revoking an identity takes effect on live connections within about a second.
//!
//! Retired roots: when the trusted roots change (a CA rotation retiring its old root), every open
//! connection's certificate chain is verified again against the new roots at the next sweep, and
//! the connections it no longer passes are closed the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router, TcpConnectInfo, TlsConnectInfo};

use crate::pki;

/// A client that has not finished its handshake by then is dropped, so slow or silent
/// connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often open connections are checked against the deny list.
const REVOCATION_SWEEP: Duration = Duration::from_secs(1);

/// An open connection that presented a certificate.
struct LiveConnection {
    serial: String,
    /// The chain it presented, leaf first: checked again when the trusted roots change.
    chain: Vec<CertificateDer<'static>>,
    /// The trust epoch its chain was last verified under (taken before its handshake began, so
    /// a handshake that straddles a change of roots is verified again).
    epoch: u64,
    /// Weak: a closed connection drops out.
    revocation: Weak<Revocation>,
}

type LiveConnections = Arc<Mutex<Vec<LiveConnection>>>;

/// What the cluster knows about certificates (by serial, hex).
pub trait DenyList: Send + Sync + 'static {
    /// Whether the certificate may no longer be used.
    fn is_denied(&self, serial_hex: &str) -> bool;
    /// Whether the cluster issued the certificate (it is in the identity registry), once this
    /// member has caught up with the cluster if it did not know it yet.
    fn is_issued<'a>(&'a self, serial_hex: &'a str) -> futures::future::BoxFuture<'a, bool>;
}

/// Which certificates a listener admits besides chaining to a trusted root and not being denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Only certificates the cluster issued (the client port): one signed with a leaked CA key
    /// outside the cluster is refused even while that root is still trusted.
    IssuedOnly,
    /// Any certificate from a trusted root (the peer port: a joining member must accept the
    /// leader before it has the registry that lists the leader's certificate).
    AnyTrusted,
}

/// Serves `router` on `listener` over TLS until `shutdown` completes, then finishes the requests
/// in flight.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    deny: Arc<dyn DenyList>,
    trust: Arc<pki::LiveTrust>,
    admission: Admission,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (connections, incoming) = mpsc::channel::<Result<Revocable, std::io::Error>>(64);
    let acceptor = TlsAcceptor::from(tls);
    let live = LiveConnections::default();
    let accepting = tokio::spawn(accept_loop(
        listener,
        acceptor,
        connections,
        deny.clone(),
        trust.clone(),
        admission,
        live.clone(),
    ));
    let sweeping = tokio::spawn(sweep(deny, trust.clone(), live.clone()));
    // Stop accepting and sweeping when serving ends, or when the caller gives up on a graceful
    // end and drops this future.
    let _tasks = (AbortOnDrop(accepting), AbortOnDrop(sweeping));
    router
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<Result<Revocable, std::io::Error>>,
    deny: Arc<dyn DenyList>,
    trust: Arc<pki::LiveTrust>,
    admission: Admission,
    live: LiveConnections,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        let deny = deny.clone();
        let live = live.clone();
        let epoch = trust.epoch();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "refused a connection at the TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let presented = presented_chain(&stream);
            if let Some((serial, _)) = &presented {
                if deny.is_denied(serial) {
                    tracing::info!(%peer, %serial, "refused a denied certificate");
                    return;
                }
                if admission == Admission::IssuedOnly && !deny.is_issued(serial).await {
                    tracing::warn!(%peer, %serial, "refused a certificate the cluster never issued");
                    return;
                }
            }
            let revocation = Arc::new(Revocation::default());
            if let Some((serial, chain)) = presented {
                let mut live = live.lock().expect("live connection list lock");
                live.push(LiveConnection {
                    serial,
                    chain,
                    epoch,
                    revocation: Arc::downgrade(&revocation),
                });
            }
            let _ = connections
                .send(Ok(Revocable {
                    inner: stream,
                    revocation,
                }))
                .await;
        });
    }
}

/// Re-checks every open connection's certificate and closes those now denied, or, after the
/// trusted roots changed, no longer trusted.
async fn sweep(deny: Arc<dyn DenyList>, trust: Arc<pki::LiveTrust>, live: LiveConnections) {
    let mut ticker = tokio::time::interval(REVOCATION_SWEEP);
    loop {
        ticker.tick().await;
        let epoch = trust.epoch();
        let snapshot: Vec<(
            String,
            Option<Vec<CertificateDer<'static>>>,
            Arc<Revocation>,
        )> = {
            let mut live = live.lock().expect("live connection list lock");
            live.retain(|connection| connection.revocation.strong_count() > 0);
            live.iter_mut()
                .filter_map(|connection| {
                    // Verified again under the current roots, once per change of roots.
                    let chain = (connection.epoch != epoch).then(|| connection.chain.clone());
                    connection.epoch = epoch;
                    Some((
                        connection.serial.clone(),
                        chain,
                        connection.revocation.upgrade()?,
                    ))
                })
                .collect()
        };
        for (serial, chain, revocation) in snapshot {
            if revocation.revoked.load(Ordering::Acquire) {
                continue;
            }
            if deny.is_denied(&serial) {
                tracing::info!(%serial, "closing a connection whose certificate was denied");
                revocation.revoke();
            } else if chain.is_some_and(|chain| !trust.accepts_client(&chain)) {
                tracing::info!(%serial, "closing a connection whose certificate is no longer trusted");
                revocation.revoke();
            }
        }
    }
}

/// The serial of the leaf and the whole chain the peer presented, if it presented one.
fn presented_chain(
    stream: &TlsStream<TcpStream>,
) -> Option<(String, Vec<CertificateDer<'static>>)> {
    let (_, session) = stream.get_ref();
    let chain = session.peer_certificates()?;
    let serial = pki::identity_of(chain.first()?.as_ref()).ok()?.serial_hex;
    Some((
        serial,
        chain.iter().map(|der| der.clone().into_owned()).collect(),
    ))
}

#[derive(Default)]
struct Revocation {
    revoked: AtomicBool,
    /// The task waiting to read, woken when the connection is revoked so it sees the error.
    reader: Mutex<Option<Waker>>,
}

impl Revocation {
    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        if let Some(waker) = self.reader.lock().expect("waker lock").take() {
            waker.wake();
        }
    }

    fn check(&self) -> std::io::Result<()> {
        if self.revoked.load(Ordering::Acquire) {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "certificate denied",
            ))
        } else {
            Ok(())
        }
    }
}

/// A TLS connection that fails once its certificate is denied.
struct Revocable {
    inner: TlsStream<TcpStream>,
    revocation: Arc<Revocation>,
}

impl Connected for Revocable {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Revocable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.revocation.check()?;
        *self.revocation.reader.lock().expect("waker lock") = Some(cx.waker().clone());
        // A revocation between the check and storing the waker would be missed: check again.
        self.revocation.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Revocable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.revocation.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
