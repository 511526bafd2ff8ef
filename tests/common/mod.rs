//! The harness every whole-cluster test uses: real `bulwark` processes on free loopback ports,
//! each cluster in its own temporary directory, driven by `etcdctl` 3.4, the `etcd-client` crate,
//! Bulwark's own CLI, and raw bytes.
//!
//! # Layout
//!
//! - this file: free ports, running a command under a deadline ([`run_bounded`]), [`Member`] (one
//!   `bulwark` process made by `init` or `join`, its data directory and logs).
//! - `cluster.rs`: [`Cluster`], a temporary directory holding N members (one, or 3 to 5 joined
//!   with the manager token), their status (leader, learners, convergence) and faults: kill -9,
//!   restart, SIGSTOP/SIGCONT, and network faults through `proxy.rs`.
//! - `proxy.rs`: [`proxy::Network`], a fault-injecting TCP proxy in front of every peer port
//!   (members advertise it with `--advertise-peer`): pass, drop, blackhole or delay each
//!   direction between two members.
//! - `etcdctl.rs`: [`Etcdctl`], etcdctl 3.4 with a member's endpoint and TLS flags.
//! - `background.rs`: [`Background`], a command left running (a lock holder, a keep-alive), its
//!   output collected, killed with its children on drop.
//! - `client.rs`: connected `etcd_client::Client`s and gRPC error assertions.
//! - `raw.rs`: raw TLS connections and hand-made HTTP/2 frames, for handshake and hostile-input
//!   tests.
//! - `json.rs`: normalising etcdctl's JSON before comparing it with etcd's.
//!
//! # Rules every test keeps
//!
//! - Only 127.0.0.1.
//! - Every wait has a deadline; the deadlines are generous bounds, never assertions about speed.
//! - Every process is SIGKILLed and waited for when its [`Member`] drops, even when the test
//!   panics; the member's logs are printed then (libtest shows them with the failure).
//! - Tests share nothing: each starts its own cluster in its own directory.
//!
//! Set `BULWARK_TEST_KEEP_DIRS=1` to keep the directory of a failed test for inspection.
#![allow(dead_code)]

pub mod background;
pub mod client;
pub mod cluster;
pub mod etcdctl;
pub mod json;
pub mod proxy;
pub mod raw;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use background::Background;
#[allow(unused_imports)]
pub use cluster::{Cluster, ClusterOptions};
#[allow(unused_imports)]
pub use etcdctl::Etcdctl;

/// The binary under test, built by cargo for this test run.
pub const BULWARK: &str = env!("CARGO_BIN_EXE_bulwark");

/// How long a member may take to print its "serving" line. Generous: the machine may be
/// compiling at the same time.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member may take to exit after SIGTERM/SIGINT before we call it hung.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (etcdctl, `bulwark get`, a refused `bulwark init`) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval of every wait loop.
const POLL: Duration = Duration::from_millis(25);
/// How many fresh port pairs `init` tries when the server cannot bind (another process took a
/// port between our probe and its bind).
const BIND_ATTEMPTS: usize = 5;

/// Raft timings of cluster tests (`--heartbeat-interval`, `--election-timeout`, ms): a lost
/// leader is replaced quickly, and a loaded machine still keeps a leader.
pub const FAST_HEARTBEAT_MS: u64 = 50;
pub const FAST_ELECTION_TIMEOUT_MS: u64 = 500;

/// The line a member prints once it is ready, followed by its client URL.
pub const SERVING_PREFIX: &str = "bulwark: serving clients on ";

// ---------------------------------------------------------------------------------------------
// Ports

/// A loopback port nothing listens on right now: bind port 0, read the port, drop the socket.
/// Ports handed out earlier in this process are never handed out again, so concurrent tests of
/// one binary do not collide with each other; a collision with another process is caught when
/// the member fails to bind, and `Member::init` retries with new ports.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found in 1000 tries");
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// One-shot commands

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    pub stdout: String,
    pub stderr: String,
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with everything the command printed unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed:\n{self}");
        self
    }

    /// Panics unless it exited with a non-zero code.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            matches!(self.code, Some(code) if code != 0),
            "command should have failed with a non-zero exit code:\n{self}"
        );
        self
    }

    /// stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// stderr without etcdctl's structured (JSON) log lines, which carry timestamps.
    pub fn stderr_messages(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| !line.starts_with("{\"level\""))
            .collect()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion, feeding it `stdin`, and kills it if it runs past `timeout`
