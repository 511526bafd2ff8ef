//! Client identities from the command line: `login` (with the client join token), and the
//! admin's `identity issue|list|revoke`. Keys are generated here and never sent: the cluster
//! signs a CSR.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use tonic::transport::Channel;

use super::client::{channel, with_timeout, ConnectArgs};
use super::output::{bordered_table, identity_info_json, Format};
use crate::identities;
use crate::pki;
use crate::proto::bulwarkpb::admin_client::AdminClient;
use crate::proto::bulwarkpb::identity_client::IdentityClient;
use crate::proto::bulwarkpb::{
    IssueIdentityRequest, ListIdentitiesRequest, RenewRequest, RevokeIdentityRequest, TrustRequest,
};
use crate::server::join;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The client join token (`bulwark token show client` prints it).
    #[arg(long, env = "BULWARK_CLIENT_TOKEN")]
    token: String,
    /// Peer address (HOST:PORT) of any member.
    #[arg(long)]
    peer: String,
    /// The identity's name: the certificate's CN, etcd's user name.
    #[arg(long)]
    name: String,
    /// Where to write ca.crt, client.crt and client.key (created if missing; existing identity
    /// files are never overwritten).
    #[arg(long, default_value = "bulwark-identity")]
    out: PathBuf,
}

pub async fn login(args: LoginArgs) -> Result<(), String> {
    // Before asking the cluster: a certificate signed for a key that is then not saved would
    // stay in the registry, valid and unusable.
    refuse_existing_identity(&args.out)?;
    let identity = join::login(&args.token, &args.peer, &args.name)
        .await
        .map_err(|e| e.to_string())?;
    write_identity(
        &args.out,
        &identity.ca_cert_pem,
        &identity.cert_pem,
        &identity.key_pem,
    )?;
    write_endpoints(&args.out, &identity.client_urls)?;
    print_written(&args.out, &args.name);
    Ok(())
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The identity's directory (ca.crt, client.crt, client.key, as `login` writes them).
    #[arg(long)]
    dir: PathBuf,
    /// Client URLs of members (default: the `endpoints` file `login` wrote in DIR).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
}

/// `bulwark renew`: a new key and certificate for the identity in DIR, from its current one.
pub async fn renew(args: RenewArgs) -> Result<(), String> {
    let serial = renew_identity(&args.dir, &args.endpoints).await?;
    println!(
        "identity in {} renewed (serial {serial})",
        args.dir.display()
    );
    Ok(())
}

/// `bulwark agent`: keeps the identity in DIR renewed, at 50 to 80 % of each certificate's
/// lifetime, and at once when the cluster issues from another root (a CA rotation); keeps
/// `ca.crt` equal to the roots the cluster trusts. Runs until stopped.
pub async fn agent(args: RenewArgs) -> Result<(), String> {
    // Often enough to move well within a CA rotation's grace period (60 s by default).
    const CHECK: Duration = Duration::from_secs(5);
    const RETRY: Duration = Duration::from_secs(10);
    let mut schedule: Option<(String, SystemTime)> = None;
    // One connection, kept while the certificate it was made with is the current one (a check
    // every few seconds should not cost a TLS handshake each time).
    let mut connection: Option<(String, IdentityClient<Channel>)> = None;
    loop {
        let current = current_identity(&args.dir)?;
        // One random point per certificate, not a new one at every look.
        let due = match &schedule {
            Some((serial, due)) if *serial == current.serial_hex => *due,
            _ => {
                let due =
                    identities::renewal_time(identities::issued_at(&current), current.not_after);
                schedule = Some((current.serial_hex.clone(), due));
                due
            }
        };
        if connection
            .as_ref()
            .is_none_or(|(serial, _)| *serial != current.serial_hex)
        {
            connection = identity_client(&args.dir, &args.endpoints)
                .await
                .inspect_err(|error| eprintln!("bulwark agent: cannot connect: {error}"))
                .ok()
                .map(|client| (current.serial_hex.clone(), client));
        }
        let trust = match &mut connection {
            Some((_, client)) => refresh_trust(&args.dir, client).await,
            None => Err("no connection".to_string()),
        };
        let moved_root = match trust {
            Ok(issuer) => issuer != current.issuer,
            Err(error) => {
                connection = None;
                eprintln!(
                    "bulwark agent: asking the cluster which roots it trusts failed: {error}"
                );
                false
            }
        };
        let now = SystemTime::now();
        if now < due && !moved_root {
            tokio::time::sleep(CHECK).await;
            continue;
        }
        match renew_identity(&args.dir, &args.endpoints).await {
            Ok(serial) => eprintln!("bulwark agent: renewed (serial {serial})"),
            Err(error) if current.not_after > now => {
                eprintln!("bulwark agent: renewal failed, retrying: {error}");
                tokio::time::sleep(RETRY).await;
            }
            Err(error) => {
                return Err(format!(
                    "{error}; the certificate has expired: get a new identity with `bulwark \
                     login`"
                ))
            }
        }
    }
}

