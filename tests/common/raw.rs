//! Raw connections for tests that must control every byte: TLS handshakes with or without a
//! client certificate, and a minimal HTTP/2 client that sends hand-made (and malformed) gRPC
//! frames. HPACK is written as literal fields without Huffman coding, which every HTTP/2 server
//! must accept; responses are read frame by frame without decoding their headers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::TlsFiles;

/// How long we wait for the server's reaction to one exchange.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A rustls client configuration trusting `ca`, presenting `identity` (cert, key) if given, and
/// offering ALPN `h2` as gRPC clients do.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA certificate") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a usable CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .expect("reading the client certificate")
                .map(|c| c.expect("a PEM certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("reading the client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a usable client identity")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The configuration presenting a whole identity.
pub fn identity_config(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
    client_config(&files.ca, Some((&files.cert, &files.key)))
}

/// TCP connect and TLS handshake to `addr`, verifying the server as `addr`'s IP.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connect = TlsConnector::from(config).connect(ServerName::from(addr.ip()), tcp);
    match tokio::time::timeout(EXCHANGE_TIMEOUT, connect).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// A raw TLS client presenting `config`'s identity (or none) must not get to speak HTTP/2: the
/// handshake fails, or the server ends the connection before sending any application data.
pub async fn assert_raw_tls_refused(addr: SocketAddr, config: Arc<rustls::ClientConfig>) {
    match tls_connect(addr, config).await {
        Err(_) => {} // refused during the handshake
        Ok(mut stream) => {
            // TLS 1.3: the client finishes its half of the handshake before the server checks
            // the client certificate, so the refusal arrives as an alert on the first read.
            let reaction = write_then_read_to_end(&mut stream, &connection_start()).await;
            assert!(
                reaction.bytes.is_empty(),
                "the server sent application data to a refused client: {:?}",
                reaction.bytes
            );
        }
    }
}

/// What the peer did after we wrote something.
#[derive(Debug)]
pub struct Reaction {
    /// Everything read before the end.
    pub bytes: Vec<u8>,
    /// How reading ended: `Ok(())` on EOF, the error otherwise.
    pub end: Result<(), std::io::Error>,
}

/// Writes `bytes` (errors ignored: the peer may already have hung up), then reads until EOF, an
/// error, or `EXCHANGE_TIMEOUT` (which panics: the peer neither answered nor hung up).
pub async fn write_then_read_to_end<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> Reaction {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the server neither answered nor closed the connection within \
                 {EXCHANGE_TIMEOUT:?}; read so far: {received:?}"
            ),
            Ok(Ok(0)) => {
                return Reaction {
                    bytes: received,
                    end: Ok(()),
                }
            }
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => {
                return Reaction {
                    bytes: received,
                    end: Err(error),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (RFC 9113) and gRPC framing, by hand

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    assert!(length < 1 << 24, "frame payload too long");
    let mut bytes = Vec::with_capacity(9 + payload.len());
    bytes.extend_from_slice(&length.to_be_bytes()[1..]);
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The client preface and an empty SETTINGS frame: the start of every HTTP/2 connection.
pub fn connection_start() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes
}

/// An HPACK integer with a `prefix_bits`-bit prefix (RFC 7541 section 5.1).
fn hpack_integer(value: usize, prefix_bits: u8, first_byte_flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of "literal header field without indexing, new name" entries, no Huffman
/// (RFC 7541 section 6.2.2).
pub fn hpack_literal_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_integer(name.len(), 7, 0, &mut block);
        block.extend_from_slice(name.as_bytes());
        hpack_integer(value.len(), 7, 0, &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// The HEADERS frame of a gRPC call to `path` (e.g. `/etcdserverpb.KV/Put`).
pub fn grpc_call_headers(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    let block = hpack_literal_block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    frame(HEADERS, END_HEADERS, stream, &block)
}

/// A gRPC length-prefixed message whose prefix says `declared_length` and whose body is `body`
/// (they need not agree: that is the point of some tests).
pub fn grpc_message(compressed: bool, declared_length: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![compressed as u8];
    bytes.extend_from_slice(&declared_length.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// A well-formed gRPC message around `body`.
pub fn grpc_frame(body: &[u8]) -> Vec<u8> {
    grpc_message(false, body.len() as u32, body)
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// How the server ended one stream of ours.
#[derive(Debug)]
pub enum StreamEnd {
    /// A HEADERS or DATA frame with END_STREAM (normally the trailers, with `grpc-status`).
    Ended { data_frames: usize },
    /// RST_STREAM with this error code.
    Reset { code: u32, data_frames: usize },
    /// GOAWAY with this error code: the server closed the connection.
    GoAway { code: u32, data_frames: usize },
    /// EOF or a read error without any of the above.
    ConnectionClosed {
        data_frames: usize,
        error: Option<String>,
    },
}

impl StreamEnd {
    /// How many DATA frames (response messages) the server sent on the stream first.
    pub fn data_frames(&self) -> usize {
        match self {
            StreamEnd::Ended { data_frames }
            | StreamEnd::Reset { data_frames, .. }
            | StreamEnd::GoAway { data_frames, .. }
            | StreamEnd::ConnectionClosed { data_frames, .. } => *data_frames,
        }
    }
}

/// A hand-driven HTTP/2 client connection.
pub struct H2<S> {
    stream: S,
    buffer: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> H2<S> {
    /// Sends the preface and SETTINGS on an established (TLS) stream.
    pub async fn start(mut stream: S) -> std::io::Result<H2<S>> {
        stream.write_all(&connection_start()).await?;
        stream.flush().await?;
        Ok(H2 {
            stream,
            buffer: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next frame; `Ok(None)` on EOF. Panics after [`EXCHANGE_TIMEOUT`] of silence.
    pub async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        loop {
            if self.buffer.len() >= 9 {
                let length = u32::from_be_bytes([0, self.buffer[0], self.buffer[1], self.buffer[2]])
                    as usize;
                if self.buffer.len() >= 9 + length {
                    let header: Vec<u8> = self.buffer.drain(..9).collect();
                    let payload: Vec<u8> = self.buffer.drain(..length).collect();
                    return Ok(Some(Frame {
                        kind: header[3],
                        flags: header[4],
                        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                            & 0x7fff_ffff,
                        payload,
                    }));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no HTTP/2 frame from the server within {EXCHANGE_TIMEOUT:?}"),
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Err(error)) => return Err(error),
            }
        }
    }

    /// Reads frames, answering SETTINGS and PING as a client must, until the server ends
    /// `stream_id`, resets it, or closes the connection.
    pub async fn await_stream_end(&mut self, stream_id: u32) -> StreamEnd {
        let mut data_frames = 0;
        loop {
            let received = match self.next_frame().await {
                Ok(Some(received)) => received,
                Ok(None) => {
                    return StreamEnd::ConnectionClosed {
                        data_frames,
                        error: None,
                    }
                }
                Err(error) => {
                    return StreamEnd::ConnectionClosed {
                        data_frames,
                        error: Some(error.to_string()),
                    }
                }
            };
            match (received.kind, received.stream) {
                (SETTINGS, 0) if received.flags & ACK == 0 => {
                    let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                (PING, 0) if received.flags & ACK == 0 => {
                    let _ = self.send(&frame(PING, ACK, 0, &received.payload)).await;
                }
                (GOAWAY, 0) => {
                    let code = received
                        .payload
                        .get(4..8)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(u32::MAX);
                    return StreamEnd::GoAway { code, data_frames };
                }
                (RST_STREAM, id) if id == stream_id => {
                    let code = received
                        .payload
                        .get(0..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(u32::MAX);
                    return StreamEnd::Reset { code, data_frames };
                }
                (kind, id) if id == stream_id && (kind == DATA || kind == HEADERS) => {
                    if kind == DATA && !received.payload.is_empty() {
                        data_frames += 1;
                    }
                    if received.flags & END_STREAM != 0 {
                        return StreamEnd::Ended { data_frames };
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads until the server's first SETTINGS frame: proof it speaks HTTP/2 to us.
    pub async fn await_server_settings(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            match self.next_frame().await? {
                None => return Ok(None),
                Some(frame) if frame.kind == SETTINGS && frame.flags & ACK == 0 => {
                    return Ok(Some(frame))
                }
                Some(_) => {}
            }
        }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}
