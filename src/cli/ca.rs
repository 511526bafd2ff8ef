//! `bulwark ca status|update|rotate`: the cluster CA from the command line (admin identity only).

use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::client::{channel, with_timeout, ConnectArgs};
use super::identity::{
    current_identity, identity_client, parse_ttl, refresh_trust, renew_identity, utc,
};
use super::output::{bordered_table, identity_info_json, Format};
use crate::proto::bulwarkpb::admin_client::AdminClient;
use crate::proto::bulwarkpb::{
    CaStatusRequest, CaStatusResponse, IdentityInfo, RotateCaRequest, UpdateCaRequest,
};

/// How long `ca rotate` follows a rotation before leaving it to run on its own.
const FOLLOW_LIMIT: Duration = Duration::from_secs(15 * 60);
const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);
/// How long `ca rotate` waits for the members to issue from the new root.
const RENEW_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    action: CaAction,
}

#[derive(Debug, clap::Subcommand)]
enum CaAction {
    /// Show the roots, a rotation's progress, and each member's and identity's certificate.
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Change the CA's settings (admin identity only).
    Update {
        /// Lifetime of member certificates, e.g. 90d or 1h; members renew to it at once when
        /// theirs lives longer, and at 50-80 % of it from then on.
        #[arg(long, value_parser = parse_ttl)]
        cert_ttl: Duration,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Replace the root CA with no downtime: a new root, cross-signed by the current one;
    /// members and renewing clients (`bulwark agent`) move to it, then the old root is retired
    /// and the join tokens change. Identities that do not renew in time must log in again.
    Rotate {
        /// How long the old root stays trusted at least, for renewing clients to move, e.g. 60s
        /// or 10m (0s: retire as soon as every member has moved).
        #[arg(long, value_parser = parse_grace, default_value = "60s")]
        grace: Duration,
        /// Start the rotation and return, instead of following it until the old root is
        /// retired.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    if text.trim_end_matches(['s', 'm', 'h', 'd']) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_ttl(text)
}

pub async fn ca(args: CaArgs) -> Result<(), String> {
    match args.action {
        CaAction::Update { cert_ttl, connect } => {
            let mut admin = AdminClient::new(channel(&connect).await?);
            let updated = with_timeout(admin.update_ca(UpdateCaRequest {
                member_cert_ttl_seconds: cert_ttl.as_secs(),
            }))
            .await?;
            println!(
                "member certificates now live {}s; members renew to it",
                updated.member_cert_ttl_seconds
            );
            Ok(())
        }
        CaAction::Status { connect } => {
            let format = connect.format();
            let status = ca_status(&connect).await?;
            match format {
                Format::Json => println!("{}", status_json(&status)),
                _ => print_status(&status),
            }
            Ok(())
        }
        CaAction::Rotate {
            grace,
            detach,
            connect,
        } => rotate(grace, detach, &connect).await,
    }
}

async fn ca_status(connect: &ConnectArgs) -> Result<CaStatusResponse, String> {
    let mut admin = AdminClient::new(channel(connect).await?);
    with_timeout(admin.ca_status(CaStatusRequest {})).await
}

async fn rotate(grace: Duration, detach: bool, connect: &ConnectArgs) -> Result<(), String> {
    let mut admin = AdminClient::new(channel(connect).await?);
    let started = with_timeout(admin.rotate_ca(RotateCaRequest {
        grace_seconds: Some(grace.as_secs()),
    }))
    .await?;
    let root = started.new_root.unwrap_or_default();
    println!(
        "CA rotation started: new root {} (sha256 {}); the old root stays trusted until every \
         member has moved and at least {}s have passed",
        root.subject,
        root.digest,
        grace.as_secs()
    );
    // The identity this command runs as moves now, or the retirement would lock it out.
    let own = connect.identity_directory();
    if let Some(dir) = &own {
        renew_from(dir, &connect.endpoint_list()?, &root.subject).await?;
    }
    if detach {
        println!("follow it with `bulwark ca status`");
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + FOLLOW_LIMIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let status = match ca_status(connect).await {
            Ok(status) => status,
            Err(error) => {
                eprintln!("asking for the rotation's progress failed (retrying): {error}");
                continue;
            }
        };
        let Some(rotation) = status.rotation else {
            continue;
        };
        if rotation.generation != started.generation {
            return Err("another rotation replaced this one; see `bulwark ca status`".into());
        }
        if rotation.retired_at != 0 {
            if let Some(dir) = &own {
                let mut client = identity_client(dir, &connect.endpoint_list()?).await?;
                refresh_trust(dir, &mut client).await?;
            }
            println!(
                "old root {} retired; join tokens replaced (`bulwark token show manager|client`)",
                rotation.old_root
            );
            return Ok(());
        }
        let progress = format!(
            "members still on the old root: {}; identities still on it: {}",
            list_or_none(&rotation.members_on_old_root),
            list_or_none(&rotation.identities_on_old_root)
        );
        if progress != last {
            println!("{progress}");
            last = progress;
        }
    }
    println!("the rotation is still in progress; follow it with `bulwark ca status`");
    Ok(())
}

/// Renews the identity in `dir` until its certificate comes from the root named `root`: the
/// member answering may take a moment to take the new root into use.
async fn renew_from(dir: &Path, endpoints: &[String], root: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RENEW_LIMIT;
    loop {
        // A member still moving answers Unavailable, or renews from the old root: try again.
        let renewed = renew_identity(dir, endpoints).await;
        if let Ok(serial) = &renewed {
            if current_identity(dir)?.issuer == root {
                println!(
                    "renewed the identity in {} from the new root (serial {serial})",
                    dir.display()
                );
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            renewed?;
            return Err(format!(
                "the members did not issue from {root} within {}s; renew {} with `bulwark \
                 renew` before the old root is retired",
                RENEW_LIMIT.as_secs(),
                dir.display()
            ));
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn status_json(status: &CaStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "roots": status.roots.iter().map(|root| serde_json::json!({
            "subject": root.subject,
            "digest": root.digest,
            "not_after": root.not_after,
            "state": root.state,
        })).collect::<Vec<_>>(),
        "member_cert_ttl_seconds": status.member_cert_ttl_seconds,
        "rotation": status.rotation.as_ref().map(|rotation| serde_json::json!({
            "generation": rotation.generation,
            "old_root": rotation.old_root,
            "new_root": rotation.new_root,
            "started_at": rotation.started_at,
            "retired_at": rotation.retired_at,
            "grace_seconds": rotation.grace_seconds,
            "members_on_old_root": rotation.members_on_old_root,
            "identities_on_old_root": rotation.identities_on_old_root,
        })),
        "members": status.members.iter().map(identity_info_json).collect::<Vec<_>>(),
        "identities": status.identities.iter().map(identity_info_json).collect::<Vec<_>>(),
    })
}

fn print_status(status: &CaStatusResponse) {
    for root in &status.roots {
        println!(
            "root: {} (sha256 {}), expires {}, {}",
            root.subject,
            root.digest,
            utc(root.not_after),
            root.state
        );
    }
    if let Some(rotation) = &status.rotation {
        if rotation.retired_at == 0 {
            println!(
                "rotation to {} in progress since {} (grace {}s): members still on {}: {}; \
                 identities still on it: {}",
                rotation.new_root,
                utc(rotation.started_at),
                rotation.grace_seconds,
                rotation.old_root,
                list_or_none(&rotation.members_on_old_root),
                list_or_none(&rotation.identities_on_old_root)
            );
        } else {
            println!(
                "last rotation: {} to {}, finished {}",
                rotation.old_root,
                rotation.new_root,
                utc(rotation.retired_at)
            );
        }
    }
    println!(
        "member certificate lifetime: {}s",
        status.member_cert_ttl_seconds
    );
    let rows = |identities: &[IdentityInfo]| -> Vec<Vec<String>> {
        identities
            .iter()
            .map(|identity| {
                vec![
                    identity.name.clone(),
                    identity.serial.clone(),
                    identity.issuer.clone(),
                    utc(identity.not_after),
                    identity.state.clone(),
                ]
            })
            .collect()
    };
    for (kind, listed) in [
        ("MEMBER", &status.members),
        ("IDENTITY", &status.identities),
    ] {
        print!(
            "{}",
            bordered_table(
                &[kind, "SERIAL", "ISSUER", "EXPIRES", "STATE"],
                &rows(listed),
                usize::MAX
            )
        );
    }
}