/// (which is a test failure: a hung command).
pub fn run_bounded(mut command: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            // The command may exit without reading everything; that is its business.
            let _ = pipe.write_all(&bytes);
        })
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a command") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let output = Output {
        command: description,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        code: status.and_then(|s| s.code()),
    };
    assert!(
        status.is_some(),
        "command still running after {timeout:?}, killed:\n{output}"
    );
    output
}

/// Runs `bulwark ARGS` to completion (a client command, or a server command expected to refuse).
pub fn run_bulwark<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut command = Command::new(BULWARK);
    command.args(args).env("RUST_BACKTRACE", "1");
    run_bounded(command, None, COMMAND_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// Members

/// Server options a member starts with; `serve` after a restart gets the same limits.
#[derive(Debug, Clone, Default)]
pub struct MemberOptions {
    /// `--name`; `m0`, `m1`, ... by default.
    pub name: Option<String>,
    pub max_request_bytes: Option<usize>,
    pub max_txn_ops: Option<usize>,
    /// `--heartbeat-interval` and `--election-timeout`, in milliseconds.
    pub raft_timings: Option<(u64, u64)>,
    /// `--snapshot-count`.
    pub snapshot_count: Option<u64>,
    /// `BULWARK_LOG` (a tracing filter), e.g. to see openraft's own info lines.
    pub log_filter: Option<String>,
    /// `--quota-backend-bytes`: above it the NOSPACE alarm is raised.
    pub quota_backend_bytes: Option<u64>,
    /// `--watch-progress-notify-interval`, in seconds.
    pub watch_progress_notify_interval: Option<u64>,
}

impl MemberOptions {
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = Some(bytes);
        self
    }
    pub fn max_txn_ops(mut self, ops: usize) -> Self {
        self.max_txn_ops = Some(ops);
        self
    }
    /// Raft heartbeat interval and election timeout, in milliseconds.
    pub fn raft_timings(mut self, heartbeat_ms: u64, election_timeout_ms: u64) -> Self {
        self.raft_timings = Some((heartbeat_ms, election_timeout_ms));
        self
    }
    /// Short Raft timings for cluster tests: a lost leader is replaced within a second or two.
    pub fn fast_raft(self) -> Self {
        self.raft_timings(FAST_HEARTBEAT_MS, FAST_ELECTION_TIMEOUT_MS)
    }
    pub fn snapshot_count(mut self, entries: u64) -> Self {
        self.snapshot_count = Some(entries);
        self
    }
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_string());
        self
    }
    pub fn quota_backend_bytes(mut self, bytes: u64) -> Self {
        self.quota_backend_bytes = Some(bytes);
        self
    }
    pub fn watch_progress_notify_interval(mut self, seconds: u64) -> Self {
        self.watch_progress_notify_interval = Some(seconds);
        self
    }

    /// The flags `init`, `join` and `serve` all take.
    fn serve_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(bytes) = self.max_request_bytes {
            args.extend(["--max-request-bytes".to_string(), bytes.to_string()]);
        }
        if let Some(ops) = self.max_txn_ops {
            args.extend(["--max-txn-ops".to_string(), ops.to_string()]);
        }
        if let Some((heartbeat, election)) = self.raft_timings {
            args.extend([
                "--heartbeat-interval".to_string(),
                heartbeat.to_string(),
                "--election-timeout".to_string(),
                election.to_string(),
            ]);
        }
        if let Some(entries) = self.snapshot_count {
            args.extend(["--snapshot-count".to_string(), entries.to_string()]);
        }
        if let Some(bytes) = self.quota_backend_bytes {
            args.extend(["--quota-backend-bytes".to_string(), bytes.to_string()]);
        }
        if let Some(seconds) = self.watch_progress_notify_interval {
            args.extend([
                "--watch-progress-notify-interval".to_string(),
                seconds.to_string(),
            ]);
        }
        args
    }
}

