//! `bulwark snapshot save` (streamed from a member, with a progress bar) and
//! `bulwark snapshot restore` (a new one-member cluster from a snapshot file).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio_stream::StreamExt;

use super::client::{channel, ConnectArgs};
use super::AddressArgs;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::SnapshotRequest;
use crate::server::{self, InitOptions};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    action: SnapshotAction,
}

#[derive(Debug, Subcommand)]
enum SnapshotAction {
    /// Save a consistent snapshot of a member's store to FILE.
    Save {
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Prepare DIR as a new one-member cluster holding FILE's keys; start it with `bulwark serve`.
    Restore {
        file: PathBuf,
        /// Directory for the new member; must be empty or missing.
        #[arg(long)]
        data_dir: PathBuf,
        /// Human-readable name of the new member.
        #[arg(long, default_value = "default")]
        name: String,
        #[command(flatten)]
        addresses: AddressArgs,
        /// Keep the CA of this old member's data directory, so existing client identities keep
        /// working (default: a new CA and admin identity).
        #[arg(long)]
        keep_ca_from: Option<PathBuf>,
    },
}

pub async fn snapshot(args: SnapshotArgs) -> Result<(), String> {
    match args.action {
        SnapshotAction::Save { file, connect } => save(file, &connect).await,
        SnapshotAction::Restore {
            file,
            data_dir,
            name,
            addresses,
            keep_ca_from,
        } => {
            let options = InitOptions {
                name,
                addresses: addresses.into(),
            };
            let data = server::restore(&file, &data_dir, &options, keep_ca_from.as_deref())
                .map_err(|e| e.to_string())?;
            println!(
                "restored {} into {}; admin identity in {}",
                file.display(),
                data.root().display(),
                data.admin().display()
            );
            println!(
                "start it with: bulwark serve --data-dir {}",
                data.root().display()
            );
            Ok(())
        }
    }
}

async fn save(file: PathBuf, connect: &ConnectArgs) -> Result<(), String> {
    let mut client = MaintenanceClient::new(channel(connect).await?);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    // Written beside the target, renamed into place only when complete and synced.
    let partial = file.with_extension("part");
    // Every key and the cluster's settings are in it: readable by its owner only, as etcdctl
    // writes it.
    let mut out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| format!("{}: {e}", partial.display()))?
    };
    let mut progress: Option<indicatif::ProgressBar> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|status| status.message().to_string())?;
        let bar = progress.get_or_insert_with(|| {
            let total = chunk.blob.len() as u64 + chunk.remaining_bytes;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("a valid template"),
            );
            bar
        });
        out.write_all(&chunk.blob)
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        bar.inc(chunk.blob.len() as u64);
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, &file).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    println!("Snapshot saved at {}", file.display());
    Ok(())
}
