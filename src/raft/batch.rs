//! Proposal batching: client writes that arrive while earlier ones are still in consensus share
//! one Raft entry, so one log append (one fsync on every member) and one apply transaction carry
//! them all. This is Bulwark's group commit: every entry costs a log transaction, an
//! AppendEntries to each follower and an apply transaction on every member, so without batching
//! every write would pay all of them (and openraft 0.9 as published fsyncs each entry on the
//! leader before it looks at the next).
//!
//! A single client never waits for company: a write that finds no entry in consensus goes out
//! alone at once. Only while [`IN_FLIGHT_ENTRIES`] (one) entry is in consensus do new writes
//! queue, and the next entry takes everything queued (up to [`MAX_BATCH_COMMANDS`] commands or
//! [`MAX_BATCH_BYTES`]).
//!
//! Invariants:
//! - commands of one entry apply in the order they were queued, each as its own command (its own
//!   revision, its own result or rejection);
//! - every queued write gets exactly one answer: its command's result, or the error of its entry.

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot};

use super::batching::{self, Limits, Queued};
use super::{Applied, MemberNode, NodeId, Request, TypeConfig};

/// Entries proposed and not yet applied: one. Writes arriving while it is in consensus all wait
/// for the next entry, so each round (log append and fsync on every member, an AppendEntries to
/// each follower, an apply) carries as many as it can. More entries in flight overlap little:
/// openraft 0.9 keeps one AppendEntries in flight per follower and the log has one writer; they
/// mostly split the same writes into more rounds, each costing an fsync and its wake-ups on every
/// member (four in flight cost 20 to 25% more CPU per put at 64 and 256 clients on three
/// members, with a fifth less throughput: `docs/benchmarks.md`, eighth session).
const IN_FLIGHT_ENTRIES: usize = 1;
/// At most this many commands in one entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// An entry stops taking more commands once it holds this many bytes (one larger command still
/// goes alone), which bounds AppendEntries messages.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

pub(super) type WriteError = RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>;

/// The write queue in front of [`Raft::client_write`]; cheap to clone.
#[derive(Clone)]
pub(super) struct ProposalBatcher {
    queue: mpsc::UnboundedSender<Queued<Vec<u8>, Applied, WriteError>>,
}

impl ProposalBatcher {
    /// Starts the batching task; it ends when every handle is dropped.
    pub(super) fn start(raft: Raft<TypeConfig>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let limits = Limits {
            in_flight: IN_FLIGHT_ENTRIES,
            max_items: MAX_BATCH_COMMANDS,
            max_bytes: MAX_BATCH_BYTES,
            bytes_of: Vec::len,
            group: |_| (),
        };
        tokio::spawn(batching::run(queued, limits, move |commands, answers| {
            let raft = raft.clone();
            async move {
                let outcome = raft.client_write(Request { commands }).await;
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
    pub(super) async fn write(&self, command: Vec<u8>) -> Result<Applied, WriteError> {
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

fn stopped() -> WriteError {
    RaftError::Fatal(openraft::error::Fatal::Stopped)
}
