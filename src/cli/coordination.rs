//! Client commands for watches and leases: `bulwark watch`, `bulwark lease ...`.

use clap::{Args, Subcommand};
use tokio_stream::StreamExt;

use super::client::{channel, key_range, with_timeout, ConnectArgs};
use super::output::{self, Format};
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, WatchCreateRequest, WatchRequest,
};

#[derive(Debug, Args)]
pub struct WatchArgs {
    key: String,
    /// End of the range [KEY, RANGE_END).
    range_end: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with = "range_end")]
    prefix: bool,
    /// Start from this revision (replays history from it).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Also print each key's previous value.
    #[arg(long)]
    prev_kv: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Prints events until the server cancels the watch or the command is interrupted.
pub async fn watch(args: WatchArgs) -> Result<(), String> {
    let (key, range_end) = key_range(&args.key, args.range_end.as_ref(), args.prefix, false);
    let mut client = WatchClient::new(channel(&args.connect).await?);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            start_revision: args.rev,
            prev_kv: args.prev_kv,
            ..Default::default()
        })),
    };
    // Keep the request stream open: closing it would end the watch.
    let requests = futures::stream::iter(vec![create]).chain(futures::stream::pending());
    let mut responses = client
        .watch(requests)
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    while let Some(response) = responses.next().await {
        let response = response.map_err(|status| status.message().to_string())?;
        if response.canceled {
            let reason = if response.compact_revision != 0 {
                format!(
                    "required revision has been compacted (compacted to {})",
                    response.compact_revision
                )
            } else {
                response.cancel_reason
            };
            return Err(format!("watch canceled: {reason}"));
        }
        output::print_watch(args.connect.format(), &response);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    action: LeaseAction,
}

#[derive(Debug, Subcommand)]
enum LeaseAction {
    /// Create a lease with a TTL in seconds.
    Grant {
        ttl: i64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// End a lease; its keys are deleted.
    Revoke {
        #[arg(value_parser = super::client::parse_lease)]
        id: i64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Keep a lease alive until interrupted (or once with --once).
    KeepAlive {
        #[arg(value_parser = super::client::parse_lease)]
        id: i64,
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// A lease's remaining TTL (and its keys with --keys).
    Ttl {
        #[arg(value_parser = super::client::parse_lease)]
        id: i64,
        #[arg(long)]
        keys: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Every lease.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn lease(args: LeaseArgs) -> Result<(), String> {
    match args.action {
        LeaseAction::Grant { ttl, connect } => {
            let mut client = LeaseClient::new(channel(&connect).await?);
            let response =
                with_timeout(client.lease_grant(LeaseGrantRequest { ttl, id: 0 })).await?;
            match connect.format() {
                Format::Json => println!("{}", output::lease_grant_json(&response)),
                _ => println!(
                    "lease {:016x} granted with TTL({}s)",
                    response.id, response.ttl
                ),
            }
        }
        LeaseAction::Revoke { id, connect } => {
            let mut client = LeaseClient::new(channel(&connect).await?);
            with_timeout(client.lease_revoke(LeaseRevokeRequest { id })).await?;
            println!("lease {id:016x} revoked");
        }
        LeaseAction::KeepAlive { id, once, connect } => {
            let connect_format = connect.format();
            let mut client = LeaseClient::new(channel(&connect).await?);
            let interval = std::time::Duration::from_secs(1);
            let requests = futures::stream::unfold(true, move |first| async move {
                if !first {
                    tokio::time::sleep(interval).await;
                }
                Some((LeaseKeepAliveRequest { id }, false))
            });
            let mut responses = client
                .lease_keep_alive(requests)
                .await
                .map_err(|status| status.message().to_string())?
                .into_inner();
            while let Some(response) = responses.next().await {
                let response = response.map_err(|status| status.message().to_string())?;
                if response.ttl <= 0 {
                    return Err(format!("lease {id:016x} expired or revoked"));
                }
                match connect_format {
                    Format::Json => println!("{}", output::lease_keep_alive_json(&response)),
                    _ => println!("lease {id:016x} keepalived with TTL({})", response.ttl),
                }
                if once {
                    break;
                }
            }
        }
        LeaseAction::Ttl { id, keys, connect } => {
            let mut client = LeaseClient::new(channel(&connect).await?);
            let response =
                with_timeout(client.lease_time_to_live(LeaseTimeToLiveRequest { id, keys }))
                    .await?;
            if matches!(connect.format(), Format::Json) {
                println!("{}", output::lease_ttl_json(&response));
            } else if response.ttl == -1 {
                println!("lease {id:016x} already expired");
            } else if keys {
                println!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s), attached keys({})",
                    response.granted_ttl,
                    response.ttl,
                    output::lease_keys_simple(&response.keys)
                );
            } else {
                println!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    response.granted_ttl, response.ttl
                );
            }
        }
        LeaseAction::List { connect } => {
            let mut client = LeaseClient::new(channel(&connect).await?);
            let response = with_timeout(client.lease_leases(LeaseLeasesRequest {})).await?;
            if matches!(connect.format(), Format::Json) {
                println!("{}", output::lease_list_json(&response));
                return Ok(());
            }
            println!("found {} leases", response.leases.len());
            for lease in response.leases {
                println!("{:016x}", lease.id);
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name.
    name: String,
    /// Seconds the lock outlives this process if it dies without releasing it.
    #[arg(long, default_value_t = 60)]
    ttl: i64,
    /// A command to run while holding the lock; without one, hold it until interrupted.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Takes the lock (waiting for it), then runs the command or waits for Ctrl-C, keeping the
/// lock's lease alive, and releases the lock at the end.
pub async fn lock(args: LockArgs) -> Result<(), String> {
    use crate::proto::v3lockpb::lock_client::LockClient;
    use crate::proto::v3lockpb::{LockRequest, UnlockRequest};

    let channel = channel(&args.connect).await?;
    let mut leases = LeaseClient::new(channel.clone());
    let lease = with_timeout(leases.lease_grant(LeaseGrantRequest {
        ttl: args.ttl,
        id: 0,
    }))
    .await?
    .id;
    // Keep the lease alive in the background for as long as the lock is wanted.
    let keep_alive = tokio::spawn(async move {
        let requests = futures::stream::unfold((), move |()| async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Some((LeaseKeepAliveRequest { id: lease }, ()))
        });
        if let Ok(response) = leases.lease_keep_alive(requests).await {
            let mut responses = response.into_inner();
            while let Some(Ok(_)) = responses.next().await {}
        }
    });
    let mut locks = LockClient::new(channel.clone());
    let held = locks
        .lock(LockRequest {
            name: args.name.into_bytes(),
            lease,
        })
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    let outcome = if args.command.is_empty() {
        println!("{}", String::from_utf8_lossy(&held.key));
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("waiting for Ctrl-C: {e}"))
    } else {
        let status = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .status()
            .await
            .map_err(|e| format!("{}: {e}", args.command[0]))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} exited with {status}", args.command[0]))
        }
    };
    let _ = locks.unlock(UnlockRequest { key: held.key }).await;
    keep_alive.abort();
    let mut leases = LeaseClient::new(channel);
    let _ = leases.lease_revoke(LeaseRevokeRequest { id: lease }).await;
    outcome
}
