//! The workloads, each driven through the etcd v3 gRPC API with Bulwark's generated clients, so
//! both stores get the same requests from the same code.
//!
//! Clients are closed loops: each sends a request, waits for the answer, records its latency and
//! sends the next, until the row's time is up (or, for a load, until the work is done). Clients
//! share HTTP/2 connections, [`CLIENTS_PER_CONNECTION`] to one, spread over the members.
//!
//! Keys are 8 bytes: a letter naming the key space and 7 digits, so the workloads never touch
//! each other's keys (`k`: put, get and range; `h`: the CAS hot keys; `w`: the watched key;
//! `l`: the keys loaded before the restart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::cluster::{Cluster, MemberDisk, StoreKind, START_TIMEOUT};
use super::process::MemberMemory;
use super::stats::{Latencies, Measurement};
use super::BenchError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};

/// Clients sharing one HTTP/2 connection (etcd's benchmark tool shares connections the same way).
pub const CLIENTS_PER_CONNECTION: usize = 16;
/// Watch streams sharing one connection: below the servers' concurrent-stream limits.
pub const WATCHERS_PER_CONNECTION: usize = 100;
/// Keys the CAS clients fight over.
pub const HOT_KEYS: u64 = 100;
/// Keys in one range read.
pub const RANGE_SPAN: u64 = 100;
/// Puts in one transaction of a load (below both stores' default limit of 128 ops).
pub const LOAD_BATCH: u64 = 100;
/// Concurrent transactions of a load.
pub const LOAD_CLIENTS: usize = 16;
/// The largest key number: 7 digits.
pub const MAX_KEYS: u64 = 9_999_999;
/// How long watchers may take, after the writer stops, to receive the last event.
const WATCH_DRAIN: Duration = Duration::from_secs(30);

/// What every row shares: how long it runs, the put/get key space, the value written.
pub struct Settings {
    pub duration: Duration,
    /// Keys `k0000000..` written before the rows; puts, gets and ranges pick among them.
    pub keys: u64,
    pub value: Vec<u8>,
}

/// The key spaces (the first byte of every key).
#[derive(Debug, Clone, Copy)]
pub enum KeySpace {
    Plain,
    Hot,
    Watched,
    Loaded,
}

/// Key number `n` of `space`: 8 bytes.
pub fn key(space: KeySpace, n: u64) -> Vec<u8> {
    let letter = match space {
        KeySpace::Plain => 'k',
        KeySpace::Hot => 'h',
        KeySpace::Watched => 'w',
        KeySpace::Loaded => 'l',
    };
    format!("{letter}{:07}", n % (MAX_KEYS + 1)).into_bytes()
}

/// One row of the benchmark.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    Put {
        clients: usize,
    },
    Get {
        clients: usize,
        serializable: bool,
    },
    /// Read a hot key's mod revision, then a txn that puts it only if that is still its mod
    /// revision.
    TxnCas {
        clients: usize,
    },
    Range {
        clients: usize,
    },
    /// One writer puts one key, every watcher watches it.
    WatchFanOut {
        watchers: usize,
    },
    /// `keys` keys of the `l` space, in transactions of [`LOAD_BATCH`] puts.
    Load {
        keys: u64,
    },
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Put { .. } => "put".to_string(),
            Workload::Get {
                serializable: false,
                ..
            } => "get, linearizable".to_string(),
            Workload::Get {
                serializable: true, ..
            } => "get, serializable".to_string(),
            Workload::TxnCas { .. } => format!("txn CAS, {HOT_KEYS} hot keys"),
            Workload::Range { .. } => format!("range of {RANGE_SPAN} keys"),
            Workload::WatchFanOut { watchers } => {
                format!("watch fan-out to {watchers}: events/s; put latency")
            }
            Workload::Load { keys } => format!("load {keys} keys, txns of {LOAD_BATCH}"),
        }
    }

    pub fn clients(&self) -> usize {
        match *self {
            Workload::Put { clients }
            | Workload::Get { clients, .. }
            | Workload::TxnCas { clients }
            | Workload::Range { clients } => clients,
            Workload::WatchFanOut { .. } => 1,
            Workload::Load { .. } => LOAD_CLIENTS,
        }
    }

    /// Runs the row against `cluster`. Fails if every request failed (or, for a load, if any
    /// did: the keys must all be there).
    pub async fn run(
        &self,
        cluster: &Cluster,
        settings: &Arc<Settings>,
    ) -> Result<Measurement, BenchError> {
        let (request, until) = match *self {
            Workload::Put { .. } => (Request::Put, Until::Elapsed(settings.duration)),
            Workload::Get { serializable, .. } => (
                Request::Get { serializable },
                Until::Elapsed(settings.duration),
            ),
            Workload::TxnCas { .. } => (Request::Cas, Until::Elapsed(settings.duration)),
            Workload::Range { .. } => (Request::Range, Until::Elapsed(settings.duration)),
            Workload::WatchFanOut { watchers } => {
                return watch_fan_out(cluster, watchers, settings).await
            }
            Workload::Load { keys } => (Request::load(KeySpace::Loaded, keys), Until::Exhausted),
        };
        let tally = closed_loop(cluster, self.clients(), until, request, settings).await?;
        tally.into_measurement(
            cluster.kind,
            &self.name(),
            matches!(self, Workload::Load { .. }),
        )
    }
}