pub(super) fn current_identity(dir: &Path) -> Result<pki::PeerIdentity, String> {
    let path = dir.join("client.crt");
    let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    pki::finish_interrupted_replace(&dir.join("client.key"), &path).map_err(|e| failed(&e))?;
    let pem = std::fs::read_to_string(&path).map_err(|e| failed(&e))?;
    pki::first_cert_der(&pem)
        .and_then(|der| pki::identity_of(&der))
        .map_err(|e| failed(&e))
}

/// A connection as the identity in `dir`.
pub(super) async fn identity_client(
    dir: &Path,
    endpoints: &[String],
) -> Result<IdentityClient<Channel>, String> {
    let connect = ConnectArgs::identity_dir(dir, resolve_endpoints(dir, endpoints)?);
    Ok(IdentityClient::new(channel(&connect).await?))
}

/// Asks the cluster which roots it trusts and which one issues; rewrites `ca.crt` in `dir` when
/// it holds other roots. Returns the issuing root's name.
pub(super) async fn refresh_trust(
    dir: &Path,
    client: &mut IdentityClient<Channel>,
) -> Result<String, String> {
    let trust = with_timeout(client.trust(TrustRequest {})).await?;
    let path = dir.join("ca.crt");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(trust.ca_cert_pem.as_str()) {
        pki::replace_file(&path, trust.ca_cert_pem.as_bytes(), true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(trust.issuer)
}

fn resolve_endpoints(dir: &Path, endpoints: &[String]) -> Result<Vec<String>, String> {
    match endpoints {
        [] => read_endpoints(dir),
        given => Ok(given.to_vec()),
    }
}

/// Renews the identity in `dir` (a new key made here, the same name); returns the new serial.
pub(super) async fn renew_identity(dir: &Path, endpoints: &[String]) -> Result<String, String> {
    let current = current_identity(dir)?;
    let endpoints = resolve_endpoints(dir, endpoints)?;
    let (csr_pem, key_pem) =
        pki::certificate_request(&current.common_name).map_err(|e| e.to_string())?;
    let mut client = identity_client(dir, &endpoints).await?;
    let renewed = with_timeout(client.renew(RenewRequest { csr_pem })).await?;
    let serial = pki::first_cert_der(&renewed.client_cert_pem)
        .and_then(|der| pki::identity_of(&der))
        .map_err(|e| e.to_string())?
        .serial_hex;
    replace_identity(
        dir,
        &renewed.ca_cert_pem,
        &renewed.client_cert_pem,
        &key_pem,
    )?;
    if !renewed.client_urls.is_empty() {
        let _ = std::fs::remove_file(dir.join(ENDPOINTS_FILE));
        write_endpoints(dir, &renewed.client_urls)?;
    }
    Ok(serial)
}

/// The members' client URLs, one per line, beside the identity.
const ENDPOINTS_FILE: &str = "endpoints";

fn write_endpoints(dir: &Path, urls: &[String]) -> Result<(), String> {
    let path = dir.join(ENDPOINTS_FILE);
    std::fs::write(&path, urls.join("\n") + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn read_endpoints(dir: &Path) -> Result<Vec<String>, String> {
    let path = dir.join(ENDPOINTS_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (pass --endpoints)", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect())
}

/// Replaces the identity in `dir` with a renewed one: the roots first (they trust the old and
/// the new certificate alike), then the key pair so that a crash never leaves a key that does not
/// match its certificate ([`pki::replace_key_pair`]).
fn replace_identity(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let (ca, key, cert) = (
        dir.join("ca.crt"),
        dir.join("client.key"),
        dir.join("client.crt"),
    );
    pki::replace_file(&ca, ca_pem.as_bytes(), true)
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    pki::replace_key_pair(&key, key_pem, &cert, cert_pem)
        .map_err(|e| format!("{}: {e}", cert.display()))
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    action: IdentityAction,
}

#[derive(Debug, clap::Subcommand)]
enum IdentityAction {
    /// Issue a client identity (admin identity only); the key is made here.
    Issue {
        name: String,
        /// Lifetime, e.g. 90d, 12h, 30m (default 90d).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Where to write ca.crt, client.crt and client.key (default: ./NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Every certificate the cluster issued: name, role, serial, expiry, state.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Revoke every certificate of a client identity: refused by every member from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn identity(args: IdentityArgs) -> Result<(), String> {
    match args.action {
        IdentityAction::Issue {
            name,
            ttl,
            out,
            connect,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            refuse_existing_identity(&out)?;
            let (csr_pem, key_pem) = pki::certificate_request(&name).map_err(|e| e.to_string())?;
            let mut admin = AdminClient::new(channel(&connect).await?);
            let issued = with_timeout(admin.issue_identity(IssueIdentityRequest {
                name: name.clone(),
                csr_pem,
                ttl_seconds: ttl.map_or(0, |ttl| ttl.as_secs()),
            }))
            .await?;
            write_identity(&out, &issued.ca_cert_pem, &issued.client_cert_pem, &key_pem)?;
            write_endpoints(&out, &issued.client_urls)?;
            print_written(&out, &name);
            Ok(())
        }
        IdentityAction::List { connect } => {
            let format = connect.format();
            let mut admin = AdminClient::new(channel(&connect).await?);
            let listed = with_timeout(admin.list_identities(ListIdentitiesRequest {})).await?;
            match format {
                Format::Json => {
                    let rows: Vec<_> = listed.identities.iter().map(identity_info_json).collect();
                    println!("{}", serde_json::Value::Array(rows));
                }
                _ => {
                    let rows: Vec<Vec<String>> = listed
                        .identities
                        .iter()
                        .map(|identity| {
                            vec![
                                identity.name.clone(),
                                identity.role.clone(),
                                identity.serial.clone(),
                                identity.issuer.clone(),
                                utc(identity.not_after),
                                identity.state.clone(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        bordered_table(
                            &["NAME", "ROLE", "SERIAL", "ISSUER", "EXPIRES", "STATE"],
                            &rows,
                            usize::MAX
                        )
                    );
                }
            }
            Ok(())
        }
        IdentityAction::Revoke { name, connect } => {
            let mut admin = AdminClient::new(channel(&connect).await?);
            let revoked =
                with_timeout(admin.revoke_identity(RevokeIdentityRequest { name: name.clone() }))
                    .await?;
            println!(
                "identity {name} revoked ({} certificate(s)): every member refuses it from now on",
                revoked.serials.len()
            );
            Ok(())
        }
    }
}

/// `90d`, `12h`, `30m`, `45s` (a bare number is seconds).
pub(super) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let count: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90d, 12h, 30m or 45s"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be one of s, m, h, d")),
    };
    match count.checked_mul(unit) {
        Some(0) | None => Err(format!("{text:?} is not a usable lifetime")),
        Some(seconds) => Ok(Duration::from_secs(seconds)),
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub(super) fn utc(seconds: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            at.year(),
            at.month() as u8,
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => seconds.to_string(),
    }
}

/// Writes an identity the way etcd clients read one: `ca.crt`, `client.crt`, `client.key`
/// (0600, never overwritten) in `dir` (0700 when created).
fn write_identity(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let failed = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(dir, e))?;
    }
    let files = [
        ("client.key", key_pem),
        ("client.crt", cert_pem),
        ("ca.crt", ca_pem),
    ];
    // Checked up front so that nothing is written when anything is there: an identity is
    // never half-replaced.
    refuse_existing_identity(dir)?;
    for (name, pem) in files {
        let path = dir.join(name);
        // create_new for every file: 0600 for the key, and never over a file that appeared
        // meanwhile.
        pki::write_private_file(&path, pem.as_bytes()).map_err(|e| failed(&path, e))?;
    }
    Ok(())
}

fn refuse_existing_identity(dir: &Path) -> Result<(), String> {
    for name in ["client.key", "client.crt", "ca.crt"] {
        let path = dir.join(name);
        if path.exists() {
            return Err(format!(
                "{} exists: refusing to overwrite an identity (choose another --out)",
                path.display()
            ));
        }
    }
    Ok(())
}

fn print_written(dir: &Path, name: &str) {
    let dir = dir.display();
    println!("identity {name} written to {dir}/ (ca.crt, client.crt, client.key)");
    println!("etcdctl --cacert={dir}/ca.crt --cert={dir}/client.crt --key={dir}/client.key ...");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_ttl("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "0s", "h", "1w", "-1d", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
