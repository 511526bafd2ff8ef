//! The result of a run: every number (serialized as the `--json` file) and the tables printed at
//! the end. Ratios are always Bulwark over etcd, from the same run.

use std::path::Path;

use serde::Serialize;

use super::stats::{ratio, Measurement};
use super::workload::Restart;
use crate::cli::bordered_table;

#[derive(Debug, Serialize)]
pub struct Report {
    pub bulwark_version: String,
    pub etcd_version: String,
    pub machine: Machine,
    pub settings: RunSettings,
    /// 4 KiB write + fdatasync in the run's directory.
    pub fsync_floor: Option<Measurement>,
    pub rows: Vec<Row>,
    pub restart: Option<RestartComparison>,
}

/// Where the run ran.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// The run's directory and the filesystem holding it (both stores' data and the fsync probe).
    pub data_dir: String,
    pub filesystem: String,
}

/// How the run was configured.
#[derive(Debug, Serialize)]
pub struct RunSettings {
    pub members: usize,
    pub etcd_tls: bool,
    pub seconds_per_row: f64,
    pub keys: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub quick: bool,
    pub clients_per_connection: usize,
    pub raft_heartbeat_ms: u64,
    pub raft_election_timeout_ms: u64,
    pub quota_backend_bytes: u64,
}

/// One workload on both stores.
#[derive(Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub clients: usize,
    pub bulwark: Measurement,
    pub etcd: Measurement,
    /// Bulwark's ops/s over etcd's: above 1, Bulwark does more.
    pub throughput_ratio: Option<f64>,
    /// Bulwark's p99 latency over etcd's: below 1, Bulwark's is lower.
    pub p99_ratio: Option<f64>,
}

impl Row {
    pub fn new(workload: String, clients: usize, bulwark: Measurement, etcd: Measurement) -> Row {
        let p99 = |m: &Measurement| m.latency.map_or(0.0, |l| l.p99_ms);
        Row {
            throughput_ratio: ratio(bulwark.ops_per_sec, etcd.ops_per_sec),
            p99_ratio: ratio(p99(&bulwark), p99(&etcd)),
            workload,
            clients,
            bulwark,
            etcd,
        }
    }
}

/// The restart of a member holding the loaded keys, on both stores.
#[derive(Debug, Serialize)]
pub struct RestartComparison {
    pub bulwark: Restart,
    pub etcd: Restart,
    /// Bulwark's time to a linearizable get over etcd's: below 1, Bulwark serves sooner.
    pub time_ratio: Option<f64>,
    /// Bulwark's largest member RSS holding the keys over etcd's: below 1, Bulwark uses less.
    pub rss_ratio: Option<f64>,
}

impl RestartComparison {
    pub fn new(bulwark: Restart, etcd: Restart) -> RestartComparison {
        let rss = |r: &Restart| {
            r.memory_with_keys
                .iter()
                .map(|m| m.rss_mib)
                .fold(0.0, f64::max)
        };
        RestartComparison {
            time_ratio: ratio(
                bulwark.seconds_to_linearizable_get,
                etcd.seconds_to_linearizable_get,
            ),
            rss_ratio: ratio(rss(&bulwark), rss(&etcd)),
            bulwark,
            etcd,
        }
    }
}

impl Report {
    /// The tables for people.
    pub fn render(&self) -> String {
        let s = &self.settings;
        let mut text = format!(
            "Bulwark {} vs etcd {}: {} member{} each, etcd {}; {} s per row and store; \
             {}-byte keys, {}-byte values{}\n",
            self.bulwark_version,
            self.etcd_version,
            s.members,
            if s.members == 1 { "" } else { "s" },
            if s.etcd_tls {
                "with client and peer TLS and client certificates, like Bulwark"
            } else {
                "in PLAINTEXT (Bulwark always uses mutual TLS)"
            },
            s.seconds_per_row,
            s.key_bytes,
            s.value_bytes,
            if s.quick {
                " (--quick: tiny rows and data, not a measurement)"
            } else {
                ""
            },
        );
        let m = &self.machine;
        text.push_str(&format!(
            "machine: {} cores, {:.0} GiB, Linux {}; data in {} ({})\n",
            m.cores, m.memory_gib, m.kernel, m.data_dir, m.filesystem
        ));
        if let Some(floor) = &self.fsync_floor {
            text.push_str(&format!(
                "disk floor (4 KiB write + fdatasync): {:.0}/s, {}\n",
                floor.ops_per_sec,
                latency_text(floor)
            ));
        }
        text.push('\n');
        text.push_str(&self.rows_table());
        text.push_str(
            "B/E: Bulwark / etcd. ops/s above 1: Bulwark does more; p99 below 1: Bulwark's tail \
             is lower. RSS: the largest member's peak during the row. CPU: the store's members, \
             together, during the row; per op: that CPU over what ops/s counts.\n",
        );
        if let (Some(floor), Some(put)) = (&self.fsync_floor, self.single_client_put()) {
            let versus = |m: &Measurement| {
                match (m.latency, floor.latency) {
                    (Some(put), Some(disk)) => ratio(put.p50_ms, disk.p50_ms),
                    _ => None,
                }
                .map_or("-".to_string(), |r| format!("{r:.2}x"))
            };
            text.push_str(&format!(
                "single-client put p50 over the disk's fsync p50: Bulwark {}, etcd {}\n",
                versus(&put.bulwark),
                versus(&put.etcd)
            ));
        }
        if let Some(restart) = &self.restart {
            text.push('\n');
            text.push_str(&restart.render());
        }
        text
    }

