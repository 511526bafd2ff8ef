//! The `bulwark` command line: server commands (`init`, `serve`) and client commands (`get`,
//! `put`, `del`), and `bench`. It parses arguments and calls into `server`, the client code or
//! `bench`; it holds no server logic.

mod ca;
mod client;
mod coordination;
mod identity;
mod output;
mod snapshot;
mod status;

// Shared with `bench`, which drives etcd and Bulwark with the same client code.
pub(crate) use client::dial;
pub(crate) use output::bordered_table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::api::Limits;
use crate::raft::RaftTimings;
use crate::server::join::{self, JoinOptions};
use crate::server::{self, Addresses, InitOptions, ServeOptions};

#[derive(Debug, Parser)]
#[command(
    name = "bulwark",
    version,
    about = "A secure, Raft-replicated key-value store that speaks the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new cluster in an empty directory (root CA, member and admin certificates), then
    /// serve it in the foreground.
    Init(InitArgs),
    /// Join an existing cluster with a join token, then serve in the foreground.
    Join(JoinArgs),
    /// Start an existing member from its data directory.
    Serve(ServeArgs),
    /// Read a key or a range of keys.
    Get(client::GetArgs),
    /// Write a key.
    Put(client::PutArgs),
    /// Delete a key or a range of keys.
    Del(client::DelArgs),
    /// Join tokens.
    Token(client::TokenArgs),
    /// Print changes to a key or range as they happen (from --rev to replay history).
    Watch(coordination::WatchArgs),
    /// Leases: grant, revoke, keep-alive, ttl, list.
    Lease(coordination::LeaseArgs),
    /// Snapshots: save one from a member, restore one into a new cluster.
    Snapshot(snapshot::SnapshotArgs),
    /// Get a client identity with the client join token (key made here, CSR signed by the
    /// cluster): writes ca.crt, client.crt and client.key for etcdctl and every etcd client.
    Login(identity::LoginArgs),
    /// Renew a client identity from its current certificate (new key, same name).
    Renew(identity::RenewArgs),
    /// Keep a client identity renewed in the background (at 50-80 % of each lifetime).
    Agent(identity::RenewArgs),
    /// Client identities (admin identity only): issue, list, revoke.
    Identity(identity::IdentityArgs),
    /// The cluster CA: status (roots, rotation, certificates), update (certificate lifetime),
    /// rotate (a new root with no downtime).
    Ca(ca::CaArgs),
    /// Every member's status (as `etcdctl endpoint status --cluster`) with the expiry and issuer
    /// of the certificate it presents.
    Status(status::StatusArgs),
    /// Hold a distributed lock while a command runs (`bulwark lock NAME -- COMMAND ...`).
    Lock(coordination::LockArgs),
    /// Benchmark Bulwark against etcd, side by side on this machine (`--quick` for a smoke run).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// Directory for the new member; must be empty or missing.
    #[arg(long)]
    data_dir: PathBuf,
    /// The join token (`bulwark token show manager` on a member prints it).
    #[arg(long, env = "BULWARK_JOIN_TOKEN")]
    token: String,
    /// Peer address (HOST:PORT) of any member of the cluster.
    #[arg(long)]
    peer: String,
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    name: String,
    #[command(flatten)]
    addresses: AddressArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Directory for the new member; must be empty or missing.
    #[arg(long)]
    data_dir: PathBuf,
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    name: String,
    #[command(flatten)]
    addresses: AddressArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
struct AddressArgs {
    /// Address clients connect to (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen_client: String,
    /// Address other members connect to (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:2380")]
    listen_peer: String,
    /// Client address to tell others, when it differs from --listen-client (NAT, proxies).
    #[arg(long)]
    advertise_client: Option<String>,
    /// Peer address other members dial, when it differs from --listen-peer (NAT, proxies).
    #[arg(long)]
    advertise_peer: Option<String>,
}