/// Writes the keys the rows read: `settings.keys` plain keys and the hot keys.
pub async fn populate(cluster: &Cluster, settings: &Arc<Settings>) -> Result<(), BenchError> {
    for (space, keys) in [(KeySpace::Plain, settings.keys), (KeySpace::Hot, HOT_KEYS)] {
        let request = Request::load(space, keys);
        closed_loop(cluster, LOAD_CLIENTS, Until::Exhausted, request, settings)
            .await?
            .into_measurement(cluster.kind, "populate", true)?;
    }
    Ok(())
}

/// When closed-loop clients stop.
#[derive(Debug, Clone, Copy)]
enum Until {
    Elapsed(Duration),
    /// When the request says there is nothing left to do.
    Exhausted,
}

/// What a closed-loop client sends.
#[derive(Clone)]
enum Request {
    Put,
    /// A put of this one key.
    PutKey(Arc<Vec<u8>>),
    Get {
        serializable: bool,
    },
    Range,
    Cas,
    /// The next batch of a load; `next` is the batch counter shared by the clients.
    LoadBatch {
        space: KeySpace,
        keys: u64,
        next: Arc<AtomicU64>,
    },
}

impl Request {
    fn load(space: KeySpace, keys: u64) -> Request {
        Request::LoadBatch {
            space,
            keys,
            next: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// What one request did.
enum Outcome {
    /// Done; the number of operations it counts for (keys, for a load batch).
    Done(u64),
    CasWon,
    CasLost,
    /// Nothing left to do: the client stops.
    Exhausted,
}

async fn issue(
    request: &Request,
    kv: &mut KvClient<Channel>,
    rng: &mut StdRng,
    settings: &Settings,
) -> Result<Outcome, tonic::Status> {
    let put = |key: Vec<u8>| PutRequest {
        key,
        value: settings.value.clone(),
        ..Default::default()
    };
    match request {
        Request::Put => {
            let n = rng.gen_range(0..settings.keys);
            kv.put(put(key(KeySpace::Plain, n))).await?;
        }
        Request::PutKey(watched) => {
            kv.put(put(watched.to_vec())).await?;
        }
        Request::Get { serializable } => {
            let n = rng.gen_range(0..settings.keys);
            kv.range(RangeRequest {
                key: key(KeySpace::Plain, n),
                serializable: *serializable,
                ..Default::default()
            })
            .await?;
        }
        Request::Range => {
            let start = rng.gen_range(0..=settings.keys.saturating_sub(RANGE_SPAN));
            kv.range(RangeRequest {
                key: key(KeySpace::Plain, start),
                range_end: key(KeySpace::Plain, start + RANGE_SPAN),
                ..Default::default()
            })
            .await?;
        }
        Request::Cas => {
            let hot = key(KeySpace::Hot, rng.gen_range(0..HOT_KEYS));
            let read = kv
                .range(RangeRequest {
                    key: hot.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            // A missing key has mod revision 0, which is also what etcd compares it as.
            let seen = read.kvs.first().map_or(0, |kv| kv.mod_revision);
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: hot.clone(),
                    target_union: Some(TargetUnion::ModRevision(seen)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Op::RequestPut(put(hot))),
                }],
                failure: vec![],
            };
            let won = kv.txn(txn).await?.into_inner().succeeded;
            return Ok(if won {
                Outcome::CasWon
            } else {
                Outcome::CasLost
            });
        }
        Request::LoadBatch { space, keys, next } => {
            let first = next.fetch_add(1, Ordering::Relaxed) * LOAD_BATCH;
            if first >= *keys {
                return Ok(Outcome::Exhausted);
            }
            let last = (first + LOAD_BATCH).min(*keys);
            let success = (first..last)
                .map(|n| RequestOp {
                    request: Some(Op::RequestPut(put(key(*space, n)))),
                })
                .collect();
            kv.txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await?;
            return Ok(Outcome::Done(last - first));
        }
    }
    Ok(Outcome::Done(1))
}

/// What closed-loop clients counted.
struct Tally {
    latencies: Latencies,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    cas_won: u64,
    cas_lost: u64,
    elapsed: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Latencies::new(),
            ops: 0,
            errors: 0,
            first_error: None,
            cas_won: 0,
            cas_lost: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        self.ops += other.ops;
        self.errors += other.errors;
        self.cas_won += other.cas_won;
        self.cas_lost += other.cas_lost;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The measurement; an error when every request failed, or when `complete` (a load) and
    /// any did.
    fn into_measurement(
        self,
        store: StoreKind,
        workload: &str,
        complete: bool,
    ) -> Result<Measurement, BenchError> {
        if self.errors > 0 && (complete || self.ops == 0) {
            return Err(BenchError::Failed {
                store,
                workload: workload.to_string(),
                errors: self.errors,
                first: self.first_error.unwrap_or_default(),
            });
        }
        let mut measurement = Measurement::new(self.ops, self.elapsed, &self.latencies);
        measurement.errors = self.errors;
        measurement.first_error = self.first_error;
        if self.cas_won + self.cas_lost > 0 {
            measurement
                .counters
                .insert("cas_successes".to_string(), self.cas_won);
            measurement
                .counters
                .insert("cas_conflicts".to_string(), self.cas_lost);
        }
        Ok(measurement)
    }
}

/// Runs `clients` closed-loop clients sending `request` until `until`; every connection is made
/// before the clock starts.
async fn closed_loop(
    cluster: &Cluster,
    clients: usize,
    until: Until,
    request: Request,
    settings: &Arc<Settings>,
) -> Result<Tally, BenchError> {
    let channels = cluster
        .channels(clients.div_ceil(CLIENTS_PER_CONNECTION))
        .await?;
    let start = Instant::now();
    let deadline = match until {
        Until::Elapsed(duration) => Some(start + duration),
        Until::Exhausted => None,
    };
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let mut kv = KvClient::new(channels[client % channels.len()].clone())
            .max_decoding_message_size(usize::MAX);
        let request = request.clone();
        let settings = settings.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut tally = Tally::new();
            while deadline.is_none_or(|deadline| Instant::now() < deadline) {
                let began = Instant::now();
                match issue(&request, &mut kv, &mut rng, &settings).await {
                    Ok(Outcome::Exhausted) => break,
                    Ok(outcome) => {
                        tally.latencies.record(began.elapsed());
                        match outcome {
                            Outcome::Done(ops) => tally.ops += ops,
                            Outcome::CasWon => {
                                (tally.ops, tally.cas_won) = (tally.ops + 1, tally.cas_won + 1)
                            }
                            Outcome::CasLost => {
                                (tally.ops, tally.cas_lost) = (tally.ops + 1, tally.cas_lost + 1)
                            }
                            Outcome::Exhausted => {}
                        }
                    }
                    Err(status) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| {
                            format!("{}: {}", status.code(), status.message())
                        });
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.map_err(|e| BenchError::Task(e.to_string()))?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// One writer puts the watched key for the row's duration while `watchers` watch streams (one
/// watcher each) receive the events. The rate is the events delivered over the time from the
/// writer's start until the last watcher has the last event; the latency is the writer's.
async fn watch_fan_out(
    cluster: &Cluster,
    watchers: usize,
    settings: &Arc<Settings>,
) -> Result<Measurement, BenchError> {
    let watched = key(KeySpace::Watched, 0);
    let mut channels = Vec::new();
    for index in 0..watchers.div_ceil(WATCHERS_PER_CONNECTION) {
        channels.push(cluster.stream_channel(index).await?);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    // The last revision the writer wrote, once it has stopped (0 before).
    let (last_revision, last_revision_rx) = watch::channel(0i64);
    let (ready, mut ready_rx) = mpsc::channel(watchers.max(1));
    let mut tasks = JoinSet::new();
    for index in 0..watchers {
        tasks.spawn(watcher(
            WatchClient::new(channels[index % channels.len()].clone()),
            watched.clone(),
            delivered.clone(),
            last_revision_rx.clone(),
            ready.clone(),
        ));
    }
    let setup_deadline = tokio::time::Instant::now() + START_TIMEOUT;
    for _ in 0..watchers {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(message))) => {
                return Err(BenchError::Request {
                    store: cluster.kind,
                    what: "watch create".to_string(),
                    message,
                })
            }
            Ok(None) | Err(_) => {
                return Err(BenchError::Request {
                    store: cluster.kind,
                    what: "watch create".to_string(),
                    message: format!("not every watcher was created within {START_TIMEOUT:?}"),
                })
            }
        }
    }

    let started = Instant::now();
    let writer = closed_loop(
        cluster,
        1,
        Until::Elapsed(settings.duration),
        Request::PutKey(Arc::new(watched.clone())),
        settings,
    )
    .await?;
    let mut kv = KvClient::new(cluster.channel(0).await?);
    let revision = kv
        .range(RangeRequest {
            key: watched,
            ..Default::default()
        })
        .await
        .map_err(|status| BenchError::request(cluster.kind, "get of the watched key", status))?
        .into_inner()
        .kvs
        .first()
        .map_or(0, |kv| kv.mod_revision);
    let _ = last_revision.send(revision.max(1));

    let drain_deadline = tokio::time::Instant::now() + WATCH_DRAIN;
    let mut caught_up = 0u64;
    let mut last_caught_up = started;
    while let Ok(Some(joined)) = tokio::time::timeout_at(drain_deadline, tasks.join_next()).await {
        if let Ok(Some(at)) = joined {
            caught_up += 1;
            last_caught_up = last_caught_up.max(at);
        }
    }
    let behind = watchers as u64 - caught_up;
    let finished = if behind > 0 {
        Instant::now()
    } else {
        last_caught_up
    };
    let events = delivered.load(Ordering::Relaxed);
    let mut measurement = Measurement::new(events, finished - started, &writer.latencies);
    measurement.errors = writer.errors;
    measurement.first_error = writer.first_error;
    for (name, value) in [
        ("watchers", watchers as u64),
        ("writer_puts", writer.ops),
        ("events_delivered", events),
        ("events_expected", writer.ops * watchers as u64),
        ("watchers_behind_after_drain", behind),
    ] {
        measurement.counters.insert(name.to_string(), value);
    }
    Ok(measurement)
}

/// One watch stream on `key`: reports on `ready` once created, counts the events it receives,
/// and returns when it has seen `last_revision` (the instant it had), or `None` if the stream
/// failed.
async fn watcher(
    mut client: WatchClient<Channel>,
    key: Vec<u8>,
    delivered: Arc<AtomicU64>,
    mut last_revision: watch::Receiver<i64>,
    ready: mpsc::Sender<Result<(), String>>,
) -> Option<Instant> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            ..Default::default()
        })),
    };
    // The request stream stays open while this watcher lives (etcd ends a watch when the client
    // closes its side) and ends when it is dropped: only then does the HTTP/2 stream close
    // (reset, as the response side is gone too), so no watch outlives its row and keeps its
    // connection, and a member's clean stop, open.
    let (_alive, dropped) = tokio::sync::oneshot::channel::<()>();
    let requests = futures::stream::iter(vec![create])
        .chain(futures::stream::once(dropped).filter_map(|_| futures::future::ready(None)));
    let mut responses = match client.watch(requests).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = ready.send(Err(status.message().to_string())).await;
            return None;
        }
    };
    match responses.message().await {
        Ok(Some(response)) if response.created => {
            let _ = ready.send(Ok(())).await;
        }
        other => {
            let _ = ready
                .send(Err(format!("no created response: {other:?}")))
                .await;
            return None;
        }
    }
    let mut seen = 0i64;
    loop {
        let goal = *last_revision.borrow_and_update();
        if goal > 0 && seen >= goal {
            return Some(Instant::now());
        }
        tokio::select! {
            message = responses.message() => {
                let response = message.ok()??;
                delivered.fetch_add(response.events.len() as u64, Ordering::Relaxed);
                if let Some(revision) = response
                    .events
                    .iter()
                    .filter_map(|event| event.kv.as_ref())
                    .map(|kv| kv.mod_revision)
                    .max()
                {
                    seen = seen.max(revision);
                }
            }
            changed = last_revision.changed() => changed.ok()?,
        }
    }
}

