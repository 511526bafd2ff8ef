//! The write path: every change to the store is proposed as a [`Command`](crate::proto::bulwarkpb::Command),
//! becomes an entry of the log, and is applied in log order by the state machine
//! ([`Store::apply`]).
//!
//! Today a cluster has one voter, so an entry is committed as soon as it is durable on it: the
//! [`Proposer`] batches whatever proposals are waiting, applies them in one fsynced redb
//! transaction (group commit: one fsync for the whole batch) and only then answers each of them.
//! Replication through openraft replaces what happens behind [`Proposer::propose`]; the API layer
//! and the state machine keep their shape.
//!
//! Invariants:
//! - a proposal is answered only after the transaction holding it has committed durably;
//! - entries are applied in the order their indices give, each exactly once;
//! - the applied index is stored with the data, so a restart continues the numbering.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::mvcc::{encode_command, CommandResponse, LogEntry, MvccError, Store};
use crate::proto::bulwarkpb::command;

/// Most proposals applied in one transaction; bounds the latency one batch can add.
const MAX_BATCH: usize = 1024;
/// Proposals waiting beyond this make `propose` wait: back-pressure instead of unbounded memory.
const QUEUE_DEPTH: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The command was applied and rejected (e.g. a compacted revision).
    #[error(transparent)]
    Rejected(MvccError),
    /// The batch holding the command could not be written; nothing of it was applied.
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the write path has stopped")]
    Stopped,
}

struct Proposal {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<CommandResponse, ProposeError>>,
}

/// Hands commands to the write path. Cheap to clone; the write path stops when every clone is
/// dropped, after answering what was already queued.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the write path over `store` on its own thread (redb commits block).
    pub fn start(store: Arc<Store>) -> Result<(Proposer, JoinHandle<()>), MvccError> {
        let next_index = store.status()?.applied_index + 1;
        let (queue, proposals) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("bulwark-apply".into())
            .spawn(move || run(store, proposals, next_index))
            .expect("spawning the apply thread");
        Ok((Proposer { queue }, thread))
    }

    /// Proposes a command and waits until it is durably applied, returning what it produced.
    pub async fn propose(&self, command: command::Kind) -> Result<CommandResponse, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            payload: encode_command(command),
            reply,
        };
        self.queue
            .send(proposal)
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)?
    }
}

fn run(store: Arc<Store>, mut proposals: mpsc::Receiver<Proposal>, mut next_index: u64) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = proposals.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match proposals.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        for proposal in batch.drain(..) {
            entries.push(LogEntry {
                index: next_index,
                payload: proposal.payload,
            });
            replies.push(proposal.reply);
            next_index += 1;
        }
        match store.apply(&entries) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that went away no longer needs its answer; the write stands.
                    let _ = reply.send(result.map_err(ProposeError::Rejected));
                }
            }
            Err(error) => {
                tracing::error!(%error, "applying a batch failed; nothing of it was written");
                next_index -= entries.len() as u64;
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Storage(message.clone())));
                }
            }
        }
    }
}
