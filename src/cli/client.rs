//! Client commands for people: `get`, `put`, `del`, over the same etcd v3 API and mutual TLS
//! every other client uses. `--data-dir` points them at a member's admin identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::output::{self, Format};
use crate::mvcc::keys::prefix_end;
use crate::proto::bulwarkpb::admin_client::AdminClient;
use crate::proto::bulwarkpb::ShowTokenRequest;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use crate::server::datadir::DataDir;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Comma-separated client URLs, e.g. https://127.0.0.1:2379.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// CA certificate that signed the server's certificate.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key.
    #[arg(long = "key")]
    key_file: Option<PathBuf>,
    /// A member's data directory: its client endpoint and admin identity are the defaults.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Format::Table)]
    format: Format,
}

impl ConnectArgs {
    pub(super) fn format(&self) -> Format {
        self.format
    }

    /// The identity directory these flags name (`--cacert DIR/ca.crt --cert DIR/client.crt --key
    /// DIR/client.key`, as `login` writes them), if they name one; not the admin identity in a
    /// member's data directory (`--data-dir`, or `DATA/admin` named file by file), which that
    /// member keeps current itself.
    pub(super) fn identity_directory(&self) -> Option<PathBuf> {
        if self.data_dir.is_some() {
            return None;
        }
        let dir = self.cert.as_deref()?.parent()?.to_path_buf();
        if dir
            .parent()
            .is_some_and(|data| DataDir::new(data).holds_member())
        {
            return None;
        }
        let named = |path: &Option<PathBuf>, name: &str| path.as_deref() == Some(&*dir.join(name));
        (named(&self.cert, "client.crt")
            && named(&self.key_file, "client.key")
            && named(&self.cacert, "ca.crt"))
        .then_some(dir)
    }

    /// The endpoints these flags connect to.
    pub(super) fn endpoint_list(&self) -> Result<Vec<String>, String> {
        Ok(target(self)?.endpoints)
    }