/// A member restarted while holding a load's keys.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub member: String,
    pub keys: u64,
    /// Every member's memory holding the keys, just before the restart.
    pub memory_with_keys: Vec<MemberMemory>,
    /// Every member's data directory size then.
    pub disk_with_keys: Vec<MemberDisk>,
    /// From SIGTERM until it exited.
    pub stop_seconds: f64,
    /// From the new process's spawn until it answered a serializable get (from its own state).
    pub seconds_to_serializable_get: f64,
    /// From the spawn until it answered a linearizable get (through the leader).
    pub seconds_to_linearizable_get: f64,
    /// The restarted member's memory once serving.
    pub memory_after: Option<MemberMemory>,
}

/// Stops a follower (the only member of a one-member cluster) and starts it again; measures the
/// time until it serves.
pub async fn restart_follower(cluster: &mut Cluster, keys: u64) -> Result<Restart, BenchError> {
    let index = cluster.follower().await?;
    let memory_with_keys = cluster.memory();
    let disk_with_keys = cluster.disk_usage();
    let stopping = Instant::now();
    cluster.members[index].stop().await;
    let stop_seconds = stopping.elapsed().as_secs_f64();
    let spawned = Instant::now();
    cluster.members[index].relaunch()?;
    cluster.wait_member_serving(index, true).await?;
    let seconds_to_serializable_get = spawned.elapsed().as_secs_f64();
    cluster.wait_member_serving(index, false).await?;
    let seconds_to_linearizable_get = spawned.elapsed().as_secs_f64();
    Ok(Restart {
        member: cluster.members[index].name.clone(),
        keys,
        memory_with_keys,
        disk_with_keys,
        stop_seconds,
        seconds_to_serializable_get,
        seconds_to_linearizable_get,
        memory_after: cluster.members[index].memory(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_eight_bytes_and_sort_in_number_order() {
        assert_eq!(key(KeySpace::Plain, 42), b"k0000042");
        assert_eq!(key(KeySpace::Loaded, MAX_KEYS).len(), 8);
        assert!(key(KeySpace::Plain, 99) < key(KeySpace::Plain, 100));
    }

    #[test]
    fn row_names_say_what_is_measured() {
        assert_eq!(
            Workload::Get {
                clients: 1,
                serializable: true
            }
            .name(),
            "get, serializable"
        );
        assert_eq!(Workload::Load { keys: 20_000 }.clients(), LOAD_CLIENTS);
    }
}
