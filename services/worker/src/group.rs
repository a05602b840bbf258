//! Partition ownership through the Kafka group protocol
//! (`worker.assignment = "group"`).
//!
//! An operator with several inputs needs partition `p` of every input on
//! the same worker (keys line up by partition), and no assignor in
//! librdkafka promises that with incremental (cooperative) rebalancing. So
//! the group decides ownership over one input only, the first: an *owner*
//! consumer subscribes to it with the cooperative-sticky assignor (a
//! rebalance moves only the partitions that change hands), pauses what it
//! is given, and never reads a record. The runner reads every input with
//! its own consumer by explicit assignment, and follows the owner: for an
//! arriving partition it loads the checkpoint and adds partition `p` of
//! every input at the checkpoint's offsets; for a leaving one it drops the
//! state and the inputs. Our offsets live in the checkpoints, beside the
//! state they belong to, not in committed group offsets.
//!
//! The owner consumer is polled only between batches, and the runner takes
//! the [`Move`]s right after, so a partition the group takes away is not
//! touched again: it is dropped without a publish or a checkpoint. That is
//! exact because the worker is built so that being killed at any point is
//! (see [`crate::Runner`]); the next owner starts from the checkpoint and
//! what the output topics hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use marktwin_core::backoff::Backoff;
use marktwin_state::checkpoint::{Checkpoint, CheckpointStore};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{info, warn};

/// A change of the partitions this worker owns.
#[derive(Debug, PartialEq)]
pub(crate) enum Move {
    /// The group gave this worker the partition number.
    Assigned(i32),
    /// The group took the partition number away.
    Revoked(i32),
}

/// Moves not yet taken by the runner, in the order they happened.
#[derive(Clone, Default)]
pub(crate) struct Moves {
    /// The group has answered at least once (perhaps with no partitions).
    joined: Arc<AtomicBool>,
    moves: Arc<Mutex<Vec<Move>>>,
}

impl Moves {
    /// True once the group has given this member its share, however small.
    pub(crate) fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    fn push(&self, tpl: &TopicPartitionList, m: fn(i32) -> Move) {
        let mut parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        parts.sort_unstable();
        parts.dedup();
        self.moves
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(parts.into_iter().map(m));
    }

    /// The moves since the last call.
    pub(crate) fn take(&self) -> Vec<Move> {
        std::mem::take(&mut *self.moves.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The owner consumer's context: records the moves and takes or gives up
/// the partitions; the runner does the work.
pub(crate) struct OwnerContext {
    pub(crate) operator: &'static str,
    pub(crate) moves: Moves,
}

impl ClientContext for OwnerContext {}

impl ConsumerContext for OwnerContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                info!(operator = self.operator, partitions = ?partitions(tpl), "The group assigned partitions.");
                self.moves.push(tpl, Move::Assigned);
                let taken = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // The owner only holds the partitions; the runner reads.
                taken.and_then(|()| consumer.pause(tpl))
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    warn!(operator = self.operator, error = ?err, "Rebalance failed; giving up the partitions.");
                }
                info!(operator = self.operator, partitions = ?partitions(tpl), lost = consumer.assignment_lost(), "The group revoked partitions.");
                self.moves.push(tpl, Move::Revoked);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
        };
        self.moves.joined.store(true, Ordering::Release);
        if let Err(e) = done {
            warn!(operator = self.operator, error = %e, "Following the group's assignment failed.");
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Loads `operator`'s checkpoint of partition `p`, retrying while the
/// store fails in a way that may pass.
pub(crate) fn load_checkpoint(
    store: &CheckpointStore,
    rt: &tokio::runtime::Handle,
    operator: &str,
    p: i32,
    stop: &AtomicBool,
) -> Result<Option<Checkpoint>, marktwin_state::Error> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match rt.block_on(store.load(operator, p)) {
            Ok(cp) => return Ok(cp),
            Err(e) if e.is_retryable() && !stop.load(Ordering::Relaxed) => {
                warn!(operator, partition = p, error = %e, "Loading the checkpoint failed; retrying.");
                std::thread::sleep(backoff.next_delay());
            }
            Err(e) => return Err(e),
        }
    }
}
