//! A running cluster of either store, as the workloads see it: its members' client URLs, the TLS
//! identity that reaches them, their processes (for memory and restarts). `bulwark.rs` and
//! `etcd.rs` build one each; from here on both are driven the same way.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig};

use super::process::{cpu_time, memory_of, reset_peak_memory, MemberMemory, Process};
use super::BenchError;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::{RangeRequest, StatusRequest};

/// Bound on every unary request of the bench (the channel's gRPC deadline).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a cluster (or a restarted member) becoming able to serve.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped member may take to exit after SIGTERM before it is SIGKILLed.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// Poll interval of readiness checks.
const READY_POLL: Duration = Duration::from_millis(10);

/// Which store a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Bulwark,
    Etcd,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Bulwark => "bulwark",
            StoreKind::Etcd => "etcd",
        })
    }
}

/// One member: how to start it again on its data directory, and its current process.
pub struct Member {
    pub name: String,
    pub client_url: String,
    data_dir: PathBuf,
    program: PathBuf,
    /// `bulwark serve ...` or etcd's own flags: what starts it again after a stop.
    restart_args: Vec<String>,
    log_dir: PathBuf,
    runs: u32,
    process: Option<Process>,
}

impl Member {
    pub fn new(
        name: &str,
        client_url: String,
        data_dir: &Path,
        program: &Path,
        restart_args: Vec<String>,
        log_dir: &Path,
    ) -> Member {
        Member {
            name: name.to_string(),
            client_url,
            data_dir: data_dir.to_path_buf(),
            program: program.to_path_buf(),
            restart_args,
            log_dir: log_dir.to_path_buf(),
            runs: 0,
            process: None,
        }
    }

    /// Starts the member with `args` (and `env`), without waiting for it to serve.
    pub fn launch(&mut self, args: &[String], env: &[(&str, &str)]) -> Result<(), BenchError> {
        self.runs += 1;
        let label = format!("{}-{}", self.name, self.runs);
        self.process = Some(Process::spawn(
            &self.program,
            args,
            env,
            &self.log_dir,
            &label,
        )?);
        Ok(())
    }

    /// Starts it again on its data directory, without waiting for it to serve.
    pub fn relaunch(&mut self) -> Result<(), BenchError> {
        let args = self.restart_args.clone();
        self.launch(&args, &[])
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(STOP_GRACE).await;
        }
    }

    pub fn process_mut(&mut self) -> Result<&mut Process, BenchError> {
        self.process
            .as_mut()
            .ok_or_else(|| BenchError::NotRunning(self.name.clone()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Fails with its output if it has exited.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        let name = self.name.clone();
        let process = self.process_mut()?;
        match process.exited() {
            Some(status) => Err(BenchError::Exited {
                process: name,
                status,
                output: process.output_tail(),
            }),
            None => Ok(()),
        }
    }

    /// The last lines its current process printed.
    pub fn output_tail(&self) -> String {
        self.process
            .as_ref()
            .map(Process::output_tail)
            .unwrap_or_default()
    }

    pub fn memory(&self) -> Option<MemberMemory> {
        memory_of(&self.name, self.pid()?)
    }

    /// The disk space its data directory takes.
    pub fn disk_usage(&self) -> MemberDisk {
        MemberDisk {
            member: self.name.clone(),
            mib: allocated_bytes(&self.data_dir) as f64 / (1024.0 * 1024.0),
        }
    }
}

/// A member's data directory's size on disk.
#[derive(Debug, Clone, Serialize)]
pub struct MemberDisk {
    pub member: String,
    pub mib: f64,
}

/// The bytes the files under `path` occupy on disk (allocated blocks, as `du` counts them: a
/// preallocated log segment counts whole).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = metadata.blocks() * 512;
    if !metadata.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| allocated_bytes(&entry.path()))
                .sum()
        })
        .unwrap_or(0);
    own + children
}

/// A running cluster of one store.
pub struct Cluster {
    pub kind: StoreKind,
    pub members: Vec<Member>,
    /// The client identity (and CA) that reaches every member; `None`: plaintext etcd.
    tls: Option<ClientTlsConfig>,
}

impl Cluster {
    pub fn new(kind: StoreKind, members: Vec<Member>, tls: Option<ClientTlsConfig>) -> Cluster {
        Cluster { kind, members, tls }
    }

