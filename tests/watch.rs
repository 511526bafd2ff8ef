//! etcd's Watch API against a real `bulwark` member, through the `etcd-client` crate, a raw
//! tonic client (for what the crate hides: the `fragment` flag, a client that half-closes its
//! side) and etcdctl 3.4's `watch`.
//!
//! What is checked is etcd's semantics (`mvcc/watcher.go`, `mvcc/watchable_store.go`,
//! `etcdserver/api/v3rpc/watch.go`): a watch sees exactly the keys of its range, in revision
//! order, with the kvs the writes returned; a txn's events come in one response; a past start
//! revision replays history and a future one waits; `prev_kv`, NOPUT and NODELETE; watch ids;
//! cancel; progress requests and notifications; compaction; fragments; a resume after
//! `kill -9`; slow and many watchers. Where the semantics are subtle (refused creates, ids,
//! compaction edges, etcdctl's output) the expectation was checked by hand against a real etcd
//! 3.4.23 member (Debian's `etcd-server`) with the same requests; the tests say so.
//!
//! The expected events are never written by hand where a write can say them: [`History`]
//! records, for each acknowledged write, the event etcd would send, from what the write itself
//! returned (its revision and its previous key-value).
//!
//! etcd 3.4 sends a stream's progress notification at once, even before a catching-up watcher's
//! events; etcd 3.5 (and Bulwark, see `src/watch/mod.rs`) sends it once every watcher on the
//! stream has been sent everything up to the notified revision. The tests use that as a barrier
//! ([`assert_no_more_events`]): a progress notification that comes next means no unexpected
//! event is still on its way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bulwark::proto::etcdserverpb as pb;
use bulwark::proto::etcdserverpb::watch_client::WatchClient as RawWatchClient;
use common::client::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use common::cluster::Cluster;
use common::{Background, Member, MemberOptions};
use etcd_client::{
    Client, DeleteOptions, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions, WatchResponse, WatchStream, Watcher,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Bound on waiting for a response the server owes: generous, never a speed assertion.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a batch of writes that must not be blocked (the slow-watcher and restart tests).
const WRITE_DEADLINE: Duration = Duration::from_secs(120);
/// etcd's `WatchId` for a response that concerns the whole stream (a progress request's answer)
/// or a refused create.
const STREAM_WATCH_ID: i64 = -1;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

// ---------------------------------------------------------------------------------------------
// The model: events as the tests compare them

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put,
    Delete,
}

/// A key-value in an event. Keys and values are test strings, so failures print readably.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modified: i64,
    version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    kind: Kind,
    kv: Kv,
    prev: Option<Kv>,
}

impl Event {
    fn revision(&self) -> i64 {
        self.kv.modified
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: text(kv.key()),
        value: text(kv.value()),
        create: kv.create_revision(),
        modified: kv.mod_revision(),
        version: kv.version(),
    }
}

fn event_of(event: &etcd_client::Event) -> Event {
    Event {
        kind: match event.event_type() {
            EventType::Put => Kind::Put,
            EventType::Delete => Kind::Delete,
        },
        kv: kv_of(event.kv().expect("an event carries its kv")),
        prev: event.prev_kv().map(kv_of),
    }
}

fn raw_kv_of(kv: &bulwark::proto::mvccpb::KeyValue) -> Kv {
    Kv {
        key: text(&kv.key),
        value: text(&kv.value),
        create: kv.create_revision,
        modified: kv.mod_revision,
        version: kv.version,
    }
}

fn raw_event_of(event: &bulwark::proto::mvccpb::Event) -> Event {
    Event {
        kind: match event.r#type {
            0 => Kind::Put,
            1 => Kind::Delete,
            other => panic!("unknown event type {other}"),
        },
        kv: raw_kv_of(event.kv.as_ref().expect("an event carries its kv")),
        prev: event.prev_kv.as_ref().map(raw_kv_of),
    }
}

/// The events whose key `matches`, without `prev_kv` unless `prev_kv`.
fn expected(events: &[Event], matches: impl Fn(&str) -> bool, prev_kv: bool) -> Vec<Event> {
    events
        .iter()
        .filter(|e| matches(&e.kv.key))
        .map(|e| Event {
            prev: if prev_kv { e.prev.clone() } else { None },
            ..e.clone()
        })
        .collect()
}

/// A write in a txn.
enum Op<'a> {
    Put(&'a str, &'a str),
    Delete(&'a str),
}

/// Every acknowledged write, as the events etcd sends for it, derived from what the write
/// returned: its revision and (asked with `prev_kv`) the key-value it replaced.
struct History {
    client: Client,
    events: Vec<Event>,
}

impl History {
    fn new(client: Client) -> History {
        History {
            client,
            events: Vec::new(),
        }
    }

    fn put_event(key: &str, value: &str, revision: i64, prev: Option<Kv>) -> Event {
        Event {
            kind: Kind::Put,
            kv: Kv {
                key: key.to_string(),
                value: value.to_string(),
                create: prev.as_ref().map_or(revision, |p| p.create),
                modified: revision,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
            },
            prev,
        }
    }

    /// etcd's delete event: only the key and the deleting revision.
    fn delete_event(prev: Kv, revision: i64) -> Event {
        Event {
            kind: Kind::Delete,
            kv: Kv {
                key: prev.key.clone(),
                value: String::new(),
                create: 0,
                modified: revision,
                version: 0,
            },
            prev: Some(prev),
        }
    }

    /// Puts `key`; returns the revision.
    async fn put(&mut self, key: &str, value: &str) -> i64 {
        let response = self
            .client
            .put(key, value, Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        let revision = response.header().expect("header").revision();
        let prev = response.prev_key().map(kv_of);
        self.events
            .push(History::put_event(key, value, revision, prev));
        revision
    }

    /// Deletes `key` (every key under it with `prefix`); returns the revision.
    async fn delete(&mut self, key: &str, prefix: bool) -> i64 {
        let mut options = DeleteOptions::new().with_prev_key();
        if prefix {
            options = options.with_prefix();
        }
        let response = self
            .client
            .delete(key, Some(options))
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
        let revision = response.header().expect("header").revision();
        for prev in response.prev_kvs() {
            self.events
                .push(History::delete_event(kv_of(prev), revision));
        }
        revision
    }

    /// One txn of `ops` (one revision); returns the revision.
    async fn txn(&mut self, ops: &[Op<'_>]) -> i64 {
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => {
                    TxnOp::put(*key, *value, Some(PutOptions::new().with_prev_key()))
                }
                Op::Delete(key) => TxnOp::delete(*key, Some(DeleteOptions::new().with_prev_key())),
            })
            .collect();
        let response = self
            .client
            .txn(Txn::new().and_then(txn_ops))
            .await
            .unwrap_or_else(|e| panic!("txn: {e}"));
        assert!(response.succeeded(), "a txn without compares succeeds");
        let revision = response.header().expect("header").revision();
        for (op, answer) in ops.iter().zip(response.op_responses()) {
            match (op, answer) {
                (Op::Put(key, value), TxnOpResponse::Put(put)) => self.events.push(
                    History::put_event(key, value, revision, put.prev_key().map(kv_of)),
                ),
                (Op::Delete(_), TxnOpResponse::Delete(delete)) => {
                    for prev in delete.prev_kvs() {
                        self.events
                            .push(History::delete_event(kv_of(prev), revision));
                    }
                }
                (_, answer) => panic!("txn answered the wrong op kind: {answer:?}"),
            }
        }
        revision
    }

