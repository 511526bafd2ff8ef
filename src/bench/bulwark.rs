//! Starting a Bulwark cluster the way its users do: `bulwark init` for the first member, then
//! `bulwark join` with the manager join token for each other one, one at a time, each a voter
//! before the next joins. The members are this very executable, so the bench measures the build
//! it is part of.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::cluster::{Cluster, Member, StoreKind, START_TIMEOUT};
use super::process::free_port;
use super::{BenchError, QUOTA_BACKEND_BYTES, RAFT_ELECTION_TIMEOUT_MS, RAFT_HEARTBEAT_MS};
use crate::proto::bulwarkpb::admin_client::AdminClient;
use crate::proto::bulwarkpb::ShowTokenRequest;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::MemberListRequest;
use crate::server::datadir::DataDir;

/// What a member prints, followed by its client URL, once it serves.
const SERVING_PREFIX: &str = "bulwark: serving clients on ";
/// What a join refused because the previous joiner's promotion is still in flight prints; the
/// join is simply tried again.
const CONCURRENT_CHANGE: &str = "already undergoing a configuration change";
/// Pause before retrying a refused start.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How a new member comes into the cluster.
enum Origin<'a> {
    Init,
    Join { token: &'a str, peer: &'a str },
}

/// Starts `size` members under `dir/bulwark/` and waits until each serves linearizable reads.
pub async fn start(dir: &Path, size: usize) -> Result<Cluster, BenchError> {
    let program = std::env::current_exe()
        .map_err(|e| BenchError::io(Path::new("the bulwark executable"), e))?;
    let root = dir.join("bulwark");
    let (first, first_peer) = start_member(&program, &root, "m0", &Origin::Init).await?;
    let admin = DataDir::new(&root.join("m0"));
    let read = |path: PathBuf| std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(admin.admin_ca_cert())?))
        .identity(Identity::from_pem(
            read(admin.admin_cert())?,
            read(admin.admin_key())?,
        ));
    let mut cluster = Cluster::new(StoreKind::Bulwark, vec![first], Some(tls));
    if size > 1 {
        let token = manager_token(&cluster).await?;
        for index in 1..size {
            let name = format!("m{index}");
            let origin = Origin::Join {
                token: &token,
                peer: &first_peer,
            };
            let (joiner, _) = start_member(&program, &root, &name, &origin).await?;
            cluster.members.push(joiner);
            wait_voter(&cluster, &name).await?;
        }
    }
    cluster.wait_serving().await?;
    Ok(cluster)
}

/// `bulwark init` or `bulwark join` one member on fresh loopback ports and waits for its serving
/// line; returns it with its peer address. A start that fails because a port was taken in the
/// meantime, or a join refused during the previous joiner's promotion, is tried again.
async fn start_member(
    program: &Path,
    root: &Path,
    name: &str,
    origin: &Origin<'_>,
) -> Result<(Member, String), BenchError> {
    let data_dir = root.join(name);
    let data = data_dir.display().to_string();
    // The flags `serve` takes again after a restart.
    let timings = [
        "--heartbeat-interval".to_string(),
        RAFT_HEARTBEAT_MS.to_string(),
        "--election-timeout".to_string(),
        RAFT_ELECTION_TIMEOUT_MS.to_string(),
        "--quota-backend-bytes".to_string(),
        QUOTA_BACKEND_BYTES.to_string(),
    ];
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let client = format!("127.0.0.1:{}", free_port()?);
        let peer = format!("127.0.0.1:{}", free_port()?);
        let (mut args, env) = match origin {
            Origin::Init => (vec!["init".to_string()], vec![]),
            // The token goes in the environment, not on a command line every user can read.
            Origin::Join { token, peer } => (
                vec!["join".to_string(), "--peer".to_string(), peer.to_string()],
                vec![("BULWARK_JOIN_TOKEN", *token)],
            ),
        };
        args.extend(
            [
                "--data-dir",
                &data,
                "--name",
                name,
                "--listen-client",
                &client,
                "--listen-peer",
                &peer,
            ]
            .map(String::from),
        );
        args.extend(timings.iter().cloned());
        let mut restart_args = vec!["serve".to_string(), "--data-dir".to_string(), data.clone()];
        restart_args.extend(timings.iter().cloned());
        let mut member = Member::new(
            name,
            format!("https://{client}"),
            &data_dir,
            program,
            restart_args,
            &root.join("logs"),
        );
        member.launch(&args, &env)?;
        match member
            .process_mut()?
            .wait_for_line(SERVING_PREFIX, START_TIMEOUT)
            .await
        {
            Ok(_) => return Ok((member, peer)),
            Err(BenchError::Exited { output, .. })
                if worth_retrying(&output) && Instant::now() < deadline =>
            {
                drop(member);
                let _ = std::fs::remove_dir_all(&data_dir);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(error),
        }
    }
}

fn worth_retrying(output: &str) -> bool {
    let lowered = output.to_lowercase();
    lowered.contains("address already in use")
        || lowered.contains("cannot listen")
        || lowered.contains(CONCURRENT_CHANGE)
}

/// The manager join token, from the first member (what `bulwark token show manager` prints).
async fn manager_token(cluster: &Cluster) -> Result<String, BenchError> {
    let mut admin = AdminClient::new(cluster.channel(0).await?);
    let response = admin
        .show_token(ShowTokenRequest {
            role: "manager".to_string(),
        })
        .await
        .map_err(|status| BenchError::request(StoreKind::Bulwark, "show token", status))?;
    Ok(response.into_inner().token)
}

/// Waits until the first member lists `name` as a voter (a joiner is a learner until it has
/// caught up), bounded by [`START_TIMEOUT`].
async fn wait_voter(cluster: &Cluster, name: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut members = ClusterClient::new(cluster.channel(0).await?);
    loop {
        let listed = members
            .member_list(MemberListRequest { linearizable: true })
            .await
            .map(|response| response.into_inner().members);
        if let Ok(listed) = &listed {
            if listed.iter().any(|m| m.name == name && !m.is_learner) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::NotReady {
                process: name.to_string(),
                waited: START_TIMEOUT,
                output: format!("not a voter; last member list: {listed:?}"),
            });
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
