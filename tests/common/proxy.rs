//! A fault-injecting TCP proxy in front of every member's peer port: the test's model of the
//! network between members.
//!
//! Each member listens on its real peer address and *advertises* a proxy address
//! (`--advertise-peer`), so every other member reaches it through the proxy. One [`Network`]
//! holds one proxy listener per member ("node"), forwarding to that member's real listener.
//!
//! # Links, not connections
//!
//! Faults are set per ordered pair of nodes, a *link*: `(from, to)` is every byte `from` sends to
//! `to`, whoever opened the TCP connection carrying it (a request from `from` on its connection to
//! `to`, or a response from `from` on a connection `to` opened). So `(a, b)` and `(b, a)` are the
//! two directions between two members, and a one-way partition is one link.
//!
//! A proxy only sees `127.0.0.1:EPHEMERAL` as the source of a connection. It finds which member
//! opened it the way `ss -p` does: the client socket's inode in `/proc/net/tcp`, then the member
//! process holding that inode in `/proc/PID/fd`. A connection from anyone else (the test itself,
//! a process that is not a member) is from an unknown node, and faults never apply to it.
//!
//! # Faults
//!
//! - [`Fault::Pass`]: bytes flow.
//! - [`Fault::Drop`]: every connection carrying the link is closed at once, and new ones are
//!   closed as soon as they are accepted (a peer that refuses connections, or a dropped route).
//! - [`Fault::Blackhole`]: connections are accepted and kept open, but bytes on the link are held
//!   (not read from the sender, not delivered): the sender's writes stall, requests time out. When
//!   the link heals the held bytes flow again, as TCP would retransmit them, so a short
//!   blackhole is a long delay and a long one usually ends in the endpoints' own timeouts.
//! - [`Fault::Delay`]: every chunk is delivered that long after the proxy read it, in order.
//!
//! A connection ends (both sockets closed) as soon as either direction ends: gRPC over TLS never
//! half-closes on purpose, so TCP half-close is not modelled.
//!
//! # Resources
//!
//! One thread running a current-thread tokio runtime (plus at most two blocking threads for the
//! `/proc` look-ups), one task per proxy listener and three per connection, at most
//! [`MAX_CONNECTIONS`] connections per node. Dropping the [`Network`] stops the runtime: every
//! listener and connection closes.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What happens to the bytes of one link (one direction between two nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Drop,
    Blackhole,
    Delay(Duration),
}

/// A node of the network: index of a proxy listener, in the order of [`Network::add_node`].
pub type Node = usize;

/// Connections a node's proxy keeps at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// How long the proxy waits to connect to a member's real listener.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks in flight per direction (backpressure for delayed links).
const QUEUED_CHUNKS: usize = 64;
const CHUNK: usize = 64 * 1024;
/// Proxy events kept for failure messages.
const EVENTS_KEPT: usize = 400;
/// Bound on stopping the runtime when the network is dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct NodeState {
    /// The proxy's listening address: what the member advertises.
    addr: SocketAddr,
    /// The member's real peer listener; `None` until it is known (connections are closed).
    upstream: Option<SocketAddr>,
    /// The member's process id (0: not running), shared with its `Member`.
    pid: Arc<AtomicU32>,
    connections: usize,
}

#[derive(Default)]
struct State {
    nodes: Vec<NodeState>,
    /// Links that do not pass; a missing link passes.
    faults: BTreeMap<(Node, Node), Fault>,
    events: VecDeque<String>,
}

impl State {
    /// The fault of the link `from -> to`; a link with an unknown end always passes.
    fn fault(&self, from: Option<Node>, to: Option<Node>) -> Fault {
        match (from, to) {
            (Some(from), Some(to)) => self.faults.get(&(from, to)).copied().unwrap_or(Fault::Pass),
            _ => Fault::Pass,
        }
    }

