//! Watch at scale: 10,000 watchers on one member each get exactly the event of one put, and what
//! the idle watchers cost the member in memory.
//!
//! The memory is a measurement, not an assertion: the tests print (on stderr, shown with
//! `--nocapture`) the member's resident set size (`VmRSS` in `/proc/PID/status`) before the
//! streams were opened, after they were, and after the watches were created, and the difference
//! per watcher. The resident set also moves with the allocator's own choices, so the figure is
//! an estimate of the order of magnitude; run it in release for the number that matters:
//!
//! ```sh
//! cargo test --release --test watch_scale -- --nocapture
//! ```
//!
//! Watches are created through raw tonic streams (the generated `bulwark::proto` client), every
//! create of a stream sent at once and the answers read after, so that setting up 10,000 watches
//! costs a few round trips, not 10,000.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bulwark::proto::etcdserverpb as pb;
use bulwark::proto::etcdserverpb::watch_client::WatchClient;
use bulwark::proto::etcdserverpb::watch_request::RequestUnion;
use common::client::raw_channel;
use common::{Cluster, Member};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WATCHERS: usize = 10_000;
/// Bound on one response the member owes: never a speed assertion.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the streams are spread over (HTTP/2 multiplexes the streams of each).
const CONNECTIONS: usize = 10;
const KEY: &str = "scale/key";

/// One watch stream: its request side, kept open, and its responses.
struct Stream {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    ids: BTreeSet<i64>,
}

impl Stream {
    async fn open(client: &mut WatchClient<tonic::transport::Channel>, watches: usize) -> Stream {
        // Room for every create and the progress request: nothing waits on the sender.
        let (requests, receiver) = mpsc::channel(watches + 1);
        let responses = client
            .watch(ReceiverStream::new(receiver))
            .await
            .expect("a watch stream")
            .into_inner();
        Stream {
            requests,
            responses,
            ids: BTreeSet::new(),
        }
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("the watch stream's request side");
    }

    async fn next(&mut self) -> pb::WatchResponse {
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.responses.message()).await {
            Err(_) => panic!("no watch response within {RESPONSE_TIMEOUT:?}"),
            Ok(Err(status)) => panic!("the watch stream failed: {status:?}"),
            Ok(Ok(None)) => panic!("the watch stream ended"),
            Ok(Ok(Some(response))) => response,
        }
    }
}

/// A create request for watch number `n` of a stream: every kind of range that holds [`KEY`].
fn create(n: usize) -> RequestUnion {
    let (key, range_end): (&str, &[u8]) = match n % 4 {
        0 => (KEY, b""),
        1 => ("scale/", b"scale0"),
        2 => ("scale/", b"scale/l"),
        _ => ("scale/k", b"\0"),
    };
    RequestUnion::CreateRequest(pb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    })
}

/// The member's resident set size, in KiB.
fn rss_kib(member: &Member) -> u64 {
    let pid = member
        .pid_handle()
        .load(std::sync::atomic::Ordering::SeqCst);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Opens [`WATCHERS`] watches over `streams` streams on one member, measures its memory, puts
/// [`KEY`] once and requires every watch to get exactly that event.
async fn every_watcher_gets_one_put(streams: usize) {
    assert_eq!(WATCHERS % streams, 0);
    let per_stream = WATCHERS / streams;
    let cluster = Cluster::single();
    let member = cluster.member(0);

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS.min(streams) {
        clients.push(WatchClient::new(raw_channel(member).await));
    }
    let before_streams = rss_kib(member);
    let mut opened = Vec::new();
    for index in 0..streams {
        let client = &mut clients[index % CONNECTIONS.min(streams)];
        opened.push(Stream::open(client, per_stream).await);
    }
    let before_watches = rss_kib(member);

    for stream in &opened {
        for n in 0..per_stream {
            stream.send(create(n)).await;
        }
    }
    for (index, stream) in opened.iter_mut().enumerate() {
        while stream.ids.len() < per_stream {
            let response = stream.next().await;
            assert!(
                response.created && !response.canceled && response.events.is_empty(),
                "stream {index}: expected a created response, got {response:?}"
            );
            assert!(
                stream.ids.insert(response.watch_id),
                "stream {index}: watch id {} handed out twice",
                response.watch_id
            );
        }
    }
    let after_watches = rss_kib(member);
    let per_watcher = (after_watches as f64 - before_watches as f64) * 1024.0 / WATCHERS as f64;
    let per_watcher_with_streams =
        (after_watches as f64 - before_streams as f64) * 1024.0 / WATCHERS as f64;
    eprintln!(
        "watch_scale ({} build): {WATCHERS} watchers on {streams} streams over {} connections: \
         member VmRSS {before_streams} KiB before the streams, {before_watches} KiB with the \
         streams open, {after_watches} KiB with the watches created; {per_watcher:.0} bytes per \
         idle watcher ({per_watcher_with_streams:.0} with its share of the streams)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        CONNECTIONS.min(streams)
    );

    let mut writer = member.client().await;
    let put = writer.put(KEY, "for everyone", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    for (index, stream) in opened.iter_mut().enumerate() {
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        while seen.values().sum::<usize>() < per_stream {
            let response = stream.next().await;
            assert!(
                stream.ids.contains(&response.watch_id) && !response.created,
                "stream {index}: unexpected response {response:?}"
            );
            for event in &response.events {
                let kv = event.kv.as_ref().expect("an event carries its kv");
                assert_eq!(
                    (event.r#type, kv.key.as_slice(), kv.mod_revision),
                    (0, KEY.as_bytes(), revision),
                    "stream {index}, watch {}: not the put",
                    response.watch_id
                );
            }
            *seen.entry(response.watch_id).or_default() += response.events.len();
        }
        assert!(
            seen.len() == per_stream && seen.values().all(|count| *count == 1),
            "stream {index}: every watch gets the put exactly once: {} watches got events",
            seen.len()
        );
        // No event is still on its way: the member answers a progress request only once every
        // watch of the stream was sent everything up to the revision it reports.
        stream
            .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
            .await;
        let progress = stream.next().await;
        assert!(
            progress.events.is_empty() && !progress.created && !progress.canceled,
            "stream {index}: expected the progress notification, got {progress:?}"
        );
        assert_eq!(progress.header.expect("a header").revision, revision);
    }
    eprintln!(
        "watch_scale: member VmRSS {} KiB after the put reached every watcher",
        rss_kib(member)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_all_get_one_put() {
    every_watcher_gets_one_put(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_on_a_thousand_streams_all_get_one_put() {
    every_watcher_gets_one_put(1000).await;
}