    fn last_revision(&self) -> i64 {
        self.events.last().map_or(0, Event::revision)
    }
}

async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

// ---------------------------------------------------------------------------------------------
// Members

// ---------------------------------------------------------------------------------------------
// Reading watch streams (etcd-client)

/// Opens a watch stream on `client` with one watch; bounded by [`EVENT_TIMEOUT`] (etcd-client
/// waits for the server's `created` answer).
async fn open_watch(
    client: &Client,
    key: &str,
    options: Option<WatchOptions>,
) -> (Watcher, WatchStream) {
    tokio::time::timeout(EVENT_TIMEOUT, client.watch_client().watch(key, options))
        .await
        .unwrap_or_else(|_| panic!("watch {key:?} not created within {EVENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("watch {key:?}: {e}"))
}

/// The next response on `stream`; panics if none comes within [`EVENT_TIMEOUT`] or the stream
/// ends or fails.
async fn next_response(stream: &mut WatchStream) -> WatchResponse {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Err(_) => panic!("no watch response within {EVENT_TIMEOUT:?}"),
        Ok(Err(error)) => panic!("the watch stream failed: {error}"),
        Ok(Ok(None)) => panic!("the watch stream ended"),
        Ok(Ok(Some(response))) => response,
    }
}

/// Reads event responses until `count` events came: (watch id, event) in arrival order. Any
/// other response (created, canceled, progress) fails the test. Checks that each response's
/// header revision covers its events and that each watch's events come in revision order.
async fn collect(stream: &mut WatchStream, count: usize) -> Vec<(i64, Event)> {
    let mut events: Vec<(i64, Event)> = Vec::new();
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    while events.len() < count {
        let response = next_response(stream).await;
        assert!(
            !response.created() && !response.canceled() && !response.events().is_empty(),
            "expected an events response, got {response:?}\nafter {} events: {events:#?}",
            events.len()
        );
        let id = response.watch_id();
        let header = response.header().expect("a header").revision();
        for event in response.events().iter().map(event_of) {
            assert!(
                header >= event.revision(),
                "header revision {header} below its event's: {event:?}"
            );
            let previous = last.insert(id, event.revision()).unwrap_or(0);
            assert!(
                event.revision() >= previous,
                "watch {id}: revision {} after {previous}",
                event.revision()
            );
            events.push((id, event));
        }
    }
    events
}

/// [`collect`] for a stream with one watch, `watch_id`.
async fn collect_watch(stream: &mut WatchStream, watch_id: i64, count: usize) -> Vec<Event> {
    collect(stream, count)
        .await
        .into_iter()
        .map(|(id, event)| {
            assert_eq!(id, watch_id, "an event for another watch: {event:?}");
            event
        })
        .collect()
}

/// Asks for a progress notification and requires it to be the next response, at `revision`,
/// with no event before it: everything up to `revision` was already delivered, so no unexpected
/// event is on its way (the barrier described in the file's doc).
async fn assert_no_more_events(watcher: &mut Watcher, stream: &mut WatchStream, revision: i64) {
    watcher.request_progress().await.expect("request_progress");
    let response = next_response(stream).await;
    assert_progress(&response, STREAM_WATCH_ID, revision);
}

/// A progress notification: no events, not created or canceled, for `watch_id`, at `revision`.
#[track_caller]
fn assert_progress(response: &WatchResponse, watch_id: i64, revision: i64) {
    assert!(
        response.events().is_empty() && !response.created() && !response.canceled(),
        "expected a progress notification, got {response:?}"
    );
    assert_eq!(response.watch_id(), watch_id, "{response:?}");
    assert_eq!(
        response.header().expect("a header").revision(),
        revision,
        "{response:?}"
    );
}

/// Adds a watch on the stream of `watcher` and returns the server's answer to it.
async fn add_watch(
    watcher: &mut Watcher,
    stream: &mut WatchStream,
    key: &str,
    options: WatchOptions,
) -> WatchResponse {
    watcher.watch(key, Some(options)).await.expect("watch");
    let response = next_response(stream).await;
    assert!(
        response.created(),
        "expected a created response: {response:?}"
    );
    response
}

/// Adds a watch that must be accepted; returns its id.
async fn add_accepted_watch(
    watcher: &mut Watcher,
    stream: &mut WatchStream,
    key: &str,
    options: WatchOptions,
) -> i64 {
    let response = add_watch(watcher, stream, key, options).await;
    assert!(!response.canceled(), "watch refused: {response:?}");
    response.watch_id()
}

// ---------------------------------------------------------------------------------------------
// A raw tonic client: sees the `fragment` flag, and can half-close its side

async fn raw_client(member: &Member) -> RawWatchClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let files = member.admin();
    let read = |path: &Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)))
        .identity(Identity::from_pem(read(&files.cert), read(&files.key)))
        .domain_name("127.0.0.1");
    let channel = Channel::from_shared(member.endpoint())
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", member.endpoint()));
    RawWatchClient::new(channel)
}

fn create_request(create: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    }
}

/// A raw watch stream whose requests go through the returned sender (kept open while it lives).
async fn raw_watch(
    member: &Member,
) -> (
    mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
) {
    let (requests, receiver) = mpsc::channel(16);
    let responses = raw_client(member)
        .await
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch")
        .into_inner();
    (requests, responses)
}

async fn raw_next(stream: &mut tonic::Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Err(_) => panic!("no watch response within {EVENT_TIMEOUT:?}"),
        Ok(Err(status)) => panic!("the watch stream failed: {status:?}"),
        Ok(Ok(None)) => panic!("the watch stream ended"),
        Ok(Ok(Some(response))) => response,
    }
}

/// Creates a watch on a raw stream; returns its id.
async fn raw_create(
    requests: &mpsc::Sender<pb::WatchRequest>,
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    create: pb::WatchCreateRequest,
) -> i64 {
    requests
        .send(create_request(create))
        .await
        .expect("request");
    let response = raw_next(stream).await;
    assert!(
        response.created && !response.canceled,
        "expected a created response: {response:?}"
    );
    response.watch_id
}

