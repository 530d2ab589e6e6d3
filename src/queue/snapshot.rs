//! The queue state as a [`Checkpoint`]: what replaying the log up to one position would
//! rebuild, minus what only lives in this process (deliveries out with consumers, leases).

use std::collections::BTreeSet;

use super::{MessageTable, MsgState, Origin, State};
use crate::format::{Checkpoint, CheckpointMessage, CheckpointQueue, CHECKPOINT_HEADER_LEN};
use crate::ids::{IdMap, MessageId, Position, SegmentId};

impl State {
    /// A frozen copy of what a checkpoint of this state holds, as the log stands at
    /// `position`; [`Frozen::encode`] turns it into the checkpoint file, with no lock held.
    ///
    /// The caller guarantees that every record before `position` has been applied here and
    /// no operation is between writing its records and applying them (the store's write
    /// gate, held only for this call).
    ///
    /// Cost: the message table is shared copy-on-write (one reference per 1,024-id chunk);
    /// the per-message maps (delivery counts, expiries, delays, dead-letter origins) are
    /// copied, so linear in the messages that have such an entry.
    pub(crate) fn freeze(&self, position: Position) -> Frozen {
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let c = q.counters;
                CheckpointQueue {
                    name: q.name.to_string(),
                    settings: q.settings,
                    counters: [
                        0,
                        c.published,
                        c.acked,
                        c.rejected,
                        c.expired,
                        c.dead_lettered,
                        c.dropped,
                    ],
                }
            })
            .collect();
        Frozen {
            head: Checkpoint {
                sequence: 0,
                segment: position.segment.0,
                offset: position.offset,
                next_message_id: self.table.next_id(),
                acked_total: self.acked_total,
                rejected_total: self.rejected_total,
                queues,
                messages: Vec::new(),
            },
            position,
            table: self.table.clone(),
            deliveries: self.deliveries.clone(),
            expiries: self.expiries.clone(),
            delays: self.delays.clone(),
            origins: self.origins.clone(),
        }
    }
}

/// The state a checkpoint records, frozen at one log position (see [`State::freeze`]).
#[derive(Debug)]
pub(crate) struct Frozen {
    head: Checkpoint,
    position: Position,
    table: MessageTable,
    deliveries: IdMap<MessageId, u32>,
    expiries: IdMap<MessageId, u64>,
    delays: IdMap<MessageId, u64>,
    origins: IdMap<MessageId, Origin>,
}

impl Frozen {
    /// Writes the checkpoint of sequence number `sequence`: its body to `sink` in pieces,
    /// in order (see [`Checkpoint::encode_to`]); returns the header and what the store
    /// keeps in mind about it.
    ///
    /// A delivery out with a consumer is recorded as waiting again, with the delivery
    /// count the log holds for it: with `persist_deliveries` off, its current delivery was
    /// never written, so the count is one less than in memory. Nothing is allocated per
    /// message.
    ///
    /// Cost: linear in the number of tracked messages.
    pub(crate) fn encode_to<E>(
        mut self,
        sequence: u64,
        persist_deliveries: bool,
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Snapshot, E> {
        self.head.sequence = sequence;
        let mut referenced = BTreeSet::new();
        let mut last_segment = None;
        let messages = self
            .table
            .live()
            .map(|(id, slot)| {
                let mut deliveries = self.deliveries.get(&id).copied().unwrap_or(0);
                if slot.state == MsgState::InFlight && !persist_deliveries {
                    deliveries = deliveries.saturating_sub(1);
                }
                CheckpointMessage {
                    id: id.0,
                    segment: slot.segment,
                    offset: u64::from(slot.offset),
                    len: slot.len,
                    queue: slot.queue.0,
                    delivery_count: deliveries,
                    expires_ms: self.expiries.get(&id).copied().unwrap_or(0),
                    not_before_ms: self.delays.get(&id).copied().unwrap_or(0),
                    origin: self.origins.get(&id).map(|o| (o.queue.0, o.reason)),
                }
            })
            .inspect(|m| {
                if last_segment != Some(m.segment) {
                    last_segment = Some(m.segment);
                    referenced.insert(SegmentId(m.segment));
                }
            });
        let declared = self.table.live_count();
        let encoded = self.head.encode_to(declared, messages, sink)?;
        Ok(Snapshot {
            sequence,
            position: self.position,
            header: encoded.header,
            declared,
            messages: encoded.messages,
            referenced,
        })
    }
}

/// A checkpoint written from a [`Frozen`] state: its header, and what the store keeps in
/// mind about it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) sequence: u64,
    /// Where replay from it starts.
    pub(crate) position: Position,
    /// The file header, to be written before the body.
    pub(crate) header: [u8; CHECKPOINT_HEADER_LEN],
    /// The message count written in the body (the table's count of unsettled messages).
    pub(crate) declared: u64,
    /// Unsettled messages written; the file is valid only if this equals `declared`.
    pub(crate) messages: u64,
    /// The segments its messages' payload records are in.
    pub(crate) referenced: BTreeSet<SegmentId>,
}
