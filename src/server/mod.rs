//! Assembling a member: the data directory, its config and certificates, the start-up order
//! (store, write path, API, listener) and a clean shutdown on SIGINT/SIGTERM.
//!
//! Invariant: a directory holds a member exactly when `member.toml` exists; `init` writes it
//! last, after every key and certificate is durable.

pub mod datadir;
pub mod join;
mod renewal;
mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, ApiContext, Limits, MemberInfo};
use crate::identities;
use crate::mvcc::{MvccError, Store};
use crate::pki::{self, CertifiedKey, ClusterCa, PkiError};
use crate::proto::bulwarkpb::join_server::JoinServer;
use crate::proto::bulwarkpb::peer_server::PeerServer;
use crate::raft::network::PeerTls;
use crate::raft::peer_service::PeerService;
use crate::raft::{
    log_store::{LogStore, LogStoreError},
    Consensus, MemberNode, ProposeError, RaftTimings,
};
pub use datadir::Addresses;
use datadir::{create_private_dir, format_id, DataDir, MemberConfig};

/// How long a stopping member lets requests in flight finish before closing connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lifetime of the admin identity `init` writes.
const ADMIN_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
pub use crate::api::admin::ADMIN_NAME;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{} already holds a Bulwark member; use `bulwark serve --data-dir {}` to start it", .0.display(), .0.display())]
    AlreadyMember(PathBuf),
    #[error("{} is not empty; `bulwark init` needs an empty or new directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("{} holds no Bulwark member: run `bulwark init --data-dir {}` to create a new cluster, or `bulwark join` to join an existing one", .0.display(), .0.display())]
    NoMember(PathBuf),
    #[error("{path}: {1}", path = .0.display())]
    BadConfig(PathBuf, String),
    #[error("{path}: {1}", path = .0.display())]
    Io(PathBuf, std::io::Error),
    #[error("invalid listen address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("the member certificate {} has expired (the member was stopped past its renewal): \
             remove this member (`etcdctl member remove ID` against a running member) and join \
             again with `bulwark join` into an empty directory", .0.display())]
    CertificateExpired(PathBuf),
    #[error("store: {0}")]
    Store(#[from] MvccError),
    #[error("snapshot {path}: {1}; nothing was restored", path = .0.display())]
    BadSnapshot(PathBuf, String),
    #[error("raft log: {0}")]
    Log(#[from] LogStoreError),
    #[error("consensus: {0}")]
    Consensus(#[from] ProposeError),
    #[error(
        "consensus stopped: {0}; the member stops too (start it again to recover from its \
             data directory)"
    )]
    ConsensusStopped(String),
    #[error(transparent)]
    Rotation(#[from] identities::rotation::RotationError),
    #[error("installing the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ServerError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        ServerError::Io(path.to_path_buf(), error)
    }
}

pub struct InitOptions {
    pub name: String,
    pub addresses: Addresses,
}

pub struct ServeOptions {
    pub limits: Limits,
    pub timings: RaftTimings,
}

/// Creates a new one-member cluster in `dir`: a root CA, this member's certificate and the admin
/// identity. Refuses a directory that holds a member or anything else.
pub fn init(dir: &Path, options: &InitOptions) -> Result<DataDir, ServerError> {
    create_cluster(dir, options, None, |_| Ok(()))
}

