//! `bulwark status`: every member's state as `etcdctl endpoint status --cluster` shows it
//! (Maintenance.Status), plus the certificate each member presents right now: when it expires
//! and which root issued it, read from a verified TLS handshake with that member.

use std::time::{Duration, SystemTime};

use clap::Args;

use super::client::{channel, channel_to, identity_pems, with_timeout, ConnectArgs};
use super::identity::utc;
use super::output::{bordered_table, Format};
use crate::identities::unix_seconds;
use crate::pki::{self, CertifiedKey, LiveIdentity, LiveTrust, PeerIdentity};
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::{MemberListRequest, StatusRequest, StatusResponse};

/// A member that has not finished a TLS handshake by then is reported as unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

/// One member's row.
struct MemberRow {
    id: u64,
    name: String,
    endpoint: String,
    status: Result<StatusResponse, String>,
    certificate: Result<PeerIdentity, String>,
}

pub async fn status(args: StatusArgs) -> Result<(), String> {
    let connect = &args.connect;
    let mut cluster = ClusterClient::new(channel(connect).await?);
    let members = with_timeout(cluster.member_list(MemberListRequest {
        linearizable: false,
    }))
    .await?
    .members;
    let (ca, cert, key) = identity_pems(connect)?;
    let tls = pki::client_tls_config(
        &LiveTrust::new(&ca).map_err(|e| e.to_string())?,
        &LiveIdentity::new(&CertifiedKey {
            cert_pem: cert,
            key_pem: key,
        })
        .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for member in members {
        let Some(endpoint) = member.client_ur_ls.first().cloned() else {
            continue; // added with `member add`, not started yet
        };
        let status = async {
            let mut maintenance = MaintenanceClient::new(channel_to(connect, &endpoint).await?);
            with_timeout(maintenance.status(StatusRequest {})).await
        }
        .await;
        let certificate = presented_certificate(&endpoint, tls.clone()).await;
        rows.push(MemberRow {
            id: member.id,
            name: member.name,
            endpoint,
            status,
            certificate,
        });
    }
    match connect.format() {
        Format::Json => println!("{}", json(&rows)),
        _ => print!("{}", table(&rows)),
    }
    Ok(())
}

/// The certificate the member at `endpoint` (https://HOST:PORT) presents, from a handshake
/// verified against the cluster's roots.
async fn presented_certificate(
    endpoint: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<PeerIdentity, String> {
    let address = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("{endpoint}: not an https:// URL"))?
        .trim_end_matches('/');
    pki::presented_identity(address, tls, HANDSHAKE_TIMEOUT).await
}

fn json(rows: &[MemberRow]) -> serde_json::Value {
    let rows: Vec<_> = rows
        .iter()
        .map(|row| {
            let mut entry = serde_json::json!({
                "id": format!("{:x}", row.id),
                "name": row.name,
                "endpoint": row.endpoint,
            });
            match &row.status {
                Ok(status) => {
                    entry["status"] = serde_json::json!({
                        "version": status.version,
                        "db_size": status.db_size,
                        "db_size_in_use": status.db_size_in_use,
                        "leader": format!("{:x}", status.leader),
                        "is_leader": status.leader == row.id,
                        "is_learner": status.is_learner,
                        "raft_term": status.raft_term,
                        "raft_index": status.raft_index,
                        "raft_applied_index": status.raft_applied_index,
                        "errors": status.errors,
                    })
                }
                Err(error) => entry["status_error"] = error.clone().into(),
            }
            match &row.certificate {
                Ok(cert) => {
                    entry["certificate"] = serde_json::json!({
                        "serial": cert.serial_hex,
                        "issuer": cert.issuer,
                        "not_after": unix_seconds(cert.not_after),
                        "seconds_left": cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .map_or(0, |left| left.as_secs()),
                    })
                }
                Err(error) => entry["certificate_error"] = error.clone().into(),
            }
            entry
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn table(rows: &[MemberRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                row.endpoint.clone(),
                format!("{:x}", row.id),
                row.name.clone(),
            ];
            match &row.status {
                Ok(status) => cells.extend([
                    status.version.clone(),
                    human_size(status.db_size),
                    (status.leader == row.id).to_string(),
                    status.is_learner.to_string(),
                    status.raft_term.to_string(),
                    status.raft_index.to_string(),
                    status.raft_applied_index.to_string(),
                    status.errors.join(", "),
                ]),
                Err(error) => {
                    cells.extend(std::iter::repeat_n(String::new(), 7).chain([error.clone()]))
                }
            }
            match &row.certificate {
                Ok(cert) => cells.extend([utc(unix_seconds(cert.not_after)), cert.issuer.clone()]),
                Err(error) => cells.extend([error.clone(), String::new()]),
            }
            cells
        })
        .collect();
    bordered_table(
        &[
            "ENDPOINT",
            "ID",
            "NAME",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
            "CERT EXPIRES",
            "CERT ISSUER",
        ],
        &cells,
        usize::MAX,
    )
}

/// Bytes as etcdctl prints them: "25 kB", "1.2 MB" (powers of 1000).
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_etcdctl() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(25_000), "25 kB");
        assert_eq!(human_size(1_234_567), "1.2 MB");
    }
}
