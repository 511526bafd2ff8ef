//! Proposal batching: client writes that arrive while earlier ones are still in consensus share
//! one Raft entry, so one log append (one fsync on every member) and one apply transaction carry
//! them all. This is Bulwark's group commit: every entry costs a log transaction, an
//! AppendEntries to each follower and an apply transaction on every member, so without batching
//! every write would pay all of them (and openraft 0.9 as published fsyncs each entry on the
//! leader before it looks at the next).
//!
//! A single client never waits for company: a write that finds no entry in consensus goes out
//! alone at once. Only while an entry is in consensus ([`IN_FLIGHT_ENTRIES`]) do new writes
//! queue, and the next entry takes everything queued (up to [`MAX_BATCH_COMMANDS`] commands or
//! [`MAX_BATCH_BYTES`]).
//!
//! Invariants:
//! - commands of one entry apply in the order they were queued, each as its own command (its own
//!   revision, its own result or rejection);
//! - every queued write gets exactly one answer: its command's result, or the error of its entry.

use std::future::Future;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::Raft;
use tokio::sync::{mpsc, oneshot};

use super::batching::{self, Limits, Queued};
use super::{Applied, MemberNode, NodeId, Request, TypeConfig};

/// Entries proposed and not yet applied: one. Writes arriving while it is in consensus all wait
/// for the next entry, so each round (log append and fsync on every member, an AppendEntries to
/// each follower, an apply) carries as many as it can. More entries in flight overlap little:
/// openraft 0.9 keeps one AppendEntries in flight per follower and the log has one writer; they
/// mostly split the same writes into more rounds, each costing an fsync and its wake-ups on every
/// member (on three members, four in flight cost about 30% more CPU per put at 64 clients and
/// 20% more at 256, with 9 and 16% less throughput: `docs/benchmarks.md`, eighth session).
const IN_FLIGHT_ENTRIES: usize = 1;
/// At most this many commands in one entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// An entry stops taking more commands once it holds this many bytes (one larger command still
/// goes alone), which bounds AppendEntries messages.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

pub(super) type WriteError = RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>;

/// Why a queued write has no result.
// As large as the `WriteError` it wraps, which was answered unboxed before: boxing it would only
// stop callers from matching through it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(super) enum WriteFailure {
    /// openraft's answer for its entry (not the leader, stopped, ...).
    Raft(WriteError),
    /// No answer within the bound given to [`ProposalBatcher::start`]. The entry may still
    /// commit: the outcome is unknown, as etcd's "request timed out" says.
    TimedOut,
}

/// The write queue in front of [`Raft::client_write`]; cheap to clone.
#[derive(Clone)]
pub(super) struct ProposalBatcher {
    queue: mpsc::UnboundedSender<Queued<Vec<u8>, Applied, WriteFailure>>,
}

impl ProposalBatcher {
    /// Starts the batching task; it ends when every handle is dropped. An entry that openraft
    /// has not answered within `bound` is given up (its writes answered [`WriteFailure::TimedOut`])
    /// so that it frees its place: openraft answers a write only once its entry is applied or
    /// cut from the log, and an entry purged under an installed snapshot (a cut-off leader
    /// catching up) is never answered, which would hold the only entry in flight, and every
    /// later write of this member behind it, for good.
    pub(super) fn start(raft: Raft<TypeConfig>, bound: Duration) -> Self {
        Self::start_with(bound, move |request| {
            let raft = raft.clone();
            async move { raft.client_write(request).await }
        })
    }

    /// [`Self::start`] with `write` in place of [`Raft::client_write`].
    fn start_with<Write, Written>(bound: Duration, write: Write) -> Self
    where
        Write: Fn(Request) -> Written + Send + 'static,
        Written:
            Future<Output = Result<ClientWriteResponse<TypeConfig>, WriteError>> + Send + 'static,
    {
        let (queue, queued) = mpsc::unbounded_channel();
        let limits = Limits {
            in_flight: IN_FLIGHT_ENTRIES,
            max_items: MAX_BATCH_COMMANDS,
            max_bytes: MAX_BATCH_BYTES,
            bytes_of: Vec::len,
            group: |_| (),
        };
        tokio::spawn(batching::run(queued, limits, move |commands, answers| {
            let written = write(Request { commands });
            async move {
                let outcome = match tokio::time::timeout(bound, written).await {
                    Ok(outcome) => outcome.map_err(WriteFailure::Raft),
                    Err(_) => Err(WriteFailure::TimedOut),
                };
                let applied = outcome.map(|response| {
                    let index = response.log_id.index;
                    let results = response.data.results.into_iter();
                    results
                        .map(|result| Ok(Applied { index, result }))
                        .collect()
                });
                batching::answer_all(answers, applied, |results, commands| {
                    // The state machine answers every command of an entry; anything else is
                    // a bug.
                    tracing::error!(
                        commands,
                        results,
                        "an applied entry answered the wrong number of commands"
                    );
                    stopped()
                });
            }
        }));
        ProposalBatcher { queue }
    }

    /// Proposes one encoded command; returns its encoded result once its entry is applied here.
    pub(super) async fn write(&self, command: Vec<u8>) -> Result<Applied, WriteFailure> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued {
                item: command,
                answer,
            })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn stopped() -> WriteFailure {
    WriteFailure::Raft(RaftError::Fatal(openraft::error::Fatal::Stopped))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::raft::Reply;

    /// An entry openraft never answers (one purged under an installed snapshot) is given up at
    /// the bound, its writes told the outcome is unknown, and the writes behind it go on.
    #[tokio::test]
    async fn an_entry_never_answered_is_given_up_and_the_next_goes_out() {
        // Short, so the test is quick; the outcome does not depend on it.
        let bound = Duration::from_millis(100);
        let entries = Arc::new(AtomicUsize::new(0));
        let batcher = ProposalBatcher::start_with(bound, {
            let entries = entries.clone();
            move |request: Request| {
                let first = entries.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok(ClientWriteResponse {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
                        data: Reply {
                            results: request.commands,
                        },
                        membership: None,
                    })
                }
            }
        });
        let stuck = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.write(b"stuck".to_vec()).await }
        });
        // The stuck entry is out before the next write queues behind it.
        for _ in 0..10_000 {
            if entries.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            entries.load(Ordering::SeqCst),
            1,
            "the stuck entry went out"
        );
        let behind = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.write(b"behind".to_vec()).await }
        });
        let stuck = stuck.await.expect("the stuck write's task");
        assert!(
            matches!(stuck, Err(WriteFailure::TimedOut)),
            "the stuck write: {stuck:?}"
        );
        let behind = behind
            .await
            .expect("the next write's task")
            .expect("the next write is answered");
        assert_eq!(behind.result, b"behind".to_vec());
        assert_eq!(entries.load(Ordering::SeqCst), 2);
    }
}