/// The three files of a client identity (what etcdctl's `--cacert --cert --key` take).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A member's own identity: its member certificate and key, and the cluster CA, from
    /// `DIR/pki/` (what it presents to other members on their peer ports).
    pub fn member_of(data_dir: &Path) -> TlsFiles {
        let pki = data_dir.join("pki");
        TlsFiles {
            ca: pki.join("ca.crt"),
            cert: pki.join("member.crt"),
            key: pki.join("member.key"),
        }
    }

    /// The admin identity `bulwark init` writes into `DIR/admin/`.
    pub fn admin_of(data_dir: &Path) -> TlsFiles {
        TlsFiles::client_in(&data_dir.join("admin"))
    }

    /// A client identity as `bulwark init`, `login` and `identity issue` write one:
    /// `DIR/ca.crt`, `DIR/client.crt`, `DIR/client.key`.
    pub fn client_in(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
        }
    }
}

enum StartError {
    /// The member could not bind its ports: someone took them. Retry with others.
    AddressInUse(String),
    Failed(String),
}

/// How a new member comes to be: a new cluster, or a join through a member's peer port.
#[derive(Debug, Clone)]
pub enum Origin {
    /// `bulwark init`.
    Init,
    /// `bulwark join --token TOKEN --peer PEER`; `admin` is the cluster's admin identity (a
    /// joined member has none of its own).
    Join {
        token: String,
        peer: SocketAddr,
        admin: TlsFiles,
    },
}

/// Where a new member's peer listener is and what it tells other members to dial.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerAddress {
    /// `--listen-peer`; a fresh port (chosen again on a bind failure) when `None`.
    pub listen: Option<SocketAddr>,
    /// `--advertise-peer`, e.g. a proxy in front of the listener.
    pub advertise: Option<SocketAddr>,
}

