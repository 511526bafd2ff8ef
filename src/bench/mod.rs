//! `bulwark bench`: Bulwark and a real etcd side by side, on this machine, in one run.
//!
//! It owns everything a run does: it starts a Bulwark cluster (this executable, by `init` and
//! `join`, as users start it) and an etcd cluster of the same size on free loopback ports, both
//! under one temporary directory; drives both with the same client code over the etcd v3 API;
//! runs each workload on Bulwark then on etcd, row by row, so that both see the same machine
//! state; and reports throughput, latency percentiles, peak memory and Bulwark/etcd ratios as
//! tables and, with `--json`, as JSON.
//!
//! Layout:
//! - `process.rs`: child processes (killed on drop and when the bench dies), free ports, memory
//!   from `/proc`.
//! - `cluster.rs`: a running cluster of either store as the workloads see it (connections,
//!   readiness, restarts, memory); `bulwark.rs` and `etcd.rs` start one each.
//! - `workload.rs`: the workloads (closed-loop clients, watch fan-out, load and restart).
//! - `disk.rs`: the disk's fsync floor.
//! - `stats.rs`: latency histograms and one store's measurement of one row.
//! - `report.rs`: the report, its tables and its JSON.
//!
//! Invariants: only 127.0.0.1; every process it starts is killed when the run ends, fails or is
//! interrupted; every wait has a bound; ratios only ever compare numbers from the same run.

mod bulwark;
mod cluster;
mod disk;
mod etcd;
mod process;
mod report;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};

use cluster::{Cluster, StoreKind};
use report::{Machine, Report, RestartComparison, Row, RunSettings};
use stats::Measurement;
use workload::{Settings, Workload, CLIENTS_PER_CONNECTION, MAX_KEYS, RANGE_SPAN};

/// Raft timings of both stores (etcd's defaults; Bulwark takes the same flags).
pub const RAFT_HEARTBEAT_MS: u64 = 100;
pub const RAFT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// Both stores' NOSPACE quota: etcd's largest suggested one. A load of 1 M keys of 256 bytes on
/// top of the rows' history outgrows Bulwark's default of 2 GiB; the report shows each member's
/// data directory size, so the quota hides nothing.
pub const QUOTA_BACKEND_BYTES: u64 = 8 << 30;
/// How long `etcd --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `bulwark bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Members of each cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    members: u8,
    /// The etcd server to compare with (Debian: `apt-get install etcd-server`).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Run etcd without TLS. By default etcd gets client and peer TLS with client certificates
    /// required, as Bulwark always has, so that the comparison is fair.
    #[arg(long)]
    etcd_plaintext: bool,
    /// Also write every number to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The workloads to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<WorkloadGroup>,
    /// Seconds each store runs each row [default: 5, or 1 with --quick].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Keys written before the rows, which puts, gets and ranges pick from [default: 10000, or
    /// 1000 with --quick].
    #[arg(long)]
    keys: Option<u64>,
    /// Bytes of every value written.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Keys loaded before the restart [default: 1000000, or 20000 with --quick].
    #[arg(long)]
    load_keys: Option<u64>,
    /// Watchers of the watch fan-out [default: 1000, or 100 with --quick].
    #[arg(long)]
    watchers: Option<usize>,
    /// Tiny rows and little data: checks that everything runs; its numbers mean little.
    #[arg(long)]
    quick: bool,
    /// Where the run's temporary directory goes (both stores' data and the fsync probe)
    /// [default: the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Workloads `--workloads` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadGroup {
    /// The disk's fsync floor.
    Fsync,
    /// Puts at 1, 16, 64 and 256 clients.
    Put,
    /// Linearizable and serializable gets at 1 and 64 clients.
    Get,
    /// Compare-and-swap transactions at 16 clients on 100 hot keys.
    Txn,
    /// Ranges of 100 keys at 16 clients.
    Range,
    /// One writer, many watchers.
    Watch,
    /// Load many keys, then restart a member.
    Restart,
}