/// The exclusive end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    end
}

// ---------------------------------------------------------------------------------------------
// etcdctl watch: runs until killed

/// `etcdctl watch ARGS` against `member`, left running (killed and reaped on drop).
fn etcdctl_watch(member: &Member, args: &[&str]) -> Background {
    member.etcdctl().spawn(&[&["watch"][..], args].concat())
}

/// Waits (bounded) until `watch` printed at least as much as `expected` on stdout or exited,
/// then requires exactly `expected`.
#[track_caller]
fn assert_watch_printed(watch: &mut Background, expected: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while watch.stdout().len() < expected.len() && watch.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(watch.stdout(), expected, "{}", watch.output());
}

// ---------------------------------------------------------------------------------------------
// Key ranges, order, kvs

#[tokio::test]
async fn a_key_watch_sees_its_puts_and_deletes_in_revision_order_with_their_kvs() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(&single.member(0).client().await, "k", None).await;

    history.put("k", "v1").await;
    history.put("other", "x").await;
    history.put("k", "v2").await;
    history.put("kk", "longer key").await;
    history.delete("k", false).await;
    history.put("k", "v3").await; // created again: new create revision, version 1
    history.put("j", "before").await;

    let want = expected(&history.events, |k| k == "k", false);
    assert_eq!(want.len(), 4);
    let got = collect_watch(&mut stream, watcher.watch_id(), want.len()).await;
    assert_eq!(got, want);
    assert_eq!(got[3].kv.version, 1, "a re-created key starts at version 1");
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

#[tokio::test]
async fn prefix_range_from_key_and_all_keys_watches_see_exactly_their_keys() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(
        &single.member(0).client().await,
        "b/",
        Some(WatchOptions::new().with_prefix()),
    )
    .await;
    let prefix = watcher.watch_id();
    let range = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "b",
        WatchOptions::new().with_range("d"),
    )
    .await;
    let from_key = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "c",
        WatchOptions::new().with_from_key(),
    )
    .await;
    let all = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "",
        WatchOptions::new().with_all_keys(),
    )
    .await;
    let ids = BTreeSet::from([prefix, range, from_key, all]);
    assert_eq!(ids.len(), 4, "watch ids on one stream are distinct");

    for key in ["a", "b", "b/1", "b/2", "ba", "b0", "c", "c/x", "d", "z"] {
        history.put(key, &format!("value of {key}")).await;
    }
    history.delete("b/1", false).await;
    history.delete("c", false).await;
    history
        .txn(&[Op::Put("b/3", "t"), Op::Put("a", "t"), Op::Delete("z")])
        .await;

    let wants: BTreeMap<i64, Vec<Event>> = BTreeMap::from([
        (
            prefix,
            expected(&history.events, |k| k.starts_with("b/"), false),
        ),
        (
            range,
            expected(&history.events, |k| ("b".."d").contains(&k), false),
        ),
        (from_key, expected(&history.events, |k| k >= "c", false)),
        (all, expected(&history.events, |_| true, false)),
    ]);
    let total = wants.values().map(Vec::len).sum();
    let mut got: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for (id, event) in collect(&mut stream, total).await {
        got.entry(id).or_default().push(event);
    }
    for (id, want) in &wants {
        assert_eq!(got.get(id).unwrap_or(&Vec::new()), want, "watch {id}");
    }
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

#[tokio::test]
async fn the_events_of_one_txn_come_in_one_response_in_op_order() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    history.put("t/c", "to delete").await;
    history.put("t/d", "old").await;
    let (mut watcher, mut stream) = open_watch(
        &single.member(0).client().await,
        "t/",
        Some(WatchOptions::new().with_prefix()),
    )
    .await;
    let before = history.events.len();

    let revision = history
        .txn(&[
            Op::Put("t/b", "1"),
            Op::Put("t/a", "2"),
            Op::Delete("t/c"),
            Op::Put("t/d", "new"),
        ])
        .await;

    let response = next_response(&mut stream).await;
    let got: Vec<Event> = response.events().iter().map(event_of).collect();
    assert_eq!(
        got,
        expected(&history.events[before..], |_| true, false),
        "all four events, in the txn's order, in the first response"
    );
    assert!(got.iter().all(|e| e.revision() == revision));
    assert_eq!(response.header().expect("header").revision(), revision);
    assert_no_more_events(&mut watcher, &mut stream, revision).await;
}

// ---------------------------------------------------------------------------------------------
// Start revisions

#[tokio::test]
async fn a_past_start_revision_replays_history_as_the_writes_returned_it() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let first = history.put("h/a", "1").await;
    history.put("h/b", "1").await;
    history.put("elsewhere", "1").await;
    history.put("h/a", "2").await;
    let middle = history.delete("h/a", false).await;
    history
        .txn(&[Op::Put("h/c", "1"), Op::Put("h/b", "2"), Op::Delete("h/x")])
        .await;
    history.put("h/a", "3").await;
    history.delete("h/", true).await;
    history.put("h/b", "last").await;

    let client = single.member(0).client().await;
    // From the first write, with prev_kv: every event, with the kvs they replaced.
    let (mut watcher, mut stream) = open_watch(
        &client,
        "h/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(first)
                .with_prev_key(),
        ),
    )
    .await;
    let want = expected(&history.events, |k| k.starts_with("h/"), true);
    let got = collect_watch(&mut stream, watcher.watch_id(), want.len()).await;
    assert_eq!(got, want);

    // From the middle, without prev_kv, on another stream.
    let (mut watcher2, mut stream2) = open_watch(
        &client,
        "h/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(middle),
        ),
    )
    .await;
    let want2: Vec<Event> = expected(&history.events, |k| k.starts_with("h/"), false)
        .into_iter()
        .filter(|e| e.revision() >= middle)
        .collect();
    assert_eq!(
        collect_watch(&mut stream2, watcher2.watch_id(), want2.len()).await,
        want2
    );

    // Both go on live after the replay.
    let before = history.events.len();
    history.put("h/live", "now").await;
    let live = &history.events[before..];
    assert_eq!(
        collect_watch(&mut stream, watcher.watch_id(), 1).await,
        expected(live, |_| true, true)
    );
    assert_eq!(
        collect_watch(&mut stream2, watcher2.watch_id(), 1).await,
        expected(live, |_| true, false)
    );
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
    assert_no_more_events(&mut watcher2, &mut stream2, history.last_revision()).await;
}