/// One `bulwark` member: its data directory, its addresses, its current process (if running)
/// and the logs of every process it has run. Dropping it SIGKILLs the process.
pub struct Member {
    name: String,
    data_dir: PathBuf,
    log_dir: PathBuf,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    advertise_peer: Option<SocketAddr>,
    /// The identity clients of this member use: its own `admin/` after `init`, the cluster's
    /// after `join`.
    admin: TlsFiles,
    joined: bool,
    options: MemberOptions,
    process: Option<Child>,
    /// The running process's id (0 when none), shared with the peer proxy, which recognises the
    /// member's connections by it.
    pid: Arc<AtomicU32>,
    /// How many processes this member has run; names the log files.
    runs: u32,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Member {
    /// `bulwark init` a new one-member cluster in `data_dir` (empty or missing) on fresh loopback
    /// ports, and waits until it serves. Panics, with the logs, if it does not.
    pub fn init(data_dir: &Path, options: MemberOptions) -> Member {
        Member::create(data_dir, options, &Origin::Init, PeerAddress::default())
    }

    /// `bulwark init` or `bulwark join` a new member in `data_dir` (empty or missing) on fresh
    /// loopback client (and, unless given, peer) ports, and waits until it serves. Panics, with
    /// the logs, if it does not (a refused join included: see [`Member::try_create`]).
    pub fn create(
        data_dir: &Path,
        options: MemberOptions,
        origin: &Origin,
        peer: PeerAddress,
    ) -> Member {
        Member::try_create(data_dir, options, origin, peer).unwrap_or_else(|text| panic!("{text}"))
    }

    /// [`Member::create`], returning what the process printed if it exits or hangs before it
    /// serves (e.g. a refused join).
    pub fn try_create(
        data_dir: &Path,
        options: MemberOptions,
        origin: &Origin,
        peer: PeerAddress,
    ) -> Result<Member, String> {
        let name = options.name.clone().unwrap_or_else(|| "m0".to_string());
        let log_dir = log_dir_of(data_dir);
        fs::create_dir_all(&log_dir).expect("creating the log directory");
        let mut failures = Vec::new();
        for attempt in 0..BIND_ATTEMPTS {
            if attempt > 0 {
                // The refused attempt may have written a member before failing to bind.
                let _ = fs::remove_dir_all(data_dir);
            }
            let (admin, joined) = match origin {
                Origin::Init => (TlsFiles::admin_of(data_dir), false),
                Origin::Join { admin, .. } => (admin.clone(), true),
            };
            let mut member = Member {
                name: name.clone(),
                data_dir: data_dir.to_path_buf(),
                log_dir: log_dir.clone(),
                client_addr: loopback(free_port()),
                peer_addr: peer.listen.unwrap_or_else(|| loopback(free_port())),
                advertise_peer: peer.advertise,
                admin,
                joined,
                options: options.clone(),
                process: None,
                pid: Arc::new(AtomicU32::new(0)),
                runs: runs_logged(&log_dir),
                stdout_path: PathBuf::new(),
                stderr_path: PathBuf::new(),
            };
            let mut args = match origin {
                Origin::Init => vec!["init".to_string()],
                Origin::Join { token, peer, .. } => vec![
                    "join".to_string(),
                    "--token".to_string(),
                    token.clone(),
                    "--peer".to_string(),
                    peer.to_string(),
                ],
            };
            args.extend([
                "--data-dir".to_string(),
                data_dir.display().to_string(),
                "--name".to_string(),
                name.clone(),
                "--listen-client".to_string(),
                member.client_addr.to_string(),
                "--listen-peer".to_string(),
                member.peer_addr.to_string(),
            ]);
            if let Some(advertise) = peer.advertise {
                args.extend(["--advertise-peer".to_string(), advertise.to_string()]);
            }
            args.extend(options.serve_args());
            let label = if joined { "join" } else { "init" };
            member.spawn(&args, label);
            match member.wait_ready() {
                Ok(()) => return Ok(member),
                // A join that got as far as binding was admitted: the cluster knows this member
                // by its recorded addresses now, so only `serve` on them may continue it.
                Err(StartError::AddressInUse(_))
                    if joined && member.data_dir.join("member.toml").exists() =>
                {
                    member.restart();
                    return Ok(member);
                }
                Err(StartError::AddressInUse(text)) if peer.listen.is_none() => failures.push(text),
                Err(StartError::AddressInUse(text)) | Err(StartError::Failed(text)) => {
                    return Err(format!("member {name} did not start:\n{text}"))
                }
            }
        }
        Err(format!(
            "member {name} could not bind free ports in {BIND_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        ))
    }

    /// A member whose directory another command prepared (`bulwark snapshot restore ...
    /// --listen-client CLIENT --listen-peer PEER`), with the admin identity that command wrote in
    /// `DIR/admin/`. Not running: [`Member::restart`] serves it.
    pub fn prepared(
        data_dir: &Path,
        options: MemberOptions,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> Member {
        let log_dir = log_dir_of(data_dir);
        fs::create_dir_all(&log_dir).expect("creating the log directory");
        Member {
            name: options.name.clone().unwrap_or_else(|| "m0".to_string()),
            data_dir: data_dir.to_path_buf(),
            runs: runs_logged(&log_dir),
            log_dir,
            client_addr,
            peer_addr,
            advertise_peer: None,
            admin: TlsFiles::admin_of(data_dir),
            joined: false,
            options,
            process: None,
            pid: Arc::new(AtomicU32::new(0)),
            stdout_path: PathBuf::new(),
            stderr_path: PathBuf::new(),
        }
    }

    /// `bulwark serve` the member again (after `kill9`, `terminate` or `interrupt`), on the
    /// addresses `init` recorded, and waits until it serves.
    pub fn restart(&mut self) {
        assert!(
            self.process.is_none(),
            "restart() of a running member: stop it first"
        );
        let deadline = Instant::now() + START_TIMEOUT;
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        args.extend(self.options.serve_args());
        loop {
            self.spawn(&args, "serve");
            match self.wait_ready() {
                Ok(()) => return,
                // Its recorded port is briefly taken by someone else: it is ours again soon.
                Err(StartError::AddressInUse(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(StartError::AddressInUse(text)) | Err(StartError::Failed(text)) => {
                    panic!("member {} did not restart:\n{text}", self.name)
                }
            }
        }
    }

    fn spawn(&mut self, args: &[String], label: &str) {
        self.runs += 1;
        self.stdout_path = self
            .log_dir
            .join(format!("{:02}-{label}.stdout", self.runs));
        self.stderr_path = self
            .log_dir
            .join(format!("{:02}-{label}.stderr", self.runs));
        let stdout = File::create(&self.stdout_path).expect("creating the stdout log");
        let stderr = File::create(&self.stderr_path).expect("creating the stderr log");
        let mut command = Command::new(BULWARK);
        command
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(filter) = &self.options.log_filter {
            command.env("BULWARK_LOG", filter);
        }
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BULWARK}: {e}"));
        self.pid.store(child.id(), Ordering::SeqCst);
        self.process = Some(child);
    }

    /// Polls the current process's stdout for the serving line, bounded by [`START_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let expected = format!("{SERVING_PREFIX}https://{}", self.client_addr);
        loop {
            let stdout = read_lossy(&self.stdout_path);
            for line in stdout.lines() {
                if line == expected || line.starts_with(&format!("{expected} ")) {
                    return Ok(());
                }
                if line.starts_with(SERVING_PREFIX) {
                    self.kill9();
                    return Err(StartError::Failed(format!(
                        "serves on an unexpected address: {line:?}, expected {expected:?}\n{}",
                        self.logs()
                    )));
                }
            }
            let child = self.process.as_mut().expect("a process to wait for");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.process = None;
                self.pid.store(0, Ordering::SeqCst);
                let stderr = read_lossy(&self.stderr_path);
                let text = format!("exited ({status}) before serving\n{}", self.logs());
                let lowered = stderr.to_lowercase();
                if lowered.contains("address already in use") || lowered.contains("cannot listen") {
                    return Err(StartError::AddressInUse(text));
                }
                return Err(StartError::Failed(text));
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(StartError::Failed(format!(
                    "not serving after {START_TIMEOUT:?}\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL the process (if running) and reap it: a crash at an arbitrary moment.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// SIGTERM and wait for the exit; returns its status. Panics (after SIGKILL) if it does not
    /// exit within [`STOP_TIMEOUT`].
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// SIGINT (Ctrl-C) and wait for the exit, like [`Member::terminate`].
    pub fn interrupt(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGINT)
    }

    fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        self.signal(signal);
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Waits for the process to exit and returns its status. Panics (after SIGKILL) if it is
    /// still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self
            .process
            .take()
            .unwrap_or_else(|| panic!("member {} is not running", self.name));
        self.pid.store(0, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "member {} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGSTOP: the process stays, frozen (a stalled member).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Member::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("member {} is not running", self.name));
        // SAFETY: kill(2) on our unreaped child.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill({}, {signal}) failed", child.id());
    }

    /// Whether the process is running (reaps it if it exited on its own).
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.process = None;
                self.pid.store(0, Ordering::SeqCst);
                false
            }
            None => false,
        }
    }

    /// Whether the harness started a process it has not stopped (it may have exited on its own
    /// since; [`Member::is_running`] checks).
    pub fn has_process(&self) -> bool {
        self.process.is_some()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The file that names the member's kept Raft snapshot (absent until it takes one).
    pub fn kept_snapshot(&self) -> PathBuf {
        self.data_dir.join("state/snapshot/current")
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }
    /// The address the peer listener binds.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }
    /// The peer address other members dial: the advertised one, else the listener's.
    pub fn advertised_peer_addr(&self) -> SocketAddr {
        self.advertise_peer.unwrap_or(self.peer_addr)
    }
    /// The running process's id, shared (0 when not running).
    pub fn pid_handle(&self) -> Arc<AtomicU32> {
        self.pid.clone()
    }
    /// The member id the member printed when it last started (`bulwark: member NAME (ID) of
    /// cluster ...`); `None` before it has started.
    pub fn id(&self) -> Option<u64> {
        self.stdout().lines().find_map(|line| {
            let rest = line.strip_prefix(&format!("bulwark: member {} (", self.name))?;
            u64::from_str_radix(rest.split(')').next()?, 16).ok()
        })
    }
    /// The options its next `restart` uses.
    pub fn options_mut(&mut self) -> &mut MemberOptions {
        &mut self.options
    }
    /// Whether it was made by `bulwark join` (and has no admin identity of its own).
    pub fn joined(&self) -> bool {
        self.joined
    }
    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.client_addr)
    }
    /// The admin identity its clients use: the one `init` wrote in its directory, or for a
    /// joined member the cluster's.
    pub fn admin(&self) -> TlsFiles {
        self.admin.clone()
    }
    /// etcdctl against this member with the admin identity.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.endpoint()).tls(&self.admin())
    }
    /// `bulwark ARGS --data-dir DIR`: Bulwark's client CLI with this member's admin identity
    /// (for a joined member, which has none in its directory, the explicit endpoint and TLS
    /// flags instead).
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bulwark(&self.cli_args(args))
    }
    /// `bulwark ARGS` like [`Member::cli`], left running (`bulwark lock NAME -- COMMAND`,
    /// `bulwark lease keep-alive ID`).
    pub fn spawn_cli(&self, args: &[&str]) -> Background {
        let mut command = Command::new(BULWARK);
        command.args(self.cli_args(args)).env("RUST_BACKTRACE", "1");
        Background::spawn(command)
    }
    /// `bulwark ARGS` against this member as `identity` (explicit endpoint and TLS flags), e.g.
    /// a client identity that is not the admin.
    pub fn cli_as(&self, identity: &TlsFiles, args: &[&str]) -> Output {
        run_bulwark(&with_connection(args, self.connection_flags(identity)))
    }
    /// `args` with this member's connection flags, placed before a `--` that starts a command
    /// for the CLI to run (`bulwark lock NAME -- COMMAND`).
    fn cli_args(&self, args: &[&str]) -> Vec<String> {
        let connection = if self.joined {
            self.connection_flags(&self.admin)
        } else {
            vec![
                "--data-dir".to_string(),
                self.data_dir.display().to_string(),
            ]
        };
        with_connection(args, connection)
    }
    /// `--endpoints` (this member) and the TLS flags of `identity`.
    fn connection_flags(&self, identity: &TlsFiles) -> Vec<String> {
        vec![
            "--endpoints".to_string(),
            self.endpoint(),
            "--cacert".to_string(),
            identity.ca.display().to_string(),
            "--cert".to_string(),
            identity.cert.display().to_string(),
            "--key".to_string(),
            identity.key.display().to_string(),
        ]
    }
    /// What the current (or last) process printed on stdout.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Every log of every process this member ran, for failure messages.
    pub fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.log_dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        let mut text = format!("===== logs of member {} =====\n", self.name);
        for file in files {
            text.push_str(&format!("----- {} -----\n", file.display()));
            text.push_str(&read_lossy(&file));
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// `args` with `connection` (flags) placed before a `--` that starts a command for the CLI to run.
fn with_connection(args: &[&str], connection: Vec<String>) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    all.splice(at..at, connection);
    all
}

/// The child (a member, an etcdctl) gets SIGKILL if the test thread that started it dies
/// without its `Drop` running (the test binary itself killed): nothing a test started outlives
/// the run.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn log_dir_of(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "member".into());
    name.push(".logs");
    data_dir.with_file_name(name)
}

/// How many processes already left logs in `log_dir` (a member re-made in the same directory
/// keeps the earlier logs, numbered before its own).
fn runs_logged(log_dir: &Path) -> u32 {
    fs::read_dir(log_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "stdout"))
                .count() as u32
        })
        .unwrap_or(0)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// What etcdctl printed against real etcd 3.4.23 in step `step` (e.g. `"23-lease-ttl-json"`)
/// of the single-member reference samples (`../shared/etcd-reference/samples/`, or
/// `BULWARK_ETCD_SAMPLES`).
pub fn etcd_sample_output(step: &str) -> String {
    let dir = match std::env::var_os("BULWARK_ETCD_SAMPLES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/etcd-reference/samples/single-member"),
    };
    let path = dir.join(format!("{step}.out"));
    fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "etcd reference sample {} ({e}); set BULWARK_ETCD_SAMPLES",
            path.display()
        )
    })
}

/// A fresh temporary directory for a test's members.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bulwark-test-")
        .tempdir()
        .expect("creating a temporary directory")
}
