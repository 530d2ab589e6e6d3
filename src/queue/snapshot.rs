//! The queue state as a [`Checkpoint`]: what replaying the log up to one position would
//! rebuild, minus what only lives in this process (deliveries out with consumers, leases).

use super::{MsgState, State};
use crate::format::{Checkpoint, CheckpointMessage, CheckpointQueue};
use crate::ids::Position;

impl State {
    /// The checkpoint of this state, as the log stands at `position`.
    ///
    /// The caller guarantees that every record before `position` has been applied here and
    /// no operation is between writing its records and applying them (the store's write
    /// gate). A delivery out with a consumer is recorded as waiting again, with the delivery
    /// count the log holds for it: with `persist_deliveries` off, its current delivery was
    /// never written, so the count is one less than in memory.
    ///
    /// Cost: linear in the number of tracked messages.
    pub(crate) fn snapshot(
        &self,
        sequence: u64,
        position: Position,
        persist_deliveries: bool,
    ) -> Checkpoint {
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
        let messages = self
            .table
            .live()
            .filter(|(_, slot)| !slot.state.is_settled())
            .map(|(id, slot)| {
                let mut count = self.deliveries.get(&id).copied().unwrap_or(0);
                if slot.state == MsgState::InFlight && !persist_deliveries {
                    count = count.saturating_sub(1);
                }
                CheckpointMessage {
                    id: id.0,
                    segment: slot.segment,
                    offset: u64::from(slot.offset),
                    len: slot.len,
                    queue: slot.queue.0,
                    delivery_count: count,
                    expires_ms: self.expiries.get(&id).copied().unwrap_or(0),
                    not_before_ms: self.delays.get(&id).copied().unwrap_or(0),
                    origin: self.origins.get(&id).map(|o| (o.queue.0, o.reason)),
                }
            })
            .collect();
        Checkpoint {
            sequence,
            segment: position.segment.0,
            offset: position.offset,
            next_message_id: self.table.next_id(),
            acked_total: self.acked_total,
            rejected_total: self.rejected_total,
            queues,
            messages,
        }
    }
}