#[tokio::test]
async fn a_future_start_revision_waits_until_the_store_reaches_it() {
    let single = Cluster::init(MemberOptions::default());
    let mut client = single.member(0).client().await;
    let now = current_revision(&mut client).await;
    let mut history = History::new(client.clone());
    let (mut watcher, mut stream) = open_watch(
        &client,
        "f",
        Some(WatchOptions::new().with_start_revision(now + 3)),
    )
    .await;
    // Nothing is owed yet.
    assert_no_more_events(&mut watcher, &mut stream, now).await;

    history.put("f", "1").await; // now + 1
    history.put("f", "2").await; // now + 2
    history.put("f", "3").await; // now + 3: the first one the watch wants
    history.put("f", "4").await;
    let want: Vec<Event> = expected(&history.events, |_| true, false)
        .into_iter()
        .filter(|e| e.revision() >= now + 3)
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(
        collect_watch(&mut stream, watcher.watch_id(), 2).await,
        want
    );
    assert_no_more_events(&mut watcher, &mut stream, now + 4).await;
}

// ---------------------------------------------------------------------------------------------
// prev_kv and filters

#[tokio::test]
async fn prev_kv_is_the_key_value_each_put_and_delete_replaced() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(
        &single.member(0).client().await,
        "p/",
        Some(WatchOptions::new().with_prefix().with_prev_key()),
    )
    .await;

    history.put("p/a", "1").await; // no previous value
    history.put("p/a", "2").await;
    history.delete("p/a", false).await;
    history.put("p/a", "3").await; // no previous value again: the key was deleted
    history
        .txn(&[
            Op::Put("p/b", "1"),
            Op::Put("p/a", "4"),
            Op::Delete("p/none"),
        ])
        .await;
    history.delete("p/", true).await;

    let want = expected(&history.events, |_| true, true);
    assert_eq!(want[0].prev, None);
    assert_eq!(want[1].prev.as_ref().map(|p| p.value.as_str()), Some("1"));
    assert_eq!(want[3].prev, None);
    let got = collect_watch(&mut stream, watcher.watch_id(), want.len()).await;
    assert_eq!(got, want);
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

#[tokio::test]
async fn noput_and_nodelete_filters_drop_those_events() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(
        &single.member(0).client().await,
        "x/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut]),
        ),
    )
    .await;
    let deletes_only = watcher.watch_id();
    let puts_only = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "x/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoDelete]),
    )
    .await;
    let nothing = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "x/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete]),
    )
    .await;

    history.put("x/a", "1").await;
    history.put("x/b", "1").await;
    history.delete("x/a", false).await;
    history
        .txn(&[Op::Put("x/c", "1"), Op::Delete("x/b"), Op::Put("x/a", "2")])
        .await;

    let of_kind = |kind: Kind| -> Vec<Event> {
        expected(&history.events, |_| true, false)
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    };
    let want_deletes = of_kind(Kind::Delete);
    let want_puts = of_kind(Kind::Put);
    let mut got: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for (id, event) in collect(&mut stream, want_deletes.len() + want_puts.len()).await {
        got.entry(id).or_default().push(event);
    }
    assert_eq!(got.remove(&deletes_only).unwrap_or_default(), want_deletes);
    assert_eq!(got.remove(&puts_only).unwrap_or_default(), want_puts);
    assert_eq!(got.remove(&nothing), None, "both filters: no events at all");
    assert!(got.is_empty(), "events for unknown watches: {got:?}");
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

// ---------------------------------------------------------------------------------------------
// Watch ids and cancel

#[tokio::test]
async fn watches_on_one_stream_get_distinct_ids_and_a_chosen_id_is_kept() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(&single.member(0).client().await, "id", None).await;
    let auto1 = watcher.watch_id();
    let chosen = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "id",
        WatchOptions::new().with_watch_id(100),
    )
    .await;
    assert_eq!(chosen, 100, "the id the client chose");
    let auto2 = add_accepted_watch(&mut watcher, &mut stream, "id", WatchOptions::new()).await;
    assert_eq!(
        BTreeSet::from([auto1, chosen, auto2]).len(),
        3,
        "ids {auto1}, {chosen}, {auto2} are not distinct"
    );

    history.put("id", "1").await;
    let got = collect(&mut stream, 3).await;
    let ids: BTreeSet<i64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, BTreeSet::from([auto1, chosen, auto2]));
    for (_, event) in &got {
        assert_eq!(event, &history.events[0]);
    }
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

/// etcd 3.4.23 answers a create with an id already in use on the stream by one response that is
/// `created` and `canceled`, for watch id -1 (`mvcc/watcher.go`: `return -1,
/// ErrWatcherDuplicateID`; `v3rpc/watch.go` sends `WatchId: int64(id)`), and the watch that has
/// the id goes on.
#[tokio::test]
async fn a_chosen_id_already_in_use_is_refused_as_etcd_does() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(
        &single.member(0).client().await,
        "dup",
        Some(WatchOptions::new().with_watch_id(7)),
    )
    .await;
    assert_eq!(watcher.watch_id(), 7);

    let refused = add_watch(
        &mut watcher,
        &mut stream,
        "dup",
        WatchOptions::new().with_watch_id(7),
    )
    .await;
    assert!(refused.canceled(), "{refused:?}");
    assert_eq!(
        (refused.watch_id(), refused.cancel_reason()),
        (STREAM_WATCH_ID, DUPLICATE_ID),
        "{refused:?}"
    );

    // The first watch with that id is untouched, and there is only one.
    history.put("dup", "1").await;
    assert_eq!(
        collect_watch(&mut stream, 7, 1).await,
        expected(&history.events, |_| true, false)
    );
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

/// A range whose end is not after its key watches nothing: etcd 3.4.23 refuses it with one
/// `created` + `canceled` response for watch id -1, "mvcc: watcher range is empty"
/// (`mvcc/watcher.go`: `if len(end) != 0 && bytes.Compare(key, end) != -1`).
#[tokio::test]
async fn an_empty_key_range_is_refused_as_etcd_does() {
    let single = Cluster::init(MemberOptions::default());
    let (mut watcher, mut stream) = open_watch(&single.member(0).client().await, "a", None).await;
    for (key, end) in [("b", "a"), ("b", "b")] {
        let refused = add_watch(
            &mut watcher,
            &mut stream,
            key,
            WatchOptions::new().with_range(end),
        )
        .await;
        assert!(refused.canceled(), "[{key}, {end}): {refused:?}");
        assert_eq!(
            (refused.watch_id(), refused.cancel_reason()),
            (STREAM_WATCH_ID, EMPTY_RANGE),
            "[{key}, {end}): {refused:?}"
        );
    }
}

