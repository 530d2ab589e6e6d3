//! Publishing: id assignment, overflow, the publish records, and making messages wait.

use super::{lock, Store};
use crate::error::{Error, Result};
use crate::format::{frame_len, PublishHeader, RecordKind, PUBLISH_HEADER_LEN};
use crate::ids::{MessageId, Position, QueueId};
use crate::log::Record;
use crate::queue::MsgState;
use crate::queue_options::PublishOptions;

impl Store {
    /// Publishes `payloads` to queue `q` as one atomic group and returns the id of the
    /// first; the others follow it consecutively.
    ///
    /// Under the publish lock (so ids follow log order): fire due timers, make room under
    /// the queue's limits (overflow records go in the same group, so a crash keeps both or
    /// neither), write the group. Then, outside every lock, wait for durability as the fsync
    /// policy says (this is where group commit happens), and only then make the messages
    /// deliverable.
    pub(super) fn publish_many(
        &self,
        q: QueueId,
        payloads: &[&[u8]],
        options: &PublishOptions,
    ) -> Result<MessageId> {
        if payloads.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let max = self.inner.opts.effective_max_message_size();
        let mut bytes = 0u64;
        for payload in payloads {
            let len = payload.len() as u64;
            if len > max {
                return Err(Error::TooLarge {
                    what: "message",
                    len,
                    max,
                });
            }
            bytes += len;
        }
        let count = payloads.len() as u64;
        let _gate = super::gate(&self.inner);
        let order = lock(&self.inner.publish_lock);
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(Error::Closed);
        }
        let now = self.now();
        self.fire_timers(&mut state, q, now)?;
        let queue_ttl = state
            .queue(q)
            .map_or(0, |queue| queue.settings.message_ttl_ms);
        let (expires_ms, not_before_ms) = options.resolve(now, queue_ttl)?;
        // Refuse a batch that no segment can hold before anything changes.
        let max_group = self.inner.log.max_group_len();
        let publish_len: u64 = payloads
            .iter()
            .map(|p| frame_len(PUBLISH_HEADER_LEN + p.len()) as u64)
            .sum();
        if publish_len > max_group {
            return Err(Error::TooLarge {
                what: "batch",
                len: publish_len,
                max: max_group,
            });
        }
        let mut woken = Vec::new();
        let mut room = state
            .make_room(q, count, bytes, now, &mut woken)
            .map_err(|limit| {
                let queue = state
                    .queue(q)
                    .map_or_else(String::new, |queue| queue.name.to_string());
                Error::QueueFull { queue, limit }
            })?;
        let room_len: u64 = room.iter().map(|r| frame_len(r.body.len()) as u64).sum();
        if publish_len + room_len > max_group {
            // Too many messages pushed out to share the publish's group: write them first.
            // A crash in between can then keep the drops without the publish.
            self.write_owned(&room)?;
            room.clear();
        }
        let first = state.table.next_id();
        let header = |i: u64| {
            PublishHeader {
                id: first + i,
                queue_id: q.0,
                published_ms: now,
                expires_ms,
                not_before_ms,
            }
            .encode()
        };
        // The table learns each message's position once the group is written.
        let room_count = room.len();
        let mut on_position = |i: usize, pos: Position| {
            if let Some(payload) = i.checked_sub(room_count).and_then(|j| payloads.get(j)) {
                state.table.push(pos, q, payload.len(), MsgState::Pending);
            }
        };
        let appended = if let ([], [payload]) = (room.as_slice(), payloads) {
            // One message and nothing pushed out (the usual publish): no allocation.
            let header = header(0);
            let body = [&header[..], *payload];
            let record = Record {
                kind: RecordKind::Publish.code(),
                body: &body,
            };
            self.inner
                .log
                .write_reporting(&[record], &mut on_position)?
        } else {
            let headers: Vec<[u8; PUBLISH_HEADER_LEN]> = (0..count).map(header).collect();
            let room_parts: Vec<[&[u8]; 1]> = room.iter().map(|r| [r.body.as_slice()]).collect();
            let publish_parts: Vec<[&[u8]; 2]> = headers
                .iter()
                .zip(payloads)
                .map(|(h, p)| [&h[..], *p])
                .collect();
            let records: Vec<Record<'_>> = room
                .iter()
                .zip(&room_parts)
                .map(|(r, body)| Record {
                    kind: r.kind.code(),
                    body: &body[..],
                })
                .chain(publish_parts.iter().map(|body| Record {
                    kind: RecordKind::Publish.code(),
                    body: &body[..],
                }))
                .collect();
            self.inner.log.write_reporting(&records, &mut on_position)?
        };
        if let Some(queue) = state.queue_mut(q) {
            queue.pending += count;
            queue.pending_bytes += bytes;
        }
        self.after_change(&mut state, woken, now)?;
        drop(state);
        drop(order);

        let committed = self.inner.log.commit(&appended);
        let mut state = lock(&self.inner.state);
        if let Some(queue) = state.queue_mut(q) {
            queue.pending -= count;
            queue.pending_bytes -= bytes;
        }
        committed?;
        // Read the clock again only if the commit may have waited for a sync.
        let now = if self.inner.log.commit_waits() {
            self.now()
        } else {
            now
        };
        for id in (first..first + count).map(MessageId) {
            state.table.update(id, |s| s.state = MsgState::Ready);
            state.enqueue(id, q, now, not_before_ms);
            state.set_expiry(id, q, expires_ms);
        }
        if let Some(queue) = state.queue_mut(q) {
            queue.counters.published += count;
        }
        // Concurrent drop-head publishers may have landed together over the limit.
        self.after_change(&mut state, [q], now)?;
        Ok(MessageId(first))
    }
}