    /// A new connection to member `index` (modulo the size); every call on it is bounded by
    /// [`REQUEST_TIMEOUT`].
    pub async fn channel(&self, index: usize) -> Result<Channel, BenchError> {
        let url = &self.members[index % self.members.len()].client_url;
        crate::cli::dial(url, self.tls.as_ref(), Some(REQUEST_TIMEOUT))
            .await
            .map_err(BenchError::Connect)
    }

    /// A connection for long-lived watch streams: no deadline, since etcd ends a stream at it.
    pub async fn stream_channel(&self, index: usize) -> Result<Channel, BenchError> {
        let url = &self.members[index % self.members.len()].client_url;
        crate::cli::dial(url, self.tls.as_ref(), None)
            .await
            .map_err(BenchError::Connect)
    }

    /// `count` connections, spread over the members in turn (as etcd's benchmark tool spreads
    /// its connections over its endpoints).
    pub async fn channels(&self, count: usize) -> Result<Vec<Channel>, BenchError> {
        let mut channels = Vec::with_capacity(count);
        for index in 0..count {
            channels.push(self.channel(index).await?);
        }
        Ok(channels)
    }

    /// Waits until every member answers a linearizable get (a leader exists and the member
    /// reaches it), bounded by [`START_TIMEOUT`].
    pub async fn wait_serving(&mut self) -> Result<(), BenchError> {
        for index in 0..self.members.len() {
            self.wait_member_serving(index, false).await?;
        }
        Ok(())
    }

    /// Waits until member `index` answers a get of `key` (serializable: from its own state;
    /// else linearizable), retrying connections and errors every few milliseconds; fails when
    /// the member exits or after [`START_TIMEOUT`].
    pub async fn wait_member_serving(
        &mut self,
        index: usize,
        serializable: bool,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut client: Option<KvClient<Channel>> = None;
        let mut last_error = String::new();
        loop {
            self.members[index].check_alive()?;
            if client.is_none() {
                match self.channel(index).await {
                    Ok(channel) => client = Some(KvClient::new(channel)),
                    Err(error) => last_error = error.to_string(),
                }
            }
            if let Some(kv) = client.as_mut() {
                let probe = RangeRequest {
                    key: b"bench-ready".to_vec(),
                    serializable,
                    ..Default::default()
                };
                match kv.range(probe).await {
                    Ok(_) => return Ok(()),
                    Err(status) => last_error = status.message().to_string(),
                }
            }
            if Instant::now() >= deadline {
                let member = &self.members[index];
                return Err(BenchError::NotReady {
                    process: member.name.clone(),
                    waited: START_TIMEOUT,
                    output: format!("last error: {last_error}\n{}", member.output_tail()),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The index of a member that is not the leader (the last such), or 0 in a one-member
    /// cluster: restarting a follower measures recovery, not an election.
    pub async fn follower(&self) -> Result<usize, BenchError> {
        for index in (0..self.members.len()).rev() {
            let mut maintenance = MaintenanceClient::new(self.channel(index).await?);
            let status = maintenance
                .status(StatusRequest {})
                .await
                .map_err(|status| BenchError::request(self.kind, "status", status))?
                .into_inner();
            let id = status.header.map_or(0, |h| h.member_id);
            if self.members.len() == 1 || status.leader != id {
                return Ok(index);
            }
        }
        Ok(0)
    }

    /// Resets every member's peak memory, so that the next [`Cluster::memory`] reports the
    /// peak from now on.
    pub fn reset_peak_memory(&self) {
        for pid in self.members.iter().filter_map(Member::pid) {
            reset_peak_memory(pid);
        }
    }

    /// Every running member's memory.
    pub fn memory(&self) -> Vec<MemberMemory> {
        self.members.iter().filter_map(Member::memory).collect()
    }

    /// The CPU time the running members have used, together, since they started.
    pub fn cpu_time(&self) -> Duration {
        self.members
            .iter()
            .filter_map(Member::pid)
            .filter_map(cpu_time)
            .sum()
    }

    /// Every member's data directory size.
    pub fn disk_usage(&self) -> Vec<MemberDisk> {
        self.members.iter().map(Member::disk_usage).collect()
    }
}