/// Prepares `dir` as a new one-member cluster holding the keys of the snapshot at `snapshot`
/// (written by `etcdctl snapshot save` or `bulwark snapshot save` from a Bulwark member): the
/// recovery path when a quorum is lost for good. With `keep_ca_from` (an old member's data
/// directory) the new cluster keeps the old CA, so existing client identities keep working;
/// otherwise it gets a new CA and admin identity. The snapshot is checked whole (checksum) before
/// anything is written, and read from its file as it is restored (a backup can be larger than
/// memory).
pub fn restore(
    snapshot: &Path,
    dir: &Path,
    options: &InitOptions,
    keep_ca_from: Option<&Path>,
) -> Result<DataDir, ServerError> {
    let open = || {
        std::fs::File::open(snapshot)
            .map(std::io::BufReader::new)
            .map_err(|e| ServerError::io(snapshot, e))
    };
    let bad_snapshot = |e: crate::mvcc::SnapshotError| {
        ServerError::BadSnapshot(snapshot.to_path_buf(), e.to_string())
    };
    crate::mvcc::verify_snapshot(open()?).map_err(bad_snapshot)?;
    let ca = match keep_ca_from {
        Some(old) => {
            let old = DataDir::new(old);
            Some(ClusterCa::from_pem(
                &read(&old.ca_cert())?,
                &read(&old.ca_key())?,
            )?)
        }
        None => None,
    };
    create_cluster(dir, options, ca, |data| {
        let store = Store::open(&data.mvcc_db())?;
        store.restore_snapshot(open()?).map_err(bad_snapshot)?;
        // The old cluster's Raft position, membership and join tokens do not carry over: the
        // first start bootstraps a new one-member group and issues new tokens.
        store.forget_cluster()?;
        Ok(())
    })
}

/// Creates a new one-member cluster's directory: CA (new, or `ca`), member certificate, admin
/// identity, whatever `prepare_state` writes, and `member.toml` last.
fn create_cluster(
    dir: &Path,
    options: &InitOptions,
    ca: Option<ClusterCa>,
    prepare_state: impl FnOnce(&DataDir) -> Result<(), ServerError>,
) -> Result<DataDir, ServerError> {
    let data = DataDir::new(dir);
    if data.holds_member() {
        return Err(ServerError::AlreadyMember(data.root().to_path_buf()));
    }
    if !data.is_empty_or_missing()? {
        return Err(ServerError::NotEmpty(data.root().to_path_buf()));
    }
    let hosts = options.addresses.hosts()?;

    let ca = match ca {
        Some(ca) => ca,
        None => ClusterCa::generate(random_id())?,
    };
    let cluster_id = ca.cluster_id();
    let member_id = random_id();
    let member = ca.issue_member(&options.name, &hosts, identities::DEFAULT_MEMBER_CERT_TTL)?;
    let admin = ca.issue_client(ADMIN_NAME, ADMIN_CERT_TTL)?;

    create_private_dir(data.root())?;
    create_private_dir(&data.pki())?;
    create_private_dir(&data.admin())?;
    create_private_dir(&data.state())?;
    create_private_dir(&data.raft())?;
    write_public(&data.ca_cert(), ca.cert_pem())?;
    write_private(&data.ca_key(), ca.key_pem())?;
    write_public(&data.member_cert(), &member.cert_pem)?;
    write_private(&data.member_key(), &member.key_pem)?;
    write_public(&data.admin_ca_cert(), ca.cert_pem())?;
    write_public(&data.admin_cert(), &admin.cert_pem)?;
    write_private(&data.admin_key(), &admin.key_pem)?;
    prepare_state(&data)?;
    for dir in [data.pki(), data.admin(), data.root().to_path_buf()] {
        datadir::sync_dir(&dir)?;
    }
    data.write_config(&MemberConfig {
        name: options.name.clone(),
        cluster_id: format_id(cluster_id),
        member_id: format_id(member_id),
        listen_client: options.addresses.listen_client.clone(),
        listen_peer: options.addresses.listen_peer.clone(),
        advertise_client: options.addresses.advertise_client.clone(),
        advertise_peer: options.addresses.advertise_peer.clone(),
        bootstrap: true,
    })?;
    Ok(data)
}

