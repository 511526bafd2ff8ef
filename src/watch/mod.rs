//! Watches: etcd's `Watch` stream semantics over the MVCC change log.
//!
//! Each client stream gets one task. A watcher is only a key range, the next revision it needs
//! and its options; it holds no event buffer. When the store publishes a new committed revision
//! the task reads each lagging watcher's events from the MVCC history (`Store::events`) and sends
//! them. So:
//! - a slow client never blocks writes or other streams: the apply path only publishes a number,
//!   and back-pressure stops at this stream's bounded response channel;
//! - a watcher that fell behind, or resumes from an old revision after a member restart or a
//!   leader change, catches up from history with nothing missed or repeated;
//! - events come in revision order, a revision's events are never split between responses
//!   (except with `fragment`), and a compacted start revision cancels the watcher with
//!   `compact_revision` set, as etcd does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::mvcc::keys::KeyRange;
use crate::mvcc::{MvccError, Store};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::event::EventType;

/// Responses queued for a client before the stream's task waits for it.
const RESPONSE_BUFFER: usize = 64;
/// Most revisions read for one watcher in one step, so one far-behind watcher cannot starve the
/// others on its stream or build a huge response.
const MAX_REVISIONS_PER_STEP: i64 = 1000;
/// etcd's `WatchId` for a progress notification that concerns the whole stream.
const STREAM_WATCH_ID: i64 = -1;

/// Per-member watch settings.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// How often idle watchers that asked for progress notifications get one.
    pub progress_interval: Duration,
    /// Above this size a `fragment` watcher's response is split.
    pub max_response_bytes: usize,
}

/// Builds the header of every response at a given revision.
pub type HeaderFn = Arc<dyn Fn(i64) -> Option<ResponseHeader> + Send + Sync>;

struct Watcher {
    range: KeyRange,
    /// The first revision not yet delivered.
    next: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events went out since the last progress tick.
    active: bool,
}

/// Serves one client's watch stream; the returned stream carries the responses.
pub fn serve_stream(
    store: Arc<Store>,
    header: HeaderFn,
    requests: Streaming<WatchRequest>,
    settings: WatchSettings,
) -> ReceiverStream<Result<WatchResponse, Status>> {
    let (responses, stream) = mpsc::channel(RESPONSE_BUFFER);
    let session = Session {
        store,
        header,
        settings,
        responses,
        watchers: BTreeMap::new(),
        next_id: 0,
        progress_requested: false,
    };
    tokio::spawn(session.run(requests));
    ReceiverStream::new(stream)
}

struct Session {
    store: Arc<Store>,
    header: HeaderFn,
    settings: WatchSettings,
    responses: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// A progress request arrived while some watcher was behind: answer once all are synced.
    progress_requested: bool,
}

/// The client went away: nothing more to do for this stream.
struct Closed;

impl Session {
    async fn run(mut self, mut requests: Streaming<WatchRequest>) {
        let mut committed = self.store.subscribe();
        let mut progress = tokio::time::interval(self.settings.progress_interval);
        progress.tick().await; // the first tick is immediate
                               // A client may close its side once its watches are created (one-shot clients, the
                               // gateway); its watches keep delivering until it closes the response stream.
        let mut requests_open = true;
        loop {
            let current = *committed.borrow_and_update();
            let behind = match self.deliver(current).await {
                Ok(behind) => behind,
                Err(Closed) => return,
            };
            if !behind && self.progress_requested {
                self.progress_requested = false;
                if self.send_stream_progress(current).await.is_err() {
                    return;
                }
            }
            let step = tokio::select! {
                biased;
                request = requests.message(), if requests_open => match request {
                    Ok(Some(request)) => self.handle(request, current).await,
                    Ok(None) => {
                        requests_open = false;
                        Ok(())
                    }
                    Err(_) => return, // the stream broke
                },
                _ = self.responses.closed() => return,
                changed = committed.changed(), if !behind => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => return, // the store is gone: the member is stopping
                },
                _ = progress.tick(), if !behind => self.notify_progress(current).await,
                // Still catching up: go round again, after letting requests in.
                _ = std::future::ready(()), if behind => Ok(()),
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Sends every watcher its events up to `current`, a step at a time. Returns whether some
    /// watcher is still behind.
    async fn deliver(&mut self, current: i64) -> Result<bool, Closed> {
        let mut behind = false;
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next <= current)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            let read = self.store.events(
                &watcher.range,
                watcher.next,
                current,
                watcher.prev_kv,
                MAX_REVISIONS_PER_STEP,
            );
            match read {
                Ok(batch) => {
                    let watcher = self.watchers.get_mut(&id).expect("present above");
                    watcher.next = batch.next_revision;
                    behind |= watcher.next <= current;
                    let events: Vec<_> = batch
                        .events
                        .into_iter()
                        .filter(|event| match EventType::try_from(event.r#type) {
                            Ok(EventType::Put) => !watcher.no_put,
                            Ok(EventType::Delete) => !watcher.no_delete,
                            Err(_) => true,
                        })
                        .collect();
                    if events.is_empty() {
                        continue;
                    }
                    watcher.active = true;
                    let fragment = watcher.fragment;
                    let response = WatchResponse {
                        header: (self.header)(current),
                        watch_id: id,
                        events,
                        ..Default::default()
                    };
                    self.send_events(response, fragment).await?;
                }
                Err(MvccError::Compacted) => {
                    let compact_revision = self
                        .store
                        .status()
                        .map(|s| s.compact_revision)
                        .unwrap_or_default();
                    self.watchers.remove(&id);
                    self.send(WatchResponse {
                        header: (self.header)(current),
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .into(),
                        ..Default::default()
                    })
                    .await?;
                }
                Err(error) => {
                    tracing::error!(%error, watch_id = id, "reading watch events failed");
                    self.watchers.remove(&id);
                    self.send(WatchResponse {
                        header: (self.header)(current),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: error.to_string(),
                        ..Default::default()
                    })
                    .await?;
                }
            }
        }
        Ok(behind)
    }

