//! Proposal batching: client writes that arrive while earlier ones are still in consensus share
//! one Raft entry, so one log append (one fsync on every member) and one apply transaction carry
//! them all. This is Bulwark's group commit: every entry costs a log transaction, an
//! AppendEntries to each follower and an apply transaction on every member, so without batching
//! every write would pay all of them (and openraft 0.9 as published fsyncs each entry on the
//! leader before it looks at the next).
//!
//! A single client never waits for company: a write that finds nothing queued goes out alone at
//! once. Only while [`IN_FLIGHT_ENTRIES`] entries are already in consensus do new writes queue,
//! and the next entry takes everything queued (up to [`MAX_BATCH_COMMANDS`] commands or
//! [`MAX_BATCH_BYTES`]).
//!
//! Invariants:
//! - commands of one entry apply in the order they were queued, each as its own command (its own
//!   revision, its own result or rejection);
//! - every queued write gets exactly one answer: its command's result, or the error of its entry.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{MemberNode, NodeId, Request, TypeConfig};

/// Entries proposed and not yet applied: enough to keep the log append, the replication round
/// trip and the apply busy at once, few enough that writes arriving meanwhile form large batches.
const IN_FLIGHT_ENTRIES: usize = 4;
/// At most this many commands in one entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// An entry stops taking more commands once it holds this many bytes (one larger command still
/// goes alone), which bounds AppendEntries messages.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

pub(super) type WriteError = RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>;
type Answer = oneshot::Sender<Result<Vec<u8>, WriteError>>;

struct QueuedWrite {
    command: Vec<u8>,
    answer: Answer,
}

/// The write queue in front of [`Raft::client_write`]; cheap to clone.
#[derive(Clone)]
pub(super) struct ProposalBatcher {
    queue: mpsc::UnboundedSender<QueuedWrite>,
}

impl ProposalBatcher {
    /// Starts the batching task; it ends when every handle is dropped.
    pub(super) fn start(raft: Raft<TypeConfig>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(batch_writes(raft, queued));
        ProposalBatcher { queue }
    }

    /// Proposes one encoded command; returns its encoded result once its entry is applied here.
    pub(super) async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>, WriteError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(QueuedWrite { command, answer })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn stopped() -> WriteError {
    RaftError::Fatal(openraft::error::Fatal::Stopped)
}

async fn batch_writes(raft: Raft<TypeConfig>, mut queued: mpsc::UnboundedReceiver<QueuedWrite>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_ENTRIES));
    while let Some(first) = queued.recv().await {
        // Waiting here is what makes batches: writes queue while entries are in flight.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.command.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match queued.try_recv() {
                Ok(write) => {
                    bytes += write.command.len();
                    batch.push(write);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (commands, answers): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|write| (write.command, write.answer))
                .unzip();
            let outcome = raft.client_write(Request { commands }).await;
            drop(permit);
            answer_all(answers, outcome.map(|response| response.data.results));
        });
    }
}

fn answer_all(answers: Vec<Answer>, outcome: Result<Vec<Vec<u8>>, WriteError>) {
    match outcome {
        Ok(results) if results.len() == answers.len() => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(Ok(result));
            }
        }
        Ok(results) => {
            // The state machine answers every command of an entry; anything else is a bug, and
            // no caller may take another command's result for its own.
            tracing::error!(
                commands = answers.len(),
                results = results.len(),
                "an applied entry answered the wrong number of commands"
            );
            for answer in answers {
                let _ = answer.send(Err(stopped()));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}