/// Runs the member in `dir` until SIGINT or SIGTERM, then stops accepting requests, finishes the
/// ones in flight and closes the store.
pub async fn serve(dir: &Path, options: &ServeOptions) -> Result<(), ServerError> {
    let data = DataDir::new(dir);
    let config = data.read_config()?;
    for (key, cert) in [
        (data.member_key(), data.member_cert()),
        (data.admin_key(), data.admin_cert()),
    ] {
        pki::finish_interrupted_replace(&key, &cert).map_err(|e| ServerError::io(&cert, e))?;
    }
    let roots_pem = read(&data.ca_cert())?;
    let identity = CertifiedKey {
        cert_pem: read(&data.member_cert())?,
        key_pem: read(&data.member_key())?,
    };
    let expires = pki::identity_of(&pki::first_cert_der(&identity.cert_pem)?)?.not_after;
    if expires <= std::time::SystemTime::now() {
        return Err(ServerError::CertificateExpired(data.member_cert()));
    }
    let live_identity = pki::LiveIdentity::new(&identity)?;
    // The issuing CA is the root in ca.crt that matches ca.key (see `renewal`).
    let authority = pki::Authority::new(
        ClusterCa::from_pem(&roots_pem, &read(&data.ca_key())?)?,
        &roots_pem,
    )?;
    let tls = pki::server_tls_config(authority.trust(), &live_identity)?;
    let peer_tls_server = pki::peer_server_tls_config(authority.trust(), &live_identity)?;

    create_private_dir(&data.raft())?;
    let store = Arc::new(Store::open(&data.mvcc_db())?);
    if let Err(error) = renewal::follow_rotation(&data, &store, &authority) {
        // Not fatal: the member may still serve its peers and be removed; `renewal` says it
        // again.
        tracing::error!(%error, "CA rotation: cannot follow it");
    }
    let log = LogStore::open(&data.raft_log(), &data.raft_log_redb())?;
    let peer_tls = PeerTls::new(authority.trust(), &live_identity)?;
    let member_id = config.member_id()?;
    let consensus = Arc::new(
        Consensus::start(
            member_id,
            store.clone(),
            log,
            data.snapshots(),
            &data.legacy_snapshot(),
            peer_tls,
            &options.timings,
        )
        .await?,
    );

    let client_listener = bind(&config.listen_client).await?;
    let peer_listener = bind(&config.listen_peer).await?;
    let bound_client = local_addr(&client_listener, &config.listen_client)?.to_string();
    let bound_peer = local_addr(&peer_listener, &config.listen_peer)?.to_string();
    let client_url = format!(
        "https://{}",
        config.advertise_client.as_deref().unwrap_or(&bound_client)
    );
    let peer_addr = config
        .advertise_peer
        .clone()
        .unwrap_or_else(|| bound_peer.clone());
    if config.bootstrap {
        consensus
            .bootstrap(MemberNode {
                name: config.name.clone(),
                peer_addr: peer_addr.clone(),
                client_url: client_url.clone(),
                promote: false,
                cert_serial: pki::identity_of(&pki::first_cert_der(&identity.cert_pem)?)?
                    .serial_hex,
            })
            .await?;
        // The admin identity `init` wrote, if the operator has not moved it away.
        let issued_here: Vec<String> = std::iter::once(identity.cert_pem.clone())
            .chain(std::fs::read_to_string(data.admin_cert()).ok())
            .collect();
        ensure_cluster_records(
            &consensus,
            &store,
            authority.issuer().cert_pem(),
            &issued_here,
            member_id,
        )
        .await?;
    }
    let promoter = tokio::spawn(consensus.clone().promote_caught_up_learners());
    let heartbeats = tokio::spawn(consensus.clone().send_heartbeats());
    let lessor = crate::lease::Lessor::new(consensus.clone(), store.clone());
    let expiry = tokio::spawn(lessor.clone().run());
    let renewal = tokio::spawn(
        renewal::Renewal {
            data: DataDir::new(dir),
            name: config.name.clone(),
            member_id,
            hosts: config.addresses().hosts()?,
            authority: authority.clone(),
            identity: live_identity.clone(),
            consensus: consensus.clone(),
            store: store.clone(),
        }
        .run(),
    );
    let denial_sweeper = tokio::spawn(identities::sweep_expired_denials(
        consensus.clone(),
        store.clone(),
    ));
    let rotation_supervisor = tokio::spawn(identities::rotation::supervise(
        consensus.clone(),
        store.clone(),
    ));
    let context = Arc::new(ApiContext {
        store: store.clone(),
        consensus: consensus.clone(),
        lessor: lessor.clone(),
        ca: authority.clone(),
        member: MemberInfo {
            cluster_id: config.cluster_id()?,
            member_id,
        },
        limits: options.limits,
        nospace_seen: Default::default(),
    });

    // Caught from before the lines below announce the member: whoever stops it as soon as it
    // says it serves (a supervisor, a test) must get a clean stop, not the default action that
    // kills it. Until here a signal kills the process, so a start that hangs stays stoppable.
    let shutdown = ShutdownSignals::install().map_err(ServerError::Signals)?;
    println!(
        "bulwark: member {} ({}) of cluster {}",
        config.name, config.member_id, config.cluster_id
    );
    println!("bulwark: serving peers on {bound_peer} (advertised as {peer_addr})");
    println!("bulwark: serving clients on https://{bound_client}");
    let admin = if data.admin_cert().exists() {
        data.admin()
    } else {
        // A joined member has no admin identity of its own: any admin identity of the cluster
        // works, e.g. the one `init` wrote on the first member.
        PathBuf::from("ADMIN_DIR")
    };
    println!(
        "bulwark: connect with: etcdctl --endpoints={client_url} --cacert={} --cert={} --key={}",
        admin.join("ca.crt").display(),
        admin.join("client.crt").display(),
        admin.join("client.key").display()
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_stop = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let services = api::services(context);
    let client_router = tonic::transport::Server::builder()
        .add_service(services.kv)
        .add_service(services.maintenance)
        .add_service(services.cluster)
        .add_service(services.watch)
        .add_service(services.lease)
        .add_service(services.lock)
        .add_service(services.election)
        .add_service(services.admin)
        .add_service(services.identity);
    let peer_router = tonic::transport::Server::builder()
        .add_service(
            PeerServer::new(PeerService::new(consensus.clone(), lessor))
                .max_decoding_message_size(usize::MAX),
        )
        .add_service(JoinServer::new(join::JoinService {
            consensus: consensus.clone(),
            store: store.clone(),
            ca: authority.clone(),
        }));
    let deny: Arc<dyn transport::DenyList> = Arc::new(ReplicatedDenyList {
        store,
        consensus: consensus.clone(),
    });
    let clients = transport::serve_tls(
        client_listener,
        tls,
        client_router,
        deny.clone(),
        authority.trust().clone(),
        transport::Admission::IssuedOnly,
        wait_stop(stopped.clone()),
    );
    let peers = transport::serve_tls(
        peer_listener,
        peer_tls_server,
        peer_router,
        deny,
        authority.trust().clone(),
        transport::Admission::AnyTrusted,
        wait_stop(stopped),
    );
    let signal = async {
        shutdown.requested().await;
        let _ = stop.send(true);
    };
    // In a task of its own: it wakes at every metrics update, which must not poll the listeners.
    let consensus_stopped = {
        let consensus = consensus.clone();
        tokio::spawn(async move { consensus.stopped().await })
    };
    tokio::pin!(clients, peers, consensus_stopped);
    // A listener that fails, or consensus stopping on an error, ends the member too: it must not
    // linger half-serving.
    let result = tokio::select! {
        () = signal => {
            // Requests in flight may finish; a connection that stays open without them (an idle
            // or silent client) must not keep the member from stopping.
            let graceful = async { tokio::join!(&mut clients, &mut peers) };
            match tokio::time::timeout(SHUTDOWN_GRACE, graceful).await {
                Ok((client_result, peer_result)) => client_result.and(peer_result).map_err(Into::into),
                Err(_) => {
                    tracing::warn!("closing connections still open after {SHUTDOWN_GRACE:?}");
                    Ok(())
                }
            }
        }
        result = &mut clients => result.map_err(Into::into),
        result = &mut peers => result.map_err(Into::into),
        reason = &mut consensus_stopped => Err(ServerError::ConsensusStopped(
            reason.unwrap_or_else(|panic| panic.to_string()),
        )),
    };
    tracing::info!("stopped serving; stopping consensus");
    consensus_stopped.abort();
    promoter.abort();
    heartbeats.abort();
    expiry.abort();
    denial_sweeper.abort();
    rotation_supervisor.abort();
    renewal.abort();
    consensus.shutdown().await;
    result?;
    println!("bulwark: stopped");
    Ok(())
}

/// The deny list and the identity registry in the replicated cluster settings.
struct ReplicatedDenyList {
    store: Arc<Store>,
    consensus: Arc<Consensus>,
}

impl transport::DenyList for ReplicatedDenyList {
    fn is_issued<'a>(&'a self, serial_hex: &'a str) -> futures::future::BoxFuture<'a, bool> {
        Box::pin(async move {
            let known = || {
                identities::issued(&self.store, serial_hex).unwrap_or_else(|error| {
                    tracing::error!(%error, "reading the identity registry failed");
                    None
                })
            };
            if known().is_some() {
                return true;
            }
            // Issued a moment ago and not applied here yet, or never issued: ask the cluster.
            self.consensus.read_barrier().await.is_ok() && known().is_some()
        })
    }

    fn is_denied(&self, serial_hex: &str) -> bool {
        match self
            .store
            .setting(&crate::identities::deny_setting(serial_hex))
        {
            Ok(entry) => entry.is_some(),
            Err(error) => {
                // Fail closed: a member that cannot read its state cannot vouch for anyone.
                tracing::error!(%error, "reading the deny list failed; refusing the certificate");
                true
            }
        }
    }
}

/// A new cluster's first start: creates each role's join token once, and records the first
/// member's and the admin's certificates in the identity registry, through consensus, so every
/// member can check and list them. Idempotent: whatever exists is kept.
async fn ensure_cluster_records(
    consensus: &Consensus,
    store: &Store,
    ca_cert_pem: &str,
    issued_here: &[String],
    member_id: u64,
) -> Result<(), ServerError> {
    for role in identities::TOKEN_ROLES {
        let setting = identities::token_setting(role).expect("a token role");
        if store.setting(&setting)?.is_none() {
            let token = pki::JoinToken::generate(ca_cert_pem)?;
            consensus
                .propose(identities::set_setting(
                    setting,
                    token.to_string().into_bytes(),
                ))
                .await?;
        }
    }
    for cert_pem in issued_here {
        let mut issued = identities::IssuedCertificate::of_pem(cert_pem)?;
        if issued.role == "member" {
            issued.member_id = member_id;
        }
        if identities::issued(store, &issued.serial)?.is_none() {
            consensus.propose(issued.record()).await?;
        }
    }
    Ok(())
}

async fn bind(address: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|e| ServerError::Listen(address.to_string(), e))
}