    async fn handle(&mut self, request: WatchRequest, current: i64) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create, current).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    self.send(WatchResponse {
                        header: (self.header)(current),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // etcd 3.5: one notification for the stream, once every watcher is synced.
                if self.watchers.values().all(|w| w.next > current) {
                    self.send_stream_progress(current).await
                } else {
                    self.progress_requested = true;
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest, current: i64) -> Result<(), Closed> {
        let range = KeyRange::new(&create.key, &create.range_end);
        if let KeyRange::Span {
            start,
            end: Some(end),
        } = &range
        {
            if start >= end {
                return self.refuse(current, "mvcc: watcher range is empty").await;
            }
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                return self
                    .refuse(
                        current,
                        "mvcc: duplicate watch ID provided on the WatchStream",
                    )
                    .await;
            }
            create.watch_id
        } else {
            // Like etcd's, the counter only grows: a canceled id is not handed out again.
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let filters: Vec<_> = create
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        self.watchers.insert(
            id,
            Watcher {
                range,
                next: if create.start_revision > 0 {
                    create.start_revision
                } else {
                    current + 1
                },
                no_put: filters.contains(&FilterType::Noput),
                no_delete: filters.contains(&FilterType::Nodelete),
                prev_kv: create.prev_kv,
                progress_notify: create.progress_notify,
                fragment: create.fragment,
                active: false,
            },
        );
        self.send(WatchResponse {
            header: (self.header)(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    async fn send_stream_progress(&self, current: i64) -> Result<(), Closed> {
        self.send(WatchResponse {
            header: (self.header)(current),
            watch_id: STREAM_WATCH_ID,
            ..Default::default()
        })
        .await
    }

    /// A refused create: etcd answers created + canceled with the stream-level id.
    async fn refuse(&self, current: i64, reason: &str) -> Result<(), Closed> {
        self.send(WatchResponse {
            header: (self.header)(current),
            watch_id: STREAM_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        })
        .await
    }

    /// A progress notification for every synced, idle watcher that asked for them.
    async fn notify_progress(&mut self, current: i64) -> Result<(), Closed> {
        let mut due = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if watcher.progress_notify && !watcher.active && watcher.next > current {
                due.push(*id);
            }
            watcher.active = false;
        }
        for id in due {
            self.send(WatchResponse {
                header: (self.header)(current),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Sends an events response, split into fragments when the watcher allows it and it is
    /// larger than the limit; every fragment but the last has `fragment` set.
    async fn send_events(&self, response: WatchResponse, fragment: bool) -> Result<(), Closed> {
        if !fragment || response.encoded_len() <= self.settings.max_response_bytes {
            return self.send(response).await;
        }
        let mut pieces = vec![Vec::new()];
        let mut size = 0;
        for event in response.events {
            let len = event.encoded_len() + 8;
            let piece = pieces.last_mut().expect("never empty");
            if !piece.is_empty() && size + len > self.settings.max_response_bytes {
                pieces.push(Vec::new());
                size = 0;
            }
            size += len;
            pieces.last_mut().expect("never empty").push(event);
        }
        let last = pieces.len() - 1;
        for (index, events) in pieces.into_iter().enumerate() {
            self.send(WatchResponse {
                header: response.header,
                watch_id: response.watch_id,
                events,
                fragment: index < last,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        self.responses.send(Ok(response)).await.map_err(|_| Closed)
    }
}