/// Everything that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("etcd not found ({}): {}", .0.display(), etcd::INSTALL_HINT)]
    EtcdMissing(PathBuf),
    #[error("{option}: {reason}")]
    BadOption {
        option: &'static str,
        reason: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{process} exited ({status}):\n{output}")]
    Exited {
        process: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{process} not ready after {waited:?}:\n{output}")]
    NotReady {
        process: String,
        waited: Duration,
        output: String,
    },
    #[error("member {0} is not running")]
    NotRunning(String),
    #[error("no free loopback port found")]
    NoFreePort,
    #[error("{0}")]
    Connect(String),
    #[error("{what} on {store}: {message}")]
    Request {
        store: StoreKind,
        what: String,
        message: String,
    },
    #[error("{workload} on {store}: {errors} requests failed, the first with {first}")]
    Failed {
        store: StoreKind,
        workload: String,
        errors: u64,
        first: String,
    },
    #[error("a client task failed: {0}")]
    Task(String),
    #[error("certificates for etcd: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("writing {}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl BenchError {
    fn io(path: &Path, source: std::io::Error) -> BenchError {
        BenchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn request(store: StoreKind, what: &str, status: tonic::Status) -> BenchError {
        BenchError::Request {
            store,
            what: what.to_string(),
            message: format!("{}: {}", status.code(), status.message()),
        }
    }
}

/// A run's options, defaults filled in and checked.
struct Plan {
    members: usize,
    etcd_bin: PathBuf,
    etcd_tls: bool,
    json: Option<PathBuf>,
    groups: Vec<WorkloadGroup>,
    duration: Duration,
    keys: u64,
    value_size: usize,
    load_keys: u64,
    watchers: usize,
    quick: bool,
    dir: PathBuf,
}

impl Plan {
    fn new(args: BenchArgs) -> Result<Plan, BenchError> {
        let quick = args.quick;
        let pick = |given: Option<u64>, normal: u64, small: u64| {
            given.unwrap_or(if quick { small } else { normal })
        };
        let seconds = args.duration.unwrap_or(if quick { 1.0 } else { 5.0 });
        let duration = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| BenchError::BadOption {
                option: "--duration",
                reason: format!("{seconds} is not a positive number of seconds"),
            })?;
        let keys = pick(args.keys, 10_000, 1_000);
        if !(RANGE_SPAN..=MAX_KEYS).contains(&keys) {
            return Err(BenchError::BadOption {
                option: "--keys",
                reason: format!("between {RANGE_SPAN} and {MAX_KEYS}"),
            });
        }
        let load_keys = pick(args.load_keys, 1_000_000, 20_000);
        if !(1..=MAX_KEYS).contains(&load_keys) {
            return Err(BenchError::BadOption {
                option: "--load-keys",
                reason: format!("between 1 and {MAX_KEYS}"),
            });
        }
        let groups = if args.workloads.is_empty() {
            WorkloadGroup::value_variants().to_vec()
        } else {
            args.workloads
        };
        Ok(Plan {
            members: usize::from(args.members),
            etcd_bin: args.etcd_bin,
            etcd_tls: !args.etcd_plaintext,
            json: args.json,
            groups,
            duration,
            keys,
            value_size: args.value_size,
            load_keys,
            watchers: args
                .watchers
                .unwrap_or(if quick { 100 } else { 1000 })
                .max(1),
            quick,
            dir: args.dir.unwrap_or_else(std::env::temp_dir),
        })
    }

    fn runs(&self, group: WorkloadGroup) -> bool {
        self.groups.contains(&group)
    }

    /// The rows before the restart, in order.
    fn rows(&self) -> Vec<Workload> {
        let mut rows = Vec::new();
        if self.runs(WorkloadGroup::Put) {
            rows.extend([1, 16, 64, 256].map(|clients| Workload::Put { clients }));
        }
        if self.runs(WorkloadGroup::Get) {
            for serializable in [false, true] {
                rows.extend([1, 64].map(|clients| Workload::Get {
                    clients,
                    serializable,
                }));
            }
        }
        if self.runs(WorkloadGroup::Txn) {
            rows.push(Workload::TxnCas { clients: 16 });
        }
        if self.runs(WorkloadGroup::Range) {
            rows.push(Workload::Range { clients: 16 });
        }
        if self.runs(WorkloadGroup::Watch) {
            rows.push(Workload::WatchFanOut {
                watchers: self.watchers,
            });
        }
        rows
    }
}

/// `bulwark bench`: runs, prints the tables, writes the JSON. Ctrl-C or SIGTERM stops the run;
/// dropping it kills every process it started.
pub async fn main(args: BenchArgs) -> Result<(), String> {
    let plan = Plan::new(args).map_err(|e| e.to_string())?;
    let interrupted = crate::server::ShutdownSignals::install()
        .map_err(|e| format!("installing the SIGTERM/SIGINT handlers: {e}"))?;
    tokio::select! {
        result = run(plan) => result.map_err(|e| e.to_string()),
        () = interrupted.requested() => Err("interrupted; every process the bench started is stopped".to_string()),
    }
}

async fn run(plan: Plan) -> Result<(), BenchError> {
    let etcd_bin = etcd::find(&plan.etcd_bin)?;
    let etcd_version = etcd_version(&etcd_bin).await;
    // Declared first, so dropped last: the clusters' processes are killed before their
    // directories go.
    let dir = tempfile::Builder::new()
        .prefix("bulwark-bench-")
        .tempdir_in(&plan.dir)
        .map_err(|e| BenchError::io(&plan.dir, e))?;
    let rows = plan.rows();
    let restart = plan.runs(WorkloadGroup::Restart);
    let steps = 2
        + u64::from(plan.runs(WorkloadGroup::Fsync))
        + 2 * rows.len() as u64
        + if restart { 4 } else { 0 };
    let progress = Progress::new(steps);
    let settings = Arc::new(Settings {
        duration: plan.duration,
        keys: plan.keys,
        value: (0..plan.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
    });

    let fsync_floor = if plan.runs(WorkloadGroup::Fsync) {
        progress.start("disk fsync floor");
        let floor = disk::fsync_floor(dir.path(), plan.duration).await?;
        progress.done();
        Some(floor)
    } else {
        None
    };

    progress.start(&format!("starting {} Bulwark member(s)", plan.members));
    let mut bulwark = bulwark::start(dir.path(), plan.members).await?;
    workload::populate(&bulwark, &settings).await?;
    progress.done();
    progress.start(&format!("starting {} etcd member(s)", plan.members));
    let mut etcd = etcd::start(&etcd_bin, dir.path(), plan.members, plan.etcd_tls).await?;
    workload::populate(&etcd, &settings).await?;
    progress.done();

    let mut report_rows = Vec::new();
    for workload in rows {
        report_rows.push(run_row(workload, &bulwark, &etcd, &settings, &progress).await?);
    }
    let restart = if restart {
        let load = Workload::Load {
            keys: plan.load_keys,
        };
        let mut row = run_row(load, &bulwark, &etcd, &settings, &progress).await?;
        if plan.quick {
            row.workload.push_str(" (--quick)");
        }
        report_rows.push(row);
        progress.start("restart of a bulwark member");
        let on_bulwark = workload::restart_follower(&mut bulwark, plan.load_keys).await?;
        progress.done();
        progress.start("restart of an etcd member");
        let on_etcd = workload::restart_follower(&mut etcd, plan.load_keys).await?;
        progress.done();
        Some(RestartComparison::new(on_bulwark, on_etcd))
    } else {
        None
    };
    progress.finish();
    drop((bulwark, etcd));

    let report = Report {
        bulwark_version: env!("CARGO_PKG_VERSION").to_string(),
        etcd_version,
        machine: Machine::describe(dir.path()),
        settings: RunSettings {
            members: plan.members,
            etcd_tls: plan.etcd_tls,
            seconds_per_row: plan.duration.as_secs_f64(),
            keys: plan.keys,
            key_bytes: workload::key(workload::KeySpace::Plain, 0).len(),
            value_bytes: plan.value_size,
            quick: plan.quick,
            clients_per_connection: CLIENTS_PER_CONNECTION,
            raft_heartbeat_ms: RAFT_HEARTBEAT_MS,
            raft_election_timeout_ms: RAFT_ELECTION_TIMEOUT_MS,
            quota_backend_bytes: QUOTA_BACKEND_BYTES,
        },
        fsync_floor,
        rows: report_rows,
        restart,
    };
    print!("{}", report.render());
    if let Some(path) = &plan.json {
        let json = serde_json::to_vec_pretty(&report).map_err(|source| BenchError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(path, json).map_err(|e| BenchError::io(path, e))?;
    }
    Ok(())
}

/// One workload on Bulwark, then on etcd; each member's peak memory is reset before each. The
/// CPU time of the measured store's members, of the other store's (idle, it should use none: a
/// busy one would be stealing cores) and of the bench's clients is counted too.
async fn run_row(
    workload: Workload,
    bulwark: &Cluster,
    etcd: &Cluster,
    settings: &Arc<Settings>,
    progress: &Progress,
) -> Result<Row, BenchError> {
    let measure = async |cluster: &Cluster, other: &Cluster| -> Result<Measurement, BenchError> {
        let clients = workload.clients();
        progress.start(&format!(
            "{}, {clients} client{} on {}",
            workload.name(),
            if clients == 1 { "" } else { "s" },
            cluster.kind
        ));
        cluster.reset_peak_memory();
        let cpu_before = [cluster.cpu_time(), other.cpu_time(), own_cpu_time()];
        let mut measurement = workload.run(cluster, settings).await?;
        let cpu_after = [cluster.cpu_time(), other.cpu_time(), own_cpu_time()];
        measurement.memory = cluster.memory();
        for (name, (after, before)) in ["members_cpu_ms", "other_store_cpu_ms", "bench_cpu_ms"]
            .into_iter()
            .zip(cpu_after.into_iter().zip(cpu_before))
        {
            let used = after.saturating_sub(before).as_millis();
            measurement
                .counters
                .insert(name.to_string(), u64::try_from(used).unwrap_or(u64::MAX));
        }
        progress.done();
        Ok(measurement)
    };
    let on_bulwark = measure(bulwark, etcd).await?;
    let on_etcd = measure(etcd, bulwark).await?;
    Ok(Row::new(
        workload.name(),
        workload.clients(),
        on_bulwark,
        on_etcd,
    ))
}

/// The CPU time this process (the bench's clients) has used.
fn own_cpu_time() -> Duration {
    process::cpu_time(std::process::id()).unwrap_or_default()
}

/// `etcd --version`'s version number, or what went wrong.
async fn etcd_version(program: &Path) -> String {
    let output = tokio::time::timeout(
        VERSION_TIMEOUT,
        tokio::process::Command::new(program)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match output {
        Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("etcd Version:"))
            .map_or("unknown".to_string(), |v| v.trim().to_string()),
        _ => "unknown".to_string(),
    }
}

/// The progress bar (on stderr, hidden when it is not a terminal), with a line per step that
/// shows even then, so a log says where a run was.
struct Progress {
    bar: ProgressBar,
    step_started: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new(steps: u64) -> Progress {
        let bar = ProgressBar::new(steps);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            step_started: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn start(&self, step: &str) {
        *self.step_started.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.bar.set_message(step.to_string());
        if self.bar.is_hidden() {
            eprintln!("bench: {step}");
        }
    }

    fn done(&self) {
        self.bar.inc(1);
        if self.bar.is_hidden() {
            let took = self
                .step_started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            eprintln!("bench:   done in {:.1} s", took.as_secs_f64());
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