/// etcd hands out automatic ids from a counter that only grows (`mvcc/watcher.go`:
/// `id = ws.nextID; ws.nextID++`): after watch 1 is canceled, the next automatic id is 2, not 1
/// again (etcd 3.4.23 does this). A reused id makes a late response for the canceled watch
/// indistinguishable from one for the new watch.
#[tokio::test]
async fn a_canceled_watch_id_is_not_handed_out_again_on_its_stream() {
    let single = Cluster::init(MemberOptions::default());
    let (mut watcher, mut stream) =
        open_watch(&single.member(0).client().await, "reuse", None).await;
    let first = watcher.watch_id();
    let second = add_accepted_watch(&mut watcher, &mut stream, "reuse", WatchOptions::new()).await;
    watcher.cancel_by_id(second).await.expect("cancel");
    let canceled = next_response(&mut stream).await;
    assert!(
        canceled.canceled() && canceled.watch_id() == second,
        "{canceled:?}"
    );
    let third = add_accepted_watch(&mut watcher, &mut stream, "reuse", WatchOptions::new()).await;
    assert!(
        third != first && third != second,
        "watch ids handed out: {first}, {second} (canceled), then {third}"
    );
}

#[tokio::test]
async fn a_canceled_watch_is_answered_canceled_and_gets_no_more_events() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) = open_watch(&single.member(0).client().await, "c", None).await;
    let canceled = watcher.watch_id();
    let kept = add_accepted_watch(&mut watcher, &mut stream, "c", WatchOptions::new()).await;

    history.put("c", "1").await;
    let got = collect(&mut stream, 2).await;
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<BTreeSet<_>>(),
        BTreeSet::from([canceled, kept])
    );

    watcher.cancel().await.expect("cancel");
    let response = next_response(&mut stream).await;
    assert!(
        response.canceled() && !response.created() && response.events().is_empty(),
        "{response:?}"
    );
    assert_eq!(response.watch_id(), canceled);

    history.put("c", "2").await;
    history.put("c", "3").await;
    let want = expected(&history.events[1..], |_| true, false);
    assert_eq!(collect_watch(&mut stream, kept, 2).await, want);
    // Canceling an id that is not (or no longer) a watch is not answered (etcd 3.4.23).
    watcher.cancel_by_id(canceled).await.expect("cancel");
    watcher.cancel_by_id(555).await.expect("cancel");
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

// ---------------------------------------------------------------------------------------------
// Progress

#[tokio::test]
async fn a_progress_request_is_answered_with_the_current_revision() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let (mut watcher, mut stream) =
        open_watch(&single.member(0).client().await, "quiet", None).await;
    history.put("loud", "1").await;
    history.put("loud", "2").await;
    watcher.request_progress().await.expect("request_progress");
    let response = next_response(&mut stream).await;
    assert_progress(&response, STREAM_WATCH_ID, history.last_revision());
    common::client::assert_header(response.header(), history.last_revision());
}

/// A progress request made while a watch on the stream is still catching up from history must
/// still be answered: etcd 3.4.23 answers at once, etcd 3.5 once the watch has caught up
/// (`deferredProgress`). It must not be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_request_made_while_a_watch_catches_up_is_answered() {
    /// More revisions than the member reads for one watch in one step (1000, `watch/mod.rs`), so
    /// the new watch is still behind when the member reads the progress request that follows its
    /// create.
    const REVISIONS: usize = 1100;
    let single = Cluster::init(MemberOptions::default());
    let client = single.member(0).client().await;
    let first = current_revision(&mut client.clone()).await + 1;
    write_concurrently(&client, "old/", REVISIONS, 8, 8).await;
    let now = current_revision(&mut client.clone()).await;

    let (mut watcher, mut stream) = open_watch(&client, "nothing-here", None).await;
    // The create and the progress request go out together.
    watcher
        .watch(
            "old/",
            Some(WatchOptions::new().with_prefix().with_start_revision(first)),
        )
        .await
        .expect("watch");
    watcher.request_progress().await.expect("request_progress");

    let mut events = 0;
    let mut progress_after = None;
    while events < REVISIONS || progress_after.is_none() {
        let response = match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(response))) => response,
            outcome => panic!(
                "after {events} of {REVISIONS} events and no answer to the progress request: \
                 {outcome:?}"
            ),
        };
        assert!(!response.canceled(), "{response:?}");
        if response.created() {
            continue;
        }
        if response.events().is_empty() {
            assert_progress(&response, STREAM_WATCH_ID, now);
            progress_after = Some(events);
        } else {
            events += response.events().len();
        }
    }
    assert_eq!(events, REVISIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_sends_an_idle_watch_empty_responses_at_the_current_revision() {
    let single = Cluster::init(MemberOptions::default().watch_progress_notify_interval(1));
    let mut history = History::new(single.member(0).client().await);
    history.put("unwatched", "1").await;
    let (mut watcher, mut stream) = open_watch(
        &single.member(0).client().await,
        "idle",
        Some(WatchOptions::new().with_progress_notify()),
    )
    .await;
    let notified = watcher.watch_id();
    // A watch on the same stream that did not ask for notifications gets none.
    add_accepted_watch(&mut watcher, &mut stream, "idle", WatchOptions::new()).await;

    for _ in 0..2 {
        let response = next_response(&mut stream).await;
        assert_progress(&response, notified, history.last_revision());
    }
    // A write elsewhere moves the revision the notifications report.
    let revision = history.put("unwatched", "2").await;
    let mut reported = Vec::new();
    while reported.last() != Some(&revision) {
        assert!(
            reported.len() < 5,
            "notifications never reached {revision}: {reported:?}"
        );
        let response = next_response(&mut stream).await;
        let at = response.header().expect("header").revision();
        assert_progress(&response, notified, at);
        reported.push(at);
    }
}

// ---------------------------------------------------------------------------------------------
// Compaction

#[tokio::test]
async fn a_compacted_start_revision_cancels_the_watch_with_the_compact_revision() {
    let single = Cluster::init(MemberOptions::default());
    let mut client = single.member(0).client().await;
    let mut history = History::new(client.clone());
    let r1 = history.put("cmp", "1").await;
    let r2 = history.put("cmp", "2").await;
    history.put("cmp", "3").await;
    client.compact(r2, None).await.expect("compact");

    let (mut watcher, mut stream) = open_watch(
        &client,
        "cmp",
        Some(WatchOptions::new().with_start_revision(r1)),
    )
    .await;
    let response = next_response(&mut stream).await;
    assert!(
        response.canceled() && response.events().is_empty(),
        "{response:?}"
    );
    assert_eq!(response.watch_id(), watcher.watch_id());
    assert_eq!(response.compact_revision(), r2, "{response:?}");

    // The compact revision itself is still there (etcd 3.4.23 replays it), on the same stream;
    // its previous value is compacted away, so it has no prev_kv (etcd 3.4.23 sends none).
    let id = add_accepted_watch(
        &mut watcher,
        &mut stream,
        "cmp",
        WatchOptions::new().with_start_revision(r2).with_prev_key(),
    )
    .await;
    let mut want = expected(&history.events[1..], |_| true, true);
    want[0].prev = None;
    assert_eq!(collect_watch(&mut stream, id, 2).await, want);
    assert_no_more_events(&mut watcher, &mut stream, history.last_revision()).await;
}

// ---------------------------------------------------------------------------------------------
// Crash and resume, slow and many watchers

/// Puts `count` keys `PREFIX{i}` of `value_bytes` bytes from `writers` concurrent tasks; returns
/// the acknowledged (key, value, revision), sorted by revision. Panics unless every put is
/// acknowledged within [`WRITE_DEADLINE`].
async fn write_concurrently(
    client: &Client,
    prefix: &str,
    count: usize,
    writers: usize,
    value_bytes: usize,
) -> Vec<(String, String, i64)> {
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let mut kv = client.kv_client();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in (writer..count).step_by(writers) {
                    let key = format!("{prefix}{i:05}");
                    let value = format!("{i:0width$}", width = value_bytes);
                    let response = kv
                        .put(key.clone(), value.clone(), None)
                        .await
                        .unwrap_or_else(|e| panic!("put {key}: {e}"));
                    acknowledged.push((key, value, response.header().expect("header").revision()));
                }
                acknowledged
            })
        })
        .collect();
    let all = tokio::time::timeout(WRITE_DEADLINE, futures::future::join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("{count} puts not all acknowledged within {WRITE_DEADLINE:?}"));
    let mut acknowledged: Vec<_> = all
        .into_iter()
        .flat_map(|task| task.expect("writer task"))
        .collect();
    acknowledged.sort_by_key(|(_, _, revision)| *revision);
    acknowledged
}