    /// Connecting as the identity in `dir` (`ca.crt`, `client.crt`, `client.key`, as `login`
    /// writes them) to `endpoints`.
    pub(super) fn identity_dir(dir: &Path, endpoints: Vec<String>) -> ConnectArgs {
        ConnectArgs {
            endpoints,
            cacert: Some(dir.join("ca.crt")),
            cert: Some(dir.join("client.crt")),
            key_file: Some(dir.join("client.key")),
            data_dir: None,
            format: Format::Table,
        }
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    key: String,
    /// End of the range [KEY, RANGE_END).
    range_end: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
    prefix: bool,
    /// Every key greater than or equal to KEY.
    #[arg(long, conflicts_with = "range_end")]
    from_key: bool,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Read at this revision (0: the current one).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Keys without their values.
    #[arg(long)]
    keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    count_only: bool,
    /// Sort order.
    #[arg(long, value_enum)]
    order: Option<Order>,
    /// What to sort by.
    #[arg(long, value_enum)]
    sort_by: Option<SortBy>,
    /// Serve from the member's local state without a linearizable read.
    #[arg(long)]
    consistency_serializable: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
enum Order {
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    key: String,
    value: String,
    /// Return the previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Attach the key to this lease (hexadecimal id).
    #[arg(long, value_parser = parse_lease)]
    lease: Option<i64>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    key: String,
    range_end: Option<String>,
    #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
    prefix: bool,
    #[arg(long, conflicts_with = "range_end")]
    from_key: bool,
    /// Return the deleted key-values.
    #[arg(long)]
    prev_kv: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(super) fn parse_lease(text: &str) -> Result<i64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map(|id| id as i64)
        .map_err(|_| format!("{text:?} is not a hexadecimal lease id"))
}

/// etcdctl's key and range end for KEY [RANGE_END] with `--prefix` / `--from-key`; an empty
/// key with either means every key (`\0` to `\0`), as etcdctl sends it.
pub(super) fn key_range(
    key: &str,
    explicit: Option<&String>,
    prefix: bool,
    from_key: bool,
) -> (Vec<u8>, Vec<u8>) {
    if key.is_empty() && (prefix || from_key) {
        return (vec![0], vec![0]);
    }
    (
        key.as_bytes().to_vec(),
        range_end(key, explicit, prefix, from_key),
    )
}

fn range_end(key: &str, explicit: Option<&String>, prefix: bool, from_key: bool) -> Vec<u8> {
    if prefix {
        prefix_end(key.as_bytes())
    } else if from_key {
        vec![0]
    } else {
        explicit
            .map(|end| end.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

pub async fn get(args: GetArgs) -> Result<(), String> {
    let (key, range_end) = key_range(
        &args.key,
        args.range_end.as_ref(),
        args.prefix,
        args.from_key,
    );
    let request = RangeRequest {
        key,
        range_end,
        limit: args.limit,
        revision: args.rev,
        sort_order: match args.order {
            None => SortOrder::None,
            Some(Order::Ascend) => SortOrder::Ascend,
            Some(Order::Descend) => SortOrder::Descend,
        } as i32,
        sort_target: match args.sort_by.unwrap_or(SortBy::Key) {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Modify => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        } as i32,
        serializable: args.consistency_serializable,
        keys_only: args.keys_only,
        count_only: args.count_only,
        ..Default::default()
    };
    let mut kv = connect(&args.connect).await?;
    let response = with_timeout(kv.range(request)).await?;
    output::print_range(args.connect.format, &response);
    Ok(())
}

pub async fn put(args: PutArgs) -> Result<(), String> {
    let request = PutRequest {
        key: args.key.into_bytes(),
        value: args.value.into_bytes(),
        lease: args.lease.unwrap_or(0),
        prev_kv: args.prev_kv,
        ..Default::default()
    };
    let mut kv = connect(&args.connect).await?;
    let response = with_timeout(kv.put(request)).await?;
    output::print_put(args.connect.format, &response);
    Ok(())
}

pub async fn del(args: DelArgs) -> Result<(), String> {
    let (key, range_end) = key_range(
        &args.key,
        args.range_end.as_ref(),
        args.prefix,
        args.from_key,
    );
    let request = DeleteRangeRequest {
        key,
        range_end,
        prev_kv: args.prev_kv,
    };
    let mut kv = connect(&args.connect).await?;
    let response = with_timeout(kv.delete_range(request)).await?;
    output::print_delete(args.connect.format, &response);
    Ok(())
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Debug, clap::Subcommand)]
enum TokenAction {
    /// Print the join token for a role (admin identity only).
    Show {
        /// The role the token admits: `manager` (new members) or `client` (`bulwark login`).
        role: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Replace a role's join token: the old one stops working at once; certificates already
    /// issued are unaffected (admin identity only).
    Rotate {
        /// `manager` or `client`.
        role: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn token(args: TokenArgs) -> Result<(), String> {
    let (rotate, role, connect) = match args.action {
        TokenAction::Show { role, connect } => (false, role, connect),
        TokenAction::Rotate { role, connect } => (true, role, connect),
    };
    let mut admin = AdminClient::new(channel(&connect).await?);
    let request = ShowTokenRequest { role };
    let response = match rotate {
        false => with_timeout(admin.show_token(request)).await?,
        true => with_timeout(admin.rotate_token(request)).await?,
    };
    println!("{}", response.token);
    Ok(())
}

pub(super) async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("request timed out".to_string()),
    }
}

/// Where to connect and as whom, from the flags, falling back to a data directory's admin
/// identity.
struct Target {
    endpoints: Vec<String>,
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn target(args: &ConnectArgs) -> Result<Target, String> {
    let data = args.data_dir.as_deref().map(DataDir::new);
    let from_data = |pick: fn(&DataDir) -> PathBuf| data.as_ref().map(pick);
    let endpoints = if !args.endpoints.is_empty() {
        args.endpoints.clone()
    } else if let Some(data) = &data {
        let config = data.read_config().map_err(|e| e.to_string())?;
        vec![client_url(&config.listen_client)]
    } else {
        vec!["https://127.0.0.1:2379".to_string()]
    };
    let missing = |what: &str| format!("no {what} given: pass --{what} or --data-dir");
    Ok(Target {
        endpoints,
        ca_cert: args
            .cacert
            .clone()
            .or_else(|| from_data(DataDir::admin_ca_cert))
            .ok_or_else(|| missing("cacert"))?,
        cert: args
            .cert
            .clone()
            .or_else(|| from_data(DataDir::admin_cert))
            .ok_or_else(|| missing("cert"))?,
        key: args
            .key_file
            .clone()
            .or_else(|| from_data(DataDir::admin_key))
            .ok_or_else(|| missing("key"))?,
    })
}

/// The URL a client uses for a listen address; a wildcard listener is reached on loopback.
fn client_url(listen: &str) -> String {
    let address = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("https://{address}")
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

async fn connect(args: &ConnectArgs) -> Result<KvClient<Channel>, String> {
    Ok(KvClient::new(channel(args).await?))
}

pub(super) async fn channel(args: &ConnectArgs) -> Result<Channel, String> {
    let target = target(args)?;
    first_reachable(args, &target.endpoints).await
}

/// A channel to `endpoint` alone, with the identity `args` names.
pub(super) async fn channel_to(args: &ConnectArgs, endpoint: &str) -> Result<Channel, String> {
    first_reachable(args, &[endpoint.to_string()]).await
}

/// The PEM texts of the identity `args` names: (CA certificates, certificate, key).
pub(super) fn identity_pems(args: &ConnectArgs) -> Result<(String, String, String), String> {
    let target = target(args)?;
    Ok((
        read(&target.ca_cert)?,
        read(&target.cert)?,
        read(&target.key)?,
    ))
}

async fn first_reachable(args: &ConnectArgs, endpoints: &[String]) -> Result<Channel, String> {
    let (ca, cert, key) = identity_pems(args)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    let mut last_error = String::from("no endpoint given");
    for endpoint in endpoints {
        match dial(endpoint, Some(&tls), Some(COMMAND_TIMEOUT)).await {
            Ok(channel) => return Ok(channel),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// One HTTP/2 connection to `endpoint` (`https://` with `tls`, `http://` without), dialled within
/// [`DIAL_TIMEOUT`]. `request_timeout` becomes every call's gRPC deadline; long-lived streams
/// (watches) pass `None`, since a server such as etcd ends a stream at its deadline.
pub(crate) async fn dial(
    endpoint: &str,
    tls: Option<&ClientTlsConfig>,
    request_timeout: Option<Duration>,
) -> Result<Channel, String> {
    let mut channel = Channel::from_shared(endpoint.to_string())
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(DIAL_TIMEOUT);
    if let Some(tls) = tls {
        channel = channel
            .tls_config(tls.clone())
            .map_err(|e| format!("{endpoint}: {e}"))?;
    }
    if let Some(timeout) = request_timeout {
        channel = channel.timeout(timeout);
    }
    channel
        .connect()
        .await
        .map_err(|error| format!("cannot connect to {endpoint}: {}", chain(&error)))
}

/// An error with its causes, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