fn local_addr(listener: &TcpListener, address: &str) -> Result<std::net::SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|e| ServerError::Listen(address.to_string(), e))
}

/// SIGTERM and SIGINT, caught from the moment [`ShutdownSignals::install`] returns (by `serve`
/// and by `bench`).
pub(crate) struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub(crate) fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT since [`ShutdownSignals::install`].
    pub(crate) async fn requested(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        tracing::info!("shutdown requested");
    }
}

fn host_of(address: &str) -> Result<String, ServerError> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| ServerError::BadAddress(address.to_string()))?;
    port.parse::<u16>()
        .map_err(|_| ServerError::BadAddress(address.to_string()))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

/// Turns transparent huge pages off for this process, before the heap grows (Linux only; a
/// no-op elsewhere, and a refusal is only logged).
///
/// A member's heap grows steadily under writes (history, caches), and with THP every fresh 2 MiB
/// region is zeroed whole at its first touch: 7.8% of the members' CPU in the put profile went to
/// those faults, 1.7% with 4 KiB pages (`docs/benchmarks.md`, eighth session); Redis and
/// MongoDB also advise running without THP. The setting is inherited by child processes, so
/// only the server commands take it (the bench's etcd members keep the system's).
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not turn transparent huge pages off; the heap's page faults cost more"
            );
        }
    }
}

/// A fresh member id.
pub fn random_member_id() -> u64 {
    random_id()
}

fn random_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|e| ServerError::io(path, e))
}

fn write_public(path: &Path, contents: &str) -> Result<(), ServerError> {
    use std::io::Write;
    let mut file = std::fs::File::create_new(path).map_err(|e| ServerError::io(path, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| ServerError::io(path, e))
}

fn write_private(path: &Path, contents: &str) -> Result<(), ServerError> {
    pki::write_private_file(path, contents.as_bytes()).map_err(|e| ServerError::io(path, e))
}