/// A put of a new key as its watch event.
fn new_key_event(key: &str, value: &str, revision: i64) -> Event {
    History::put_event(key, value, revision, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumed_after_kill9_and_restart_sees_every_later_event_exactly_once() {
    let mut single = Cluster::init(MemberOptions::default());
    let client = single.member(0).client().await;
    let start_revision = current_revision(&mut client.clone()).await;

    // A watcher reading everything under r/ until the stream breaks.
    let (_watcher, mut stream) =
        open_watch(&client, "r/", Some(WatchOptions::new().with_prefix())).await;
    let seen = Arc::new(Mutex::new(Vec::<Event>::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Ok(Some(response))) =
                tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await
            {
                seen.lock()
                    .unwrap()
                    .extend(response.events().iter().map(event_of));
            }
        })
    };
    // A writer putting r/a00000, r/a00001, ... one at a time until the member stops answering.
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String, i64)>::new()));
    let writer = {
        let acknowledged = acknowledged.clone();
        let mut kv = client.kv_client();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("r/a{i:05}");
                let value = format!("before crash {i}");
                match kv.put(key.clone(), value.clone(), None).await {
                    Ok(response) => {
                        let revision = response.header().expect("header").revision();
                        acknowledged.lock().unwrap().push((key, value, revision));
                    }
                    Err(_) => return,
                }
            }
        })
    };
    let deadline = Instant::now() + WRITE_DEADLINE;
    while acknowledged.lock().unwrap().len() < 100 || seen.lock().unwrap().len() < 50 {
        assert!(
            Instant::now() < deadline,
            "writes or events stalled before the crash"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    single.member_mut(0).kill9(); // with a put in flight
    tokio::time::timeout(EVENT_TIMEOUT, writer)
        .await
        .expect("the writer stops once the member is gone")
        .expect("writer task");
    tokio::time::timeout(EVENT_TIMEOUT + Duration::from_secs(5), reader)
        .await
        .expect("the watch stream breaks once the member is gone")
        .expect("reader task");
    drop(client);

    let mut events = seen.lock().unwrap().clone();
    let resume_from = events.last().map_or(start_revision, Event::revision) + 1;
    single.member_mut(0).restart();
    let client = single.member(0).client().await;
    let (mut watcher, mut stream) = open_watch(
        &client,
        "r/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(resume_from),
        ),
    )
    .await;
    let mut kv = client.kv_client();
    for i in 0..50 {
        let key = format!("r/b{i:05}");
        let value = format!("after restart {i}");
        let response = kv.put(key.clone(), value.clone(), None).await.expect("put");
        let revision = response.header().expect("header").revision();
        acknowledged.lock().unwrap().push((key, value, revision));
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let last = acknowledged.last().expect("writes").2;
    while events.last().map(Event::revision) != Some(last) {
        let response = next_response(&mut stream).await;
        assert!(!response.canceled(), "{response:?}");
        events.extend(response.events().iter().map(event_of));
    }
    assert_no_more_events(&mut watcher, &mut stream, last).await;

    // Every revision after the start exactly once, in order: each is one of our puts.
    let revisions: Vec<i64> = events.iter().map(Event::revision).collect();
    let all: Vec<i64> = (start_revision + 1..=last).collect();
    assert_eq!(
        revisions, all,
        "the revisions the watch saw, before and after the crash"
    );
    // Every acknowledged put is there as it was written.
    let by_revision: BTreeMap<i64, &Event> = events.iter().map(|e| (e.revision(), e)).collect();
    for (key, value, revision) in &acknowledged {
        assert_eq!(
            by_revision.get(revision).copied(),
            Some(&new_key_event(key, value, *revision)),
            "acknowledged put of {key} at {revision}"
        );
    }
    // What was not acknowledged is at most the one put in flight at the crash.
    let acked: BTreeSet<i64> = acknowledged.iter().map(|(_, _, r)| *r).collect();
    let unacknowledged: Vec<&Event> = events
        .iter()
        .filter(|e| !acked.contains(&e.revision()))
        .collect();
    assert!(unacknowledged.len() <= 1, "{unacknowledged:#?}");
    if let Some(event) = unacknowledged.first() {
        let i: usize = event.kv.key["r/a".len()..].parse().expect("an r/a key");
        assert_eq!(
            event,
            &&new_key_event(
                &event.kv.key,
                &format!("before crash {i}"),
                event.revision()
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_stream_never_read_blocks_no_writes_and_later_gets_every_event_in_order() {
    /// 8 MiB of events: more than the HTTP/2 windows (hyper's client: 2 MiB per stream, 5 MiB per
    /// connection) and the member's response buffer together.
    const PUTS: usize = 256;
    const VALUE_BYTES: usize = 32 * 1024;
    let single = Cluster::init(MemberOptions::default());
    // Separate connections: the unread stream must not hold up the writers' own connection
    // (client-side flow control is not what is tested).
    // Once read, the member may send the whole backlog in one response: above etcd-client's
    // default 4 MiB limit (etcd's clients take up to 2 GiB).
    let mut slow_client = single
        .member(0)
        .client()
        .await
        .watch_client()
        .max_decoding_message_size(64 << 20);
    let (_slow_watcher, mut slow) = tokio::time::timeout(
        EVENT_TIMEOUT,
        slow_client.watch("s/", Some(WatchOptions::new().with_prefix())),
    )
    .await
    .expect("watch created in time")
    .expect("watch");
    let (_fast_watcher, mut fast) = open_watch(
        &single.member(0).client().await,
        "s/",
        Some(WatchOptions::new().with_prefix()),
    )
    .await;
    let fast_reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while events.len() < PUTS {
            let response = next_response(&mut fast).await;
            events.extend(response.events().iter().map(event_of));
        }
        events
    });

    let writer = single.member(0).client().await;
    let acknowledged = write_concurrently(&writer, "s/", PUTS, 8, VALUE_BYTES).await;
    let want: Vec<Event> = acknowledged
        .iter()
        .map(|(key, value, revision)| new_key_event(key, value, *revision))
        .collect();

    let fast_events = tokio::time::timeout(WRITE_DEADLINE, fast_reader)
        .await
        .expect("the other stream keeps receiving")
        .expect("reader task");
    assert!(
        fast_events == want,
        "the stream that was read got other events"
    );
    let mut slow_events = Vec::new();
    while slow_events.len() < PUTS {
        let response = next_response(&mut slow).await;
        assert!(!response.canceled(), "{response:?}");
        slow_events.extend(response.events().iter().map(event_of));
    }
    // Compared without printing 8 MiB on a failure.
    assert_eq!(slow_events.len(), want.len());
    for (got, want) in slow_events.iter().zip(&want) {
        assert!(
            got == want,
            "slow stream: {}@{} where {}@{} was expected",
            got.kv.key,
            got.revision(),
            want.kv.key,
            want.revision()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watches_all_get_one_put() {
    const STREAMS: usize = 4;
    const PER_STREAM: usize = 250;
    let single = Cluster::init(MemberOptions::default());
    let client = single.member(0).client().await;
    let mut streams = Vec::new();
    for s in 0..STREAMS {
        let (mut watcher, mut stream) = open_watch(&client, "many/key", None).await;
        let mut ids = BTreeSet::from([watcher.watch_id()]);
        for i in 1..PER_STREAM {
            // Every kind of range that holds many/key.
            let (key, options) = match i % 4 {
                0 => ("many/key", WatchOptions::new()),
                1 => ("many/", WatchOptions::new().with_prefix()),
                2 => ("many/", WatchOptions::new().with_range("many/l")),
                _ => ("many/k", WatchOptions::new().with_from_key()),
            };
            ids.insert(add_accepted_watch(&mut watcher, &mut stream, key, options).await);
        }
        assert_eq!(ids.len(), PER_STREAM, "stream {s}: ids are not distinct");
        streams.push((watcher, stream, ids));
    }

    let mut history = History::new(client.clone());
    let revision = history.put("many/key", "for everyone").await;
    for (s, (watcher, stream, ids)) in streams.iter_mut().enumerate() {
        let got = collect(stream, PER_STREAM).await;
        let got_ids: BTreeSet<i64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(&got_ids, ids, "stream {s}: which watches got the put");
        assert!(got.iter().all(|(_, event)| event == &history.events[0]));
        assert_no_more_events(watcher, stream, revision).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Fragments and raw streams

/// `fragment` lets the server split one revision's events over several responses, every one but
/// the last with `fragment` set. etcd 3.4 splits above max-request-bytes + 512 KiB (gRPC
/// overhead); Bulwark above max-request-bytes. Both cases here must reassemble to the revision's
/// events: a txn of 1 KiB values (split by Bulwark, not by etcd), and a delete of ~590 KiB of
/// previous values (split by both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_splits_a_large_revision_and_the_fragments_reassemble() {
    let single = Cluster::init(MemberOptions::default().max_request_bytes(4096));
    let client = single.member(0).client().await;
    let mut history = History::new(client.clone());
    let kib = "k".repeat(1024);
    for key in ["fr/1", "fr/2", "fr/3"] {
        history.put(key, &kib).await;
    }
    let big = "b".repeat(3900);
    for i in 0..150 {
        history.put(&format!("fr/big/{i:03}"), &big).await;
    }

    let (requests, mut raw) = raw_watch(single.member(0)).await;
    let fragmented = raw_create(
        &requests,
        &mut raw,
        pb::WatchCreateRequest {
            key: b"fr/".to_vec(),
            range_end: prefix_end("fr/"),
            prev_kv: true,
            fragment: true,
            ..Default::default()
        },
    )
    .await;
    let whole = raw_create(
        &requests,
        &mut raw,
        pb::WatchCreateRequest {
            key: b"fr/".to_vec(),
            range_end: prefix_end("fr/"),
            prev_kv: true,
            ..Default::default()
        },
    )
    .await;
    // The same through etcd-client, which hides the flag: only the reassembled total shows.
    let (_watcher, mut crate_stream) = open_watch(
        &client,
        "fr/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_fragment(),
        ),
    )
    .await;

    for (case, must_split) in [
        ("a txn of three 1 KiB values", false),
        ("a 590 KiB delete", true),
    ] {
        let before = history.events.len();
        let revision = if must_split {
            history.delete("fr/big/", true).await
        } else {
            history
                .txn(&[
                    Op::Put("fr/1", &kib),
                    Op::Put("fr/2", &kib),
                    Op::Put("fr/3", &kib),
                ])
                .await
        };
        let want = expected(&history.events[before..], |_| true, true);

        // Raw: the fragments of `fragmented`, and `whole` in one response, in either order.
        let mut fragments: Vec<pb::WatchResponse> = Vec::new();
        let mut whole_responses = Vec::new();
        while fragments.last().is_none_or(|f| f.fragment) || whole_responses.is_empty() {
            let response = raw_next(&mut raw).await;
            assert!(
                !response.canceled && !response.created,
                "{case}: {response:?}"
            );
            if response.watch_id == fragmented {
                fragments.push(response);
            } else {
                assert_eq!(response.watch_id, whole, "{case}");
                whole_responses.push(response);
            }
        }
        let reassembled: Vec<Event> = fragments
            .iter()
            .flat_map(|f| f.events.iter().map(raw_event_of))
            .collect();
        assert!(
            reassembled == want,
            "{case}: the fragments do not reassemble to the events"
        );
        assert!(
            fragments.iter().all(|f| !f.events.is_empty()),
            "{case}: an empty fragment"
        );
        assert!(
            fragments
                .iter()
                .all(|f| f.header.as_ref().map(|h| h.revision) == Some(revision)),
            "{case}: fragments carry the revision's header"
        );
        if must_split {
            assert!(fragments.len() > 1, "{case}: not split");
        }
        let unsplit: Vec<Event> = whole_responses[0].events.iter().map(raw_event_of).collect();
        assert!(
            whole_responses.len() == 1 && !whole_responses[0].fragment && unsplit == want,
            "{case}: a watch without `fragment` gets the revision in one response"
        );

        // etcd-client: responses that together hold exactly the revision's events.
        let mut through_crate = Vec::new();
        while through_crate.len() < want.len() {
            let response = next_response(&mut crate_stream).await;
            through_crate.extend(response.events().iter().map(event_of));
        }
        assert!(through_crate == want, "{case}: etcd-client's total differs");
    }
}

/// etcd keeps a watch stream going after the client closes its side (`recvLoop` returns nil on
/// EOF and the stream lives until its context ends): a client that sends its creates and
/// half-closes, as grpc-gateway's `/v3/watch` and one-shot gRPC tools do, still gets events.
/// etcd 3.4.23 does.
#[tokio::test]
async fn a_client_that_closes_its_side_of_the_stream_keeps_receiving_events() {
    let single = Cluster::init(MemberOptions::default());
    let mut history = History::new(single.member(0).client().await);
    let create = create_request(pb::WatchCreateRequest {
        key: b"half".to_vec(),
        ..Default::default()
    });
    let mut stream = raw_client(single.member(0))
        .await
        .watch(tokio_stream::iter(vec![create]))
        .await
        .expect("watch")
        .into_inner();
    let created = raw_next(&mut stream).await;
    assert!(created.created && !created.canceled, "{created:?}");
    history.put("half", "1").await;
    let response = match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => response,
        Ok(Ok(None)) => panic!("the member ended the stream because the client closed its side"),
        outcome => panic!("no event within {EVENT_TIMEOUT:?}: {outcome:?}"),
    };
    let got: Vec<Event> = response.events.iter().map(raw_event_of).collect();
    assert_eq!(got, expected(&history.events, |_| true, false));
}

// ---------------------------------------------------------------------------------------------
// etcdctl watch

/// `etcdctl watch --rev 1 --prefix ""` (the reference sample's step 29: an empty key with
/// `--prefix` means every key): the history, then what happens while it runs, in etcd's format.
#[test]
fn etcdctl_watch_prints_history_then_live_events_as_etcd_does() {
    let single = Cluster::init(MemberOptions::default());
    let etcdctl = single.member(0).etcdctl();
    for args in [
        &["put", "foo", "bar"][..],
        &["put", "foo", "bar2"],
        &["put", "a", "1"],
        &["del", "a"],
    ] {
        etcdctl.run(args).assert_success();
    }
    let mut watch = etcdctl_watch(single.member(0), &["--rev", "1", "--prefix", ""]);
    let history = "PUT\nfoo\nbar\nPUT\nfoo\nbar2\nPUT\na\n1\nDELETE\na\n\n";
    assert_watch_printed(&mut watch, history);

    etcdctl.run(&["put", "b", "2"]).assert_success();
    etcdctl.run(&["del", "foo"]).assert_success();
    assert_watch_printed(&mut watch, &format!("{history}PUT\nb\n2\nDELETE\nfoo\n\n"));
}

/// `etcdctl watch -w json` (the sample's step 28) and `--prev-kv`, on one key.
#[test]
fn etcdctl_watch_json_and_prev_kv_show_etcds_fields() {
    let single = Cluster::init(MemberOptions::default());
    let etcdctl = single.member(0).etcdctl();
    for args in [
        &["put", "foo", "bar"][..], // revision 2
        &["put", "other", "x"],     // 3
        &["put", "foo", "bar2"],    // 4
        &["del", "foo"],            // 5
        &["put", "foo", "bar3"],    // 6
    ] {
        etcdctl.run(args).assert_success();
    }

    let json = etcdctl_watch(single.member(0), &["-w", "json", "--rev", "1", "foo"]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let want = serde_json::json!([
        {"kv": {"key": b64("foo"), "create_revision": 2, "mod_revision": 2, "version": 1, "value": b64("bar")}},
        {"kv": {"key": b64("foo"), "create_revision": 2, "mod_revision": 4, "version": 2, "value": b64("bar2")}},
        {"type": 1, "kv": {"key": b64("foo"), "mod_revision": 5}},
        {"kv": {"key": b64("foo"), "create_revision": 6, "mod_revision": 6, "version": 1, "value": b64("bar3")}},
    ]);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut events = Vec::new();
    while events.len() < 4 && Instant::now() < deadline {
        let printed = json.stdout();
        let complete = &printed[..printed.rfind('\n').map_or(0, |end| end + 1)];
        events = complete
            .lines()
            .flat_map(|line| {
                let response: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert_eq!(response["Canceled"], false, "{line}");
                assert_eq!(response["Created"], false, "{line}");
                assert_eq!(response["CompactRevision"], 0, "{line}");
                assert_eq!(response["Header"]["revision"], 6, "{line}");
                response["Events"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(serde_json::Value::Array(events), want, "{}", json.stdout());

    let mut prev = etcdctl_watch(single.member(0), &["--prev-kv", "--rev", "4", "foo"]);
    assert_watch_printed(
        &mut prev,
        "PUT\nfoo\nbar\nfoo\nbar2\nDELETE\nfoo\nbar2\nfoo\n\nPUT\nfoo\nbar3\n",
    );
}

/// Watching from a compacted revision: etcdctl 3.4.23 against etcd reports the cancel on stderr
/// and exits 5 on its own, printing nothing on stdout.
#[test]
fn etcdctl_watch_from_a_compacted_revision_is_canceled_as_with_etcd() {
    let single = Cluster::init(MemberOptions::default());
    let etcdctl = single.member(0).etcdctl();
    for args in [
        &["put", "foo", "bar"][..],
        &["put", "foo", "bar2"],
        &["put", "foo", "bar3"],
        &["compaction", "3"],
    ] {
        etcdctl.run(args).assert_success();
    }
    let output = etcdctl_watch(single.member(0), &["--rev", "2", "foo"]).wait_exit(EVENT_TIMEOUT);
    assert_eq!(output.code, Some(5), "{output}");
    assert_eq!(output.stdout, "", "{output}");
    assert_eq!(
        output.stderr_messages(),
        [
            format!("watch was canceled ({COMPACTED})").as_str(),
            "Error: watch is canceled by the server"
        ],
        "{output}"
    );
}
