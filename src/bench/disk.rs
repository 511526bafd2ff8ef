//! The disk's own floor for one durable write, measured in the run's directory: 4 KiB written
//! and `fdatasync`ed, again and again. No store acknowledges a write faster than its log's
//! fsync, so single-client put latency is compared with this.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::stats::{Latencies, Measurement};
use super::BenchError;

/// Bytes written and synced per operation.
const BLOCK: u64 = 4096;
/// The file the writes cycle through.
const FILE_BYTES: u64 = 64 << 20;

/// Writes and syncs 4 KiB blocks in `dir` for `duration`.
pub async fn fsync_floor(dir: &Path, duration: Duration) -> Result<Measurement, BenchError> {
    let path = dir.join("fsync-floor");
    // Blocking I/O off the async threads; bounded by `duration` (plus one layout of the file).
    tokio::task::spawn_blocking(move || measure(&path, duration))
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?
}

fn measure(path: &PathBuf, duration: Duration) -> Result<Measurement, BenchError> {
    let io = |e| BenchError::io(path, e);
    let mut file = lay_out(path).map_err(io)?;
    let block = [0xa5u8; BLOCK as usize];
    let mut latencies = Latencies::new();
    let mut ops = 0;
    let mut offset = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let began = Instant::now();
        file.write_all_at(&block, offset).map_err(io)?;
        file.sync_data().map_err(io)?;
        latencies.record(began.elapsed());
        ops += 1;
        offset = (offset + BLOCK) % FILE_BYTES;
    }
    let measurement = Measurement::new(ops, start.elapsed(), &latencies);
    file.flush().map_err(io)?;
    drop(file);
    fs::remove_file(path).map_err(io)?;
    Ok(measurement)
}

/// Writes the whole file once and syncs it, so that each timed write overwrites allocated blocks
/// and `fdatasync` flushes data only, as into a preallocated log segment (etcd's WAL).
fn lay_out(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..FILE_BYTES / chunk.len() as u64 {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(file)
}
