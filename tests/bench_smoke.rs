//! `bulwark bench --quick` runs end to end against a real etcd: it exits 0 and its JSON report
//! has every row. A smoke test only: it asserts nothing about speed (see docs/benchmarks.md for
//! the measurements).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_bounded, temp_dir, BULWARK};
use serde_json::Value;

/// A bound on the whole run, generous for a debug build on a busy machine; it usually takes
/// well under a minute.
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Every row of a default run: (workload, clients).
const ROWS: [(&str, u64); 12] = [
    ("put", 1),
    ("put", 16),
    ("put", 64),
    ("put", 256),
    ("get, linearizable", 1),
    ("get, linearizable", 64),
    ("get, serializable", 1),
    ("get, serializable", 64),
    ("txn CAS, 100 hot keys", 16),
    ("range of 100 keys", 16),
    ("watch fan-out to 50: events/s; put latency", 1),
    ("load 5000 keys, txns of 100 (--quick)", 16),
];

#[test]
fn quick_bench_against_etcd_reports_every_row() {
    let installed = Command::new("etcd").arg("--version").output();
    assert!(
        installed.is_ok_and(|output| output.status.success()),
        "etcd is not installed: this test runs `bulwark bench` against a real etcd. Install it \
         with `apt-get install etcd-server` (scripts/test.sh does so when it is missing)."
    );
    let dir = temp_dir();
    let json = dir.path().join("bench.json");
    let mut bench = Command::new(BULWARK);
    bench
        .args(["bench", "--quick", "--members", "1", "--duration", "0.3"])
        .args(["--load-keys", "5000", "--watchers", "50"])
        .arg("--json")
        .arg(&json)
        .arg("--dir")
        .arg(dir.path());
    let output = run_bounded(bench, None, BENCH_TIMEOUT);
    output.assert_success();

    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report at {}: {e}\n{output}", json.display()));
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    let rows: Vec<(String, u64)> = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            for store in ["bulwark", "etcd"] {
                assert!(
                    row[store]["ops_per_sec"].is_number(),
                    "no {store} measurement in {row}"
                );
            }
            (
                row["workload"].as_str().unwrap_or_default().to_string(),
                row["clients"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = ROWS
        .iter()
        .map(|(workload, clients)| (workload.to_string(), *clients))
        .collect();
    assert_eq!(rows, expected, "rows of the report\n{output}");
    assert!(report["fsync_floor"]["ops_per_sec"].is_number(), "{text}");
    for store in ["bulwark", "etcd"] {
        assert!(
            report["restart"][store]["seconds_to_linearizable_get"].is_number(),
            "no restart of {store} in {text}"
        );
    }
    // The run's directory is empty again: the bench removed its own temporary directory.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("reading the test directory")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| name != "bench.json")
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}