    fn event(&mut self, text: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(text);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every fault change: connections re-read their links.
    changes: watch::Sender<u64>,
}

impl Shared {
    fn fault(&self, from: Option<Node>, to: Option<Node>) -> Fault {
        self.state.lock().unwrap().fault(from, to)
    }
}

/// The proxies of one cluster; see the module documentation.
pub struct Network {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Network {
    /// Starts the proxy thread, with no nodes yet.
    pub fn start() -> Network {
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changes,
        });
        let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("peer-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(2)
                    .build()
                    .expect("building the proxy runtime");
                handle_sender
                    .send(runtime.handle().clone())
                    .expect("handing out the proxy runtime");
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Cancels every task: listeners and connections close.
                runtime.shutdown_timeout(STOP_TIMEOUT);
            })
            .expect("starting the proxy thread");
        let runtime = handle_receiver.recv().expect("the proxy runtime");
        Network {
            shared,
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A new node: a proxy listening on a fresh loopback port (held from now on, so no other
    /// process can take it). Its member is not known yet: see [`Network::set_member`].
    pub fn add_node(&self) -> (Node, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a proxy port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let node = {
            let mut state = self.shared.state.lock().unwrap();
            state.nodes.push(NodeState {
                addr,
                upstream: None,
                pid: Arc::new(AtomicU32::new(0)),
                connections: 0,
            });
            let node = state.nodes.len() - 1;
            state.event(format!("node {node} listens on {addr}"));
            node
        };
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio proxy listener");
            accept_loop(shared, node, listener).await;
        });
        (node, addr)
    }

    /// Tells the proxy of `node` where its member really listens, and which process it is (for
    /// recognising the connections it opens).
    pub fn set_member(&self, node: Node, upstream: SocketAddr, pid: Arc<AtomicU32>) {
        let mut state = self.shared.state.lock().unwrap();
        state.nodes[node].upstream = Some(upstream);
        state.nodes[node].pid = pid;
        state.event(format!("node {node} forwards to {upstream}"));
    }

    /// The proxy address of `node` (what its member advertises).
    pub fn addr(&self, node: Node) -> SocketAddr {
        self.shared.state.lock().unwrap().nodes[node].addr
    }

    /// Sets the fault of the link `from -> to`.
    pub fn set_link(&self, from: Node, to: Node, fault: Fault) {
        self.update(|state| {
            if fault == Fault::Pass {
                state.faults.remove(&(from, to));
            } else {
                state.faults.insert((from, to), fault);
            }
            state.event(format!("link {from}->{to}: {fault:?}"));
        });
    }

    /// Sets both directions between `a` and `b`.
    pub fn set_both(&self, a: Node, b: Node, fault: Fault) {
        self.set_link(a, b, fault);
        self.set_link(b, a, fault);
    }

    /// A network partition between `a` and `b`: both directions blackholed.
    pub fn partition(&self, a: Node, b: Node) {
        self.set_both(a, b, Fault::Blackhole);
    }

    /// Partitions `node` from every other node.
    pub fn isolate(&self, node: Node) {
        let count = self.shared.state.lock().unwrap().nodes.len();
        for other in (0..count).filter(|other| *other != node) {
            self.partition(node, other);
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.update(|state| {
            state.faults.clear();
            state.event("healed".into());
        });
    }

    /// The last proxy events (connections, faults), oldest first, for failure messages.
    pub fn events(&self) -> String {
        let state = self.shared.state.lock().unwrap();
        let mut text = String::from("===== proxy events =====\n");
        for event in &state.events {
            text.push_str(event);
            text.push('\n');
        }
        text
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.shared.state.lock().unwrap());
        self.shared
            .changes
            .send_modify(|generation| *generation += 1);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, node: Node, listener: TcpListener) {
    loop {
        let (client, client_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut state = shared.state.lock().unwrap();
            if state.nodes[node].connections >= MAX_CONNECTIONS {
                state.event(format!("node {node}: too many connections, closed one"));
                continue;
            }
            state.nodes[node].connections += 1;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let _count = ConnectionCount {
                shared: shared.clone(),
                node,
            };
            connection(&shared, node, client, client_addr).await;
        });
    }
}

