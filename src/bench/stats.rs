//! What one store did in one row: operations, errors, throughput, latency percentiles (an HDR
//! histogram per client, merged), the members' memory, and workload-specific counters.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::process::MemberMemory;

/// Latencies are recorded in microseconds, from 1 µs to this bound (larger values count as
/// the bound), with three significant digits.
const MAX_LATENCY_MICROS: u64 = 120_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds"),
        )
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The percentiles, or `None` when nothing was recorded.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Percentiles {
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
            mean_ms: self.0.mean() / 1000.0,
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// One store's result in one row.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Operations that succeeded (keys, for a load; delivered events, for a watch fan-out).
    pub ops: u64,
    pub errors: u64,
    /// The first error's message, if any.
    pub first_error: Option<String>,
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// Per request (per writer put, for a watch fan-out; per 2-request attempt, for a CAS).
    pub latency: Option<Percentiles>,
    /// Each member's peak memory during the row and its memory at the end.
    pub memory: Vec<MemberMemory>,
    /// What else the workload counted (CAS successes and conflicts, watch deliveries, ...).
    pub counters: BTreeMap<String, u64>,
}

impl Measurement {
    pub fn new(ops: u64, elapsed: Duration, latencies: &Latencies) -> Measurement {
        let seconds = elapsed.as_secs_f64();
        Measurement {
            ops,
            errors: 0,
            first_error: None,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            latency: latencies.percentiles(),
            memory: Vec::new(),
            counters: BTreeMap::new(),
        }
    }

    /// The largest peak RSS among the members, in MiB.
    pub fn max_peak_rss_mib(&self) -> Option<f64> {
        self.memory
            .iter()
            .map(|m| m.peak_rss_mib)
            .max_by(f64::total_cmp)
    }
}

/// `a / b`, or `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_every_merged_client() {
        let mut first = Latencies::new();
        let mut second = Latencies::new();
        for ms in 1..=99 {
            first.record(Duration::from_millis(ms));
        }
        second.record(Duration::from_millis(1000));
        first.merge(&second);
        let p = first.percentiles().unwrap();
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert!(Latencies::new().percentiles().is_none());
    }

    #[test]
    fn throughput_is_ops_over_elapsed_time() {
        let m = Measurement::new(500, Duration::from_millis(250), &Latencies::new());
        assert_eq!(m.ops_per_sec, 2000.0);
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }
}