impl From<AddressArgs> for Addresses {
    fn from(args: AddressArgs) -> Self {
        Addresses {
            listen_client: args.listen_client,
            listen_peer: args.listen_peer,
            advertise_client: args.advertise_client,
            advertise_peer: args.advertise_peer,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Data directory of an existing member (made by `bulwark init` or `bulwark join`).
    #[arg(long)]
    data_dir: PathBuf,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// Largest request accepted, in bytes (etcd's default: 1.5 MiB; at most 64 MiB).
    #[arg(
        long,
        default_value_t = Limits::default().max_request_bytes as u64,
        value_parser = clap::value_parser!(u64).range(1..=crate::api::MAX_REQUEST_BYTES_LIMIT as u64),
    )]
    max_request_bytes: u64,
    /// Most operations in one txn branch.
    #[arg(long, default_value_t = Limits::default().max_txn_ops)]
    max_txn_ops: usize,
    /// Seconds between progress notifications to idle watchers that asked for them.
    #[arg(long, default_value_t = Limits::default().watch_progress_interval.as_secs())]
    watch_progress_notify_interval: u64,
    /// Database size that raises the NOSPACE alarm (bytes; etcd's default is 2 GiB).
    #[arg(long, default_value_t = Limits::default().quota_backend_bytes)]
    quota_backend_bytes: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = RaftTimings::default().heartbeat_ms)]
    heartbeat_interval: u64,
    /// Raft election timeout in milliseconds (randomized between it and twice it).
    #[arg(long, default_value_t = RaftTimings::default().election_min_ms)]
    election_timeout: u64,
    /// Applied entries between Raft snapshots (the log is purged behind a snapshot).
    #[arg(long, default_value_t = RaftTimings::default().snapshot_every)]
    snapshot_count: u64,
}

impl LimitArgs {
    fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            limits: Limits {
                max_request_bytes: self.max_request_bytes as usize,
                max_txn_ops: self.max_txn_ops,
                watch_progress_interval: std::time::Duration::from_secs(
                    self.watch_progress_notify_interval.max(1),
                ),
                quota_backend_bytes: self.quota_backend_bytes,
            },
            timings: RaftTimings {
                heartbeat_ms: self.heartbeat_interval,
                election_min_ms: self.election_timeout,
                election_max_ms: self.election_timeout * 2,
                snapshot_every: self.snapshot_count,
            },
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let server_command = matches!(
        cli.command,
        Command::Init(_) | Command::Join(_) | Command::Serve(_)
    );
    init_logging(server_command);
    if server_command {
        server::disable_transparent_huge_pages();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        match cli.command {
            Command::Init(args) => {
                let options = InitOptions {
                    name: args.name,
                    addresses: args.addresses.into(),
                };
                let data = server::init(&args.data_dir, &options).map_err(|e| e.to_string())?;
                println!(
                    "bulwark: created a new cluster in {}; admin identity in {}",
                    data.root().display(),
                    data.admin().display()
                );
                server::serve(&args.data_dir, &args.limits.serve_options())
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Join(args) => {
                let options = JoinOptions {
                    name: args.name,
                    addresses: args.addresses.into(),
                };
                let data = join::join(&args.data_dir, &args.token, &args.peer, &options)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "bulwark: joined; member directory {}",
                    data.root().display()
                );
                server::serve(&args.data_dir, &args.limits.serve_options())
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Serve(args) => server::serve(&args.data_dir, &args.limits.serve_options())
                .await
                .map_err(|e| e.to_string()),
            Command::Get(args) => client::get(args).await,
            Command::Put(args) => client::put(args).await,
            Command::Del(args) => client::del(args).await,
            Command::Token(args) => client::token(args).await,
            Command::Watch(args) => coordination::watch(args).await,
            Command::Lease(args) => coordination::lease(args).await,
            Command::Snapshot(args) => snapshot::snapshot(args).await,
            Command::Lock(args) => coordination::lock(args).await,
            Command::Login(args) => identity::login(args).await,
            Command::Identity(args) => identity::identity(args).await,
            Command::Renew(args) => identity::renew(args).await,
            Command::Agent(args) => identity::agent(args).await,
            Command::Ca(args) => ca::ca(args).await,
            Command::Status(args) => status::status(args).await,
            Command::Bench(args) => crate::bench::main(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(server_command: bool) {
    let default = if server_command {
        // raft-log reports each purge and chunk at info: routine, not news to an operator.
        "info,openraft=warn,raft_log=warn,chunked_wal=warn"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