/// Decrements the node's connection count when a connection task ends (or is cancelled).
struct ConnectionCount {
    shared: Arc<Shared>,
    node: Node,
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.nodes[self.node].connections -= 1;
        }
    }
}

/// One proxied connection to `node`, from `client_addr`.
async fn connection(shared: &Arc<Shared>, node: Node, client: TcpStream, client_addr: SocketAddr) {
    let Ok(proxy_addr) = client.local_addr() else {
        return;
    };
    let members: Vec<(Node, u32)> = {
        let state = shared.state.lock().unwrap();
        state
            .nodes
            .iter()
            .enumerate()
            .map(|(index, n)| (index, n.pid.load(Ordering::SeqCst)))
            .filter(|(index, pid)| *pid != 0 && *index != node)
            .collect()
    };
    let source =
        tokio::task::spawn_blocking(move || source_node(client_addr, proxy_addr, &members))
            .await
            .ok()
            .flatten();
    let (up, down) = ((source, Some(node)), (Some(node), source));
    let upstream = {
        let mut state = shared.state.lock().unwrap();
        let source_name = source.map_or("unknown".to_string(), |s| s.to_string());
        let faults = (state.fault(up.0, up.1), state.fault(down.0, down.1));
        state.event(format!(
            "node {node}: connection from {client_addr} (node {source_name}), links {faults:?}"
        ));
        if faults.0 == Fault::Drop || faults.1 == Fault::Drop {
            return;
        }
        state.nodes[node].upstream
    };
    let Some(upstream) = upstream else {
        return;
    };
    let server =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
            Ok(Ok(server)) => server,
            _ => return, // the member is down: the client sees the connection closed
        };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(shared, up, client_read, server_write) => {}
        () = pump(shared, down, server_read, client_write) => {}
    }
}

/// Copies `reader` to `writer` under the fault of `link`, until either end closes or the link
/// drops.
async fn pump(
    shared: &Arc<Shared>,
    link: (Option<Node>, Option<Node>),
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
    let deliver = async move {
        while let Some((at, bytes)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let read = async move {
        let mut changes = shared.changes.subscribe();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                read = reader.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                () = until_dropped(shared, &mut changes, link) => return,
            };
            let chunk = buffer[..n].to_vec();
            loop {
                let deliver_at = match shared.fault(link.0, link.1) {
                    Fault::Pass => Instant::now(),
                    Fault::Delay(delay) => Instant::now() + delay,
                    Fault::Drop => return,
                    Fault::Blackhole => {
                        // Hold the chunk (and stop reading) until the link changes.
                        if changes.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                if queue.send((deliver_at, chunk)).await.is_err() {
                    return;
                }
                break;
            }
        }
    };
    tokio::select! {
        () = deliver => {}
        () = read => {}
    }
}

/// Resolves once `link` is set to [`Fault::Drop`].
async fn until_dropped(
    shared: &Shared,
    changes: &mut watch::Receiver<u64>,
    link: (Option<Node>, Option<Node>),
) {
    loop {
        if shared.fault(link.0, link.1) == Fault::Drop {
            return;
        }
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Which of `members` (node, pid) opened the TCP connection from `client` to `proxy`: the
/// client socket's inode from `/proc/net/tcp`, then the process holding it.
fn source_node(client: SocketAddr, proxy: SocketAddr, members: &[(Node, u32)]) -> Option<Node> {
    let inode = socket_inode(client, proxy)?;
    let wanted = format!("socket:[{inode}]");
    members.iter().find_map(|&(node, pid)| {
        let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        descriptors
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
            .then_some(node)
    })
}

/// The inode of the IPv4 TCP socket whose local address is `local` and remote is `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (local, remote) = (proc_net_address(local)?, proc_net_address(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()) {
            fields.get(9)?.parse().ok().filter(|inode| *inode != 0)
        } else {
            None
        }
    })
}

/// An address as `/proc/net/tcp` prints it: the IPv4 address as the kernel's in-memory u32, in
/// hex, then the port in hex.
fn proc_net_address(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}
