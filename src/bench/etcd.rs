//! Starting a real etcd cluster of the same size beside Bulwark's: every member started at once
//! with a static `--initial-cluster`, the same Raft timings as Bulwark's, and by default the same
//! security: client and peer TLS with client certificates required, from a throw-away CA made
//! with Bulwark's own [`ClusterCa`] (ECDSA P-256, like Bulwark's certificates).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::cluster::{Cluster, Member, StoreKind};
use super::process::free_port;
use super::{BenchError, QUOTA_BACKEND_BYTES, RAFT_ELECTION_TIMEOUT_MS, RAFT_HEARTBEAT_MS};
use crate::pki::{write_private_file, ClusterCa};

/// Lifetime of the certificates made for one run.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How to get etcd on Debian.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install etcd-server`, or pass --etcd-bin PATH";

/// The etcd binary: `program` itself when it names a path, else the first match on `PATH`.
pub fn find(program: &Path) -> Result<PathBuf, BenchError> {
    let missing = || BenchError::EtcdMissing(program.to_path_buf());
    if program.components().count() > 1 {
        return if program.is_file() {
            Ok(program.to_path_buf())
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").ok_or_else(missing)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

/// Starts `size` etcd members under `dir/etcd/` and waits until each serves linearizable reads.
pub async fn start(
    program: &Path,
    dir: &Path,
    size: usize,
    tls: bool,
) -> Result<Cluster, BenchError> {
    let root = dir.join("etcd");
    std::fs::create_dir_all(&root).map_err(|e| BenchError::io(&root, e))?;
    let scheme = if tls { "https" } else { "http" };
    let (client_tls, tls_flags) = if tls {
        let (client, flags) = make_certificates(&root.join("pki"))?;
        (Some(client), flags)
    } else {
        (None, Vec::new())
    };
    let names: Vec<String> = (0..size).map(|index| format!("e{index}")).collect();
    let mut ports = Vec::with_capacity(size);
    for _ in 0..size {
        ports.push((free_port()?, free_port()?));
    }
    let initial_cluster = names
        .iter()
        .zip(&ports)
        .map(|(name, (_, peer))| format!("{name}={scheme}://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::with_capacity(size);
    for (name, (client, peer)) in names.iter().zip(&ports) {
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("{scheme}://127.0.0.1:{peer}");
        let data_dir = root.join(name);
        let mut args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "bulwark-bench",
            "--heartbeat-interval",
            &RAFT_HEARTBEAT_MS.to_string(),
            "--election-timeout",
            &RAFT_ELECTION_TIMEOUT_MS.to_string(),
            "--quota-backend-bytes",
            &QUOTA_BACKEND_BYTES.to_string(),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn",
        ]
        .map(String::from)
        .to_vec();
        args.extend(tls_flags.iter().cloned());
        // etcd ignores the initial-cluster flags once its data directory holds a member, so the
        // same flags start it again.
        let mut member = Member::new(
            name,
            client_url,
            &data_dir,
            program,
            args.clone(),
            &root.join("logs"),
        );
        member.launch(&args, &[])?;
        members.push(member);
    }
    let mut cluster = Cluster::new(StoreKind::Etcd, members, client_tls);
    cluster.wait_serving().await?;
    Ok(cluster)
}

/// A CA, one certificate every member serves and dials peers with, and the bench's client
/// identity; writes the files etcd reads into `pki` and returns the client TLS configuration and
/// etcd's TLS flags.
fn make_certificates(pki: &Path) -> Result<(ClientTlsConfig, Vec<String>), BenchError> {
    std::fs::create_dir_all(pki).map_err(|e| BenchError::io(pki, e))?;
    let ca = ClusterCa::generate(rand::random())?;
    let member = ca.issue_member("etcd-member", &[], CERT_TTL)?;
    let client = ca.issue_client("bench", CERT_TTL)?;
    let ca_file = pki.join("ca.crt");
    let cert_file = pki.join("member.crt");
    let key_file = pki.join("member.key");
    let write =
        |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| BenchError::io(path, e));
    write(&ca_file, ca.cert_pem())?;
    write(&cert_file, &member.cert_pem)?;
    write_private_file(&key_file, member.key_pem.as_bytes())
        .map_err(|e| BenchError::io(&key_file, e))?;
    let [ca_file, cert_file, key_file] =
        [ca_file, cert_file, key_file].map(|path| path.display().to_string());
    let flags = [
        "--cert-file",
        &cert_file,
        "--key-file",
        &key_file,
        "--trusted-ca-file",
        &ca_file,
        "--client-cert-auth",
        "--peer-cert-file",
        &cert_file,
        "--peer-key-file",
        &key_file,
        "--peer-trusted-ca-file",
        &ca_file,
        "--peer-client-cert-auth",
    ]
    .map(String::from)
    .to_vec();
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(client.cert_pem, client.key_pem));
    Ok((client_tls, flags))
}
