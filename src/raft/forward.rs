//! Forwarding batching: on a follower, client writes bound for the leader that arrive while
//! earlier forwards are still out share one `Peer.ProposeBatch` call. Without it every forwarded
//! write costs its own HTTP/2 request on the follower and on the leader, which under load is most
//! of the writes (clients spread over the members send two thirds of them to followers on 3
//! members).
//!
//! A write that finds nothing queued goes out alone at once; only while [`IN_FLIGHT_CALLS`] calls
//! are out do new ones queue, and the next call takes everything queued for the same leader (up to
//! [`MAX_BATCH_COMMANDS`] commands or [`MAX_BATCH_BYTES`]). The leader proposes the commands of a
//! call in order (they join its own proposal batch, see [`super::batch`]).
//!
//! Invariants:
//! - every queued write gets exactly one answer: its command's outcome from the leader, or the
//!   error of the call that carried it (so [`super::never_delivered`] still tells a write that
//!   never reached a leader, and may be retried, from one that might have);
//! - a call carries commands for one leader only.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::batching::{self, Limits, Queued};
use super::network::{self, PeerTls};
use super::{Applied, MemberNode};

/// Forward calls out at once; writes arriving meanwhile queue for the next one.
const IN_FLIGHT_CALLS: usize = 4;
/// At most this many commands in one call.
const MAX_BATCH_COMMANDS: usize = 1024;
/// A call stops taking more commands once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// A command and the leader it goes to.
type Forward = (MemberNode, Vec<u8>);

/// The queue in front of the leader's `Peer.ProposeBatch`; cheap to clone.
#[derive(Clone)]
pub(super) struct ForwardBatcher {
    queue: mpsc::UnboundedSender<Queued<Forward, Applied, tonic::Status>>,
}

impl ForwardBatcher {
    /// Starts the forwarding task; it ends when every handle is dropped.
    pub(super) fn start(tls: PeerTls, timeout: Duration) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let limits = Limits {
            in_flight: IN_FLIGHT_CALLS,
            max_items: MAX_BATCH_COMMANDS,
            max_bytes: MAX_BATCH_BYTES,
            bytes_of: |(_, command): &Forward| command.len(),
            group: |(leader, _): &Forward| leader.clone(),
        };
        tokio::spawn(batching::run(queued, limits, move |forwards, answers| {
            let tls = tls.clone();
            async move {
                let Some(leader) = forwards.first().map(|(leader, _)| leader.clone()) else {
                    return;
                };
                let commands = forwards.into_iter().map(|(_, command)| command).collect();
                let outcome = network::forward_proposals(&tls, &leader, commands, timeout).await;
                batching::answer_all(answers, outcome, |outcomes, commands| {
                    tonic::Status::internal(format!(
                        "the leader answered {outcomes} of {commands} forwarded commands"
                    ))
                });
            }
        }));
        ForwardBatcher { queue }
    }

    /// Hands one encoded command to `leader`; returns it as applied on the leader, or the status
    /// the leader answered for it (or the call's own failure).
    pub(super) async fn forward(
        &self,
        leader: MemberNode,
        command: Vec<u8>,
    ) -> Result<Applied, tonic::Status> {
        let (answer, answered) = oneshot::channel();
        let stopped = || tonic::Status::unavailable("the forwarding queue stopped");
        self.queue
            .send(Queued {
                item: (leader, command),
                answer,
            })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}
