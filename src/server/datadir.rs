//! The member's data directory: where each file lives, the member config (`member.toml`), and
//! creating a new member's directory.
//!
//! Layout (see `docs/design.md`):
//! ```text
//! DIR/member.toml        name, ids, addresses (written last: its presence means "a member")
//! DIR/pki/               ca.crt, ca.key (0600), member.crt, member.key (0600)
//! DIR/raft/log/          the Raft log and vote (a write-ahead log of chunk files)
//! DIR/state/mvcc.redb    the MVCC store (the state machine)
//! DIR/state/snapshot/    the newest Raft snapshot: `current` names its data file
//! DIR/admin/             ca.crt, client.crt, client.key (0600): the admin identity
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ServerError;

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        // Absolute, so the paths we print work from any working directory.
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        DataDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn member_config(&self) -> PathBuf {
        self.root.join("member.toml")
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.pki().join("ca.key")
    }
    pub fn member_cert(&self) -> PathBuf {
        self.pki().join("member.crt")
    }
    pub fn member_key(&self) -> PathBuf {
        self.pki().join("member.key")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn mvcc_db(&self) -> PathBuf {
        self.state().join("mvcc.redb")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.state().join("snapshot")
    }
    /// Where versions before `state/snapshot/` kept the Raft snapshot (removed at start).
    pub fn legacy_snapshot(&self) -> PathBuf {
        self.state().join("snapshot.bin")
    }
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }
    pub fn raft_log(&self) -> PathBuf {
        self.raft().join("log")
    }
    /// Where versions before the write-ahead log kept the Raft log (moved on the first start).
    pub fn raft_log_redb(&self) -> PathBuf {
        self.raft().join("log.redb")
    }
    pub fn admin(&self) -> PathBuf {
        self.root.join("admin")
    }
    pub fn admin_ca_cert(&self) -> PathBuf {
        self.admin().join("ca.crt")
    }
    pub fn admin_cert(&self) -> PathBuf {
        self.admin().join("client.crt")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.admin().join("client.key")
    }

    pub fn holds_member(&self) -> bool {
        self.member_config().exists()
    }

    pub fn is_empty_or_missing(&self) -> Result<bool, ServerError> {
        match fs::read_dir(&self.root) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(ServerError::io(&self.root, error)),
        }
    }

    pub fn read_config(&self) -> Result<MemberConfig, ServerError> {
        let path = self.member_config();
        let text = fs::read_to_string(&path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                ServerError::NoMember(self.root.clone())
            } else {
                ServerError::io(&path, error)
            }
        })?;
        toml::from_str(&text).map_err(|error| ServerError::BadConfig(path, error.to_string()))
    }

    /// Writes `member.toml` atomically (temp file, fsync, rename, fsync the directory), so a
    /// crash leaves either no config or a whole one.
    pub fn write_config(&self, config: &MemberConfig) -> Result<(), ServerError> {
        let path = self.member_config();
        let temporary = self.root.join("member.toml.tmp");
        let text = toml::to_string(config).expect("member config serializes");
        let mut file = fs::File::create(&temporary).map_err(|e| ServerError::io(&temporary, e))?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| ServerError::io(&temporary, e))?;
        fs::rename(&temporary, &path).map_err(|e| ServerError::io(&path, e))?;
        sync_dir(&self.root)
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ServerError::io(dir, e))
}

/// Creates `dir` with owner-only permissions (it holds private keys).
pub fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ServerError::io(dir, e))
}

/// `member.toml`. Ids are hex strings: TOML integers are signed and ids use all 64 bits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberConfig {
    pub name: String,
    pub cluster_id: String,
    pub member_id: String,
    pub listen_client: String,
    pub listen_peer: String,
    /// HOST:PORT clients are told to use, when not the listen address (NAT, proxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_client: Option<String>,
    /// HOST:PORT other members dial, when not the listen address (NAT, proxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_peer: Option<String>,
    /// Set by `init`: this member starts a new cluster as its only voter (once; a restart finds
    /// the cluster already initialized).
    #[serde(default)]
    pub bootstrap: bool,
}

impl MemberConfig {
    /// The listen and advertise addresses, as `init` and `join` were given them.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            listen_client: self.listen_client.clone(),
            listen_peer: self.listen_peer.clone(),
            advertise_client: self.advertise_client.clone(),
            advertise_peer: self.advertise_peer.clone(),
        }
    }

    pub fn cluster_id(&self) -> Result<u64, ServerError> {
        parse_id("cluster_id", &self.cluster_id)
    }
    pub fn member_id(&self) -> Result<u64, ServerError> {
        parse_id("member_id", &self.member_id)
    }
}

pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_id(field: &str, text: &str) -> Result<u64, ServerError> {
    u64::from_str_radix(text, 16).map_err(|_| {
        ServerError::BadConfig(
            PathBuf::from("member.toml"),
            format!("{field} is not a hex id: {text}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_with_full_width_ids() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert!(!data.holds_member());
        assert!(matches!(data.read_config(), Err(ServerError::NoMember(_))));
        let config = MemberConfig {
            name: "m0".into(),
            cluster_id: format_id(u64::MAX - 1),
            member_id: format_id(7),
            listen_client: "127.0.0.1:2379".into(),
            listen_peer: "127.0.0.1:2380".into(),
            advertise_client: None,
            advertise_peer: Some("10.0.0.1:2380".into()),
            bootstrap: true,
        };
        data.write_config(&config).unwrap();
        assert!(data.holds_member());
        let read = data.read_config().unwrap();
        assert_eq!(read, config);
        assert_eq!(read.cluster_id().unwrap(), u64::MAX - 1);
    }
}

/// Where a member listens and what it tells others to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub listen_client: String,
    pub listen_peer: String,
    pub advertise_client: Option<String>,
    pub advertise_peer: Option<String>,
}

impl Addresses {
    /// The client address others should use (advertised, else the listen address).
    pub fn client(&self) -> &str {
        self.advertise_client
            .as_deref()
            .unwrap_or(&self.listen_client)
    }

    /// The peer address other members dial (advertised, else the listen address).
    pub fn peer(&self) -> &str {
        self.advertise_peer.as_deref().unwrap_or(&self.listen_peer)
    }

    /// Every host a member certificate must name.
    pub fn hosts(&self) -> Result<Vec<String>, ServerError> {
        let mut hosts = Vec::new();
        for address in [&self.listen_client, &self.listen_peer]
            .into_iter()
            .chain(self.advertise_client.iter())
            .chain(self.advertise_peer.iter())
        {
            let host = super::host_of(address)?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }
}
