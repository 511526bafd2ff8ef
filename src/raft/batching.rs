//! The batching loop shared by the proposal queue ([`super::batch`]) and the forwarding queue
//! ([`super::forward`]): callers queue items with a oneshot for their answer; an item that finds
//! nothing queued goes out alone at once, and only while `in_flight` batches are out do items
//! queue, the next batch taking everything queued (within its limits).
//!
//! Invariants:
//! - items of one batch keep the order they were queued in, and share one [`Limits::group`] key;
//! - every queued item gets exactly one answer: its own outcome, or its batch's error; an item
//!   whose caller stopped waiting before its batch formed is dropped unsent.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// One queued item and where its answer goes.
pub(super) struct Queued<T, R, E> {
    pub item: T,
    pub answer: oneshot::Sender<Result<R, E>>,
}

/// How batches are formed.
pub(super) struct Limits<T, K> {
    /// Batches out at once.
    pub in_flight: usize,
    /// At most this many items in one batch.
    pub max_items: usize,
    /// A batch stops taking items once it holds this many bytes.
    pub max_bytes: usize,
    pub bytes_of: fn(&T) -> usize,
    /// Only items with the same key share a batch.
    pub group: fn(&T) -> K,
}

/// Takes items off `queued` in batches and spawns `send` for each batch, with its items and
/// their answers; returns when every sender of the queue is dropped.
pub(super) async fn run<T, K, R, E, Send, Sent>(
    mut queued: mpsc::UnboundedReceiver<Queued<T, R, E>>,
    limits: Limits<T, K>,
    send: Send,
) where
    K: PartialEq,
    Send: Fn(Vec<T>, Vec<oneshot::Sender<Result<R, E>>>) -> Sent,
    Sent: Future<Output = ()> + std::marker::Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(limits.in_flight));
    // An item of another group than the batch being formed waits here for the next batch.
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(queued) => queued,
            None => match queued.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
        // Waiting here is what makes batches: items queue while batches are out.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // A caller that gave up (its request timed out or was cancelled) is not sent for: its
        // write was never handed on, and handing it on now could apply it after writes its
        // client made since.
        if first.answer.is_closed() {
            drop(permit);
            continue;
        }
        let group = (limits.group)(&first.item);
        let mut bytes = (limits.bytes_of)(&first.item);
        let mut batch = vec![first];
        while batch.len() < limits.max_items && bytes < limits.max_bytes {
            match queued.try_recv() {
                Ok(next) if next.answer.is_closed() => {}
                Ok(next) if (limits.group)(&next.item) == group => {
                    bytes += (limits.bytes_of)(&next.item);
                    batch.push(next);
                }
                Ok(next) => {
                    held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let (items, answers) = batch.into_iter().map(|q| (q.item, q.answer)).unzip();
        let sent = send(items, answers);
        tokio::spawn(async move {
            sent.await;
            drop(permit);
        });
    }
}

/// Answers each caller of a batch with its own outcome, or every one with the batch's error.
/// A batch answered with another number of outcomes than it had items gets `mismatch` for all:
/// no caller may take another's outcome for its own.
pub(super) fn answer_all<R, E: Clone>(
    answers: Vec<oneshot::Sender<Result<R, E>>>,
    outcome: Result<Vec<Result<R, E>>, E>,
    mismatch: impl FnOnce(usize, usize) -> E,
) {
    match outcome {
        Ok(outcomes) if outcomes.len() == answers.len() => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(outcome);
            }
        }
        Ok(outcomes) => {
            let error = mismatch(outcomes.len(), answers.len());
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}