    fn single_client_put(&self) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.workload == "put" && row.clients == 1)
    }

    fn rows_table(&self) -> String {
        let headers = [
            "workload",
            "store",
            "clients",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "RSS MiB",
            "CPU s",
            "CPU us/op",
            "errors",
            "B/E ops/s",
            "B/E p99",
        ];
        let mut rows = Vec::new();
        for row in &self.rows {
            for (store, m) in [("bulwark", &row.bulwark), ("etcd", &row.etcd)] {
                let first = store == "bulwark";
                let cpu_ms = m.counters.get("members_cpu_ms").map(|ms| *ms as f64);
                let percentile = |pick: fn(&super::stats::Percentiles) -> f64| {
                    m.latency.as_ref().map_or("-".to_string(), |l| ms(pick(l)))
                };
                rows.push(vec![
                    if first {
                        row.workload.clone()
                    } else {
                        String::new()
                    },
                    store.to_string(),
                    row.clients.to_string(),
                    format!("{:.0}", m.ops_per_sec),
                    percentile(|l| l.p50_ms),
                    percentile(|l| l.p99_ms),
                    percentile(|l| l.p999_ms),
                    m.max_peak_rss_mib()
                        .map_or("-".to_string(), |mib| format!("{mib:.0}")),
                    cpu_ms.map_or("-".to_string(), |ms| format!("{:.1}", ms / 1000.0)),
                    cpu_ms.filter(|_| m.ops > 0).map_or("-".to_string(), |ms| {
                        format!("{:.0}", ms * 1000.0 / m.ops as f64)
                    }),
                    m.errors.to_string(),
                    if first {
                        factor(row.throughput_ratio)
                    } else {
                        String::new()
                    },
                    if first {
                        factor(row.p99_ratio)
                    } else {
                        String::new()
                    },
                ]);
            }
        }
        bordered_table(&headers, &rows, 2)
    }
}

impl RestartComparison {
    fn render(&self) -> String {
        let mut text = format!(
            "restart of a follower (the only member of a one-member cluster) holding {} loaded \
             keys, timed from its spawn:\n",
            self.bulwark.keys
        );
        let headers = [
            "store",
            "member",
            "RSS with keys, MiB (each member)",
            "data dir MiB",
            "stop s",
            "to serializable get s",
            "to linearizable get s",
            "RSS after restart MiB",
        ];
        let mut rows = Vec::new();
        for (store, r) in [("bulwark", &self.bulwark), ("etcd", &self.etcd)] {
            rows.push(vec![
                store.to_string(),
                r.member.clone(),
                r.memory_with_keys
                    .iter()
                    .map(|m| format!("{:.0}", m.rss_mib))
                    .collect::<Vec<_>>()
                    .join(" / "),
                r.disk_with_keys
                    .iter()
                    .map(|d| format!("{:.0}", d.mib))
                    .collect::<Vec<_>>()
                    .join(" / "),
                format!("{:.2}", r.stop_seconds),
                format!("{:.3}", r.seconds_to_serializable_get),
                format!("{:.3}", r.seconds_to_linearizable_get),
                r.memory_after
                    .as_ref()
                    .map_or("-".to_string(), |m| format!("{:.0}", m.rss_mib)),
            ]);
        }
        text.push_str(&bordered_table(&headers, &rows, 2));
        text.push_str(&format!(
            "B/E: time to a linearizable get {}, RSS with keys (largest member) {} (below 1: \
             Bulwark is better)\n",
            factor(self.time_ratio),
            factor(self.rss_ratio)
        ));
        text
    }
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn factor(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |r| format!("{r:.2}"))
}

fn latency_text(m: &Measurement) -> String {
    m.latency.map_or("no samples".to_string(), |l| {
        format!(
            "p50 {} ms, p99 {} ms, p99.9 {} ms",
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.p999_ms)
        )
    })
}

impl Machine {
    /// This machine, with the filesystem holding `data_dir`.
    pub fn describe(data_dir: &Path) -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_string())
                .unwrap_or_default(),
            data_dir: data_dir.display().to_string(),
            filesystem: filesystem_of(data_dir),
        }
    }
}

/// The type of the filesystem `path` is on: the mount in `/proc/mounts` with the longest mount
/// point that contains it.
fn filesystem_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), kind.to_string()))
        })
        .max()
        .map_or("unknown".to_string(), |(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_filesystem_is_found() {
        assert_ne!(filesystem_of(Path::new("/")), "unknown");
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(ms(0.1234), "0.12");
        assert_eq!(ms(12.345), "12.3");
        assert_eq!(ms(123.45), "123");
    }
}
