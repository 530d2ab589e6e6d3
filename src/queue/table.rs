//! The message table: where each live message is and what state it is in.
//!
//! Message ids are dense, so the table is indexed by id. It is cut into chunks of
//! [`CHUNK`] consecutive ids, from the chunk of the oldest unsettled message to that of the
//! newest one; each chunk is stored in the cheapest of three forms:
//!
//! - **dense** (7 bytes per id): a 4-byte offset, a 2-byte payload length and one byte of
//!   state and palette index per id, plus a palette of up to [`PALETTE`] (segment, queue)
//!   pairs shared by the chunk. A message whose pair does not fit the palette, or whose
//!   payload is 64 KiB or longer, keeps those fields in a side map instead (about 40 bytes);
//! - **sparse** (32 bytes per unsettled id): once fewer than a quarter of a full chunk's ids
//!   are unsettled, only those are kept, sorted by id;
//! - **settled** (nothing): every id in it is settled.
//!
//! So the table costs about 7 bytes per id while most ids are live, and never more than
//! 32 bytes per unsettled message, whatever the ack pattern; a settled stretch of the id
//! space costs 8 bytes per 1,024 ids until the oldest message before it settles.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ids::{IdMap, MessageId, Position, QueueId, SegmentId};

/// Ids per chunk.
pub(crate) const CHUNK: usize = 1024;
/// Distinct (segment, queue) pairs one dense chunk can name.
const PALETTE: usize = 16;
/// A full chunk with fewer unsettled ids than this is stored sparse.
const SPARSE_BELOW: usize = CHUNK / 4;

/// The life-cycle state of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsgState {
    /// Written, waiting for its publish to be confirmed; not deliverable yet.
    Pending,
    /// Waiting in its queue.
    Ready,
    /// Delivered, not yet acked or nacked.
    InFlight,
    /// An ack or nack record for it is being written.
    Settling,
    /// Acknowledged.
    Acked,
    /// Rejected without requeue.
    Dropped,
}

impl MsgState {
    pub(crate) fn is_settled(self) -> bool {
        matches!(self, MsgState::Acked | MsgState::Dropped)
    }

    const ALL: [MsgState; 6] = [
        MsgState::Pending,
        MsgState::Ready,
        MsgState::InFlight,
        MsgState::Settling,
        MsgState::Acked,
        MsgState::Dropped,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> MsgState {
        // Codes are written only by `code`; the fallback is never taken.
        MsgState::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(MsgState::Acked)
    }
}

/// Everything the table knows about one message (a decoded copy; change it with
/// [`MessageTable::update`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) segment: u64,
    pub(crate) offset: u32,
    /// The queue it is in now (dead-lettering and redrive move it).
    pub(crate) queue: QueueId,
    /// Payload length, for `max_bytes`.
    pub(crate) len: u32,
    pub(crate) state: MsgState,
}

impl Slot {
    pub(crate) fn position(&self) -> Position {
        Position {
            segment: SegmentId(self.segment),
            offset: u64::from(self.offset),
        }
    }
}

/// How an id relates to the table.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Settled (acked or dropped).
    Settled,
    /// Never assigned.
    Unknown,
    /// Unsettled.
    Live(Slot),
}

/// The state byte of a dense entry: the state in the low 3 bits, then the palette index in
/// 4 bits, then the "fields in the side map" flag.
const STATE_MASK: u8 = 0b0000_0111;
const PALETTE_SHIFT: u32 = 3;
const WIDE: u8 = 0b1000_0000;
const _: () = assert!(MsgState::ALL.len() <= STATE_MASK as usize + 1);
const _: () = assert!(PALETTE <= 1 << (7 - PALETTE_SHIFT));
/// Length value meaning "in the side map".
const LEN_WIDE: u16 = u16::MAX;

/// The fields of a dense entry that did not fit in it.
#[derive(Debug, Clone, Copy)]
struct Wide {
    segment: u64,
    queue: QueueId,
    len: u32,
}

#[derive(Debug, Clone)]
struct Dense {
    palette: Vec<(u64, QueueId)>,
    offsets: [u32; CHUNK],
    lens: [u16; CHUNK],
    meta: [u8; CHUNK],
}

const _: () = assert!(std::mem::size_of::<Dense>() <= 7 * CHUNK + 32);

/// A chunk's data is shared by the table and its frozen copies ([`MessageTable::clone`]):
/// the first change after a copy copies the chunk (7 KiB), later ones change it in place.
#[derive(Debug, Clone)]
enum Chunk {
    Settled,
    Dense {
        data: Arc<Dense>,
        /// Unsettled entries in it.
        live: usize,
    },
    /// Unsettled entries only, by index within the chunk.
    Sparse(Arc<Vec<(u16, Slot)>>),
}

/// Cloning is cheap (copy-on-write): the clone shares every chunk, and a chunk is copied
/// only when one side changes it. Checkpoints encode such a frozen copy outside the
/// store's locks.
#[derive(Debug, Default, Clone)]
pub(crate) struct MessageTable {
    /// Id of the first entry of `chunks[0]` (a multiple of `CHUNK`).
    chunk_base: u64,
    /// Ids below this are settled and released.
    base: u64,
    /// The next id to be pushed.
    next: u64,
    chunks: VecDeque<Chunk>,
    wide: IdMap<u64, Wide>,
    /// Unsettled entries.
    live: u64,
}

impl MessageTable {
    /// The id the next pushed message must have.
    pub(crate) fn next_id(&self) -> u64 {
        self.next
    }

    /// An empty table whose first message will be `first`.
    pub(crate) fn starting_at(first: u64) -> Self {
        MessageTable {
            chunk_base: first - first % CHUNK as u64,
            base: first,
            next: first,
            chunks: VecDeque::new(),
            wide: IdMap::default(),
            live: 0,
        }
    }

    /// Where `id` lives: its chunk and its index in it, if the id is inside the table.
    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        if id < self.base || id >= self.next {
            return None;
        }
        let rel = id - self.chunk_base;
        let chunk = usize::try_from(rel / CHUNK as u64).ok()?;
        Some((chunk, (rel % CHUNK as u64) as usize))
    }

    /// Appends the entry of message `next_id()`.
    pub(crate) fn push(&mut self, pos: Position, queue: QueueId, len: usize, state: MsgState) {
        let id = self.next;
        let index = ((id - self.chunk_base) % CHUNK as u64) as usize;
        if index == 0 || self.chunks.is_empty() {
            self.chunks.push_back(Chunk::Dense {
                data: Arc::new(Dense {
                    palette: Vec::new(),
                    offsets: [0; CHUNK],
                    lens: [0; CHUNK],
                    meta: [MsgState::Acked.code(); CHUNK],
                }),
                live: 0,
            });
        }
        self.next += 1;
        // Offsets and payloads are below the 1 GiB segment limit.
        let slot = Slot {
            segment: pos.segment.0,
            offset: u32::try_from(pos.offset).unwrap_or(u32::MAX),
            queue,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            state,
        };
        let last = self.chunks.len() - 1;
        self.write(last, index, id, slot, None);
        if index == CHUNK - 1 {
            // Full: entries pushed already settled (the gaps of a checkpoint) or settled
            // while it filled need not stay dense.
            self.shrink(last);
        }
    }

    /// Decodes the entry at (`chunk`, `index`), if held.
    fn read(&self, chunk: usize, index: usize, id: u64) -> Option<Slot> {
        match self.chunks.get(chunk)? {
            Chunk::Settled => None,
            Chunk::Sparse(entries) => {
                let i = entries
                    .binary_search_by_key(&(index as u16), |e| e.0)
                    .ok()?;
                Some(entries[i].1)
            }
            Chunk::Dense { data, .. } => {
                let meta = data.meta[index];
                let state = MsgState::from_code(meta & STATE_MASK);
                if state.is_settled() {
                    return None;
                }
                let offset = data.offsets[index];
                if meta & WIDE != 0 {
                    let wide = self.wide.get(&id)?;
                    return Some(Slot {
                        segment: wide.segment,
                        offset,
                        queue: wide.queue,
                        len: wide.len,
                        state,
                    });
                }
                let (segment, queue) = *data.palette.get(usize::from(meta >> PALETTE_SHIFT))?;
                Some(Slot {
                    segment,
                    offset,
                    queue,
                    len: u32::from(data.lens[index]),
                    state,
                })
            }
        }
    }

    /// Stores `slot` at (`chunk`, `index`); `old` is what was there.
    fn write(&mut self, chunk: usize, index: usize, id: u64, slot: Slot, old: Option<Slot>) {
        let was_live = old.is_some_and(|s| !s.state.is_settled());
        let is_live = !slot.state.is_settled();
        self.live = self.live + u64::from(is_live) - u64::from(was_live);
        let Some(c) = self.chunks.get_mut(chunk) else {
            return;
        };
        match c {
            Chunk::Settled => {}
            Chunk::Sparse(entries) => {
                if let Ok(i) = entries.binary_search_by_key(&(index as u16), |e| e.0) {
                    let entries = Arc::make_mut(entries);
                    if is_live {
                        entries[i].1 = slot;
                    } else {
                        entries.remove(i);
                    }
                }
            }
            Chunk::Dense { data, live } => {
                let data = Arc::make_mut(data);
                *live = *live + usize::from(is_live) - usize::from(was_live);
                let was_wide = data.meta[index] & WIDE != 0;
                if !is_live {
                    // Settled: only the state is kept (and never read back).
                    data.meta[index] = slot.state.code();
                    if was_wide {
                        self.wide.remove(&id);
                    }
                    if was_live {
                        self.shrink(chunk);
                    }
                    return;
                }
                data.offsets[index] = slot.offset;
                let pair = (slot.segment, slot.queue);
                let entry = match data.palette.iter().position(|&p| p == pair) {
                    Some(i) => Some(i),
                    None if data.palette.len() < PALETTE => {
                        data.palette.push(pair);
                        Some(data.palette.len() - 1)
                    }
                    None => None,
                };
                let short = u16::try_from(slot.len).ok().filter(|&l| l != LEN_WIDE);
                match (entry, short) {
                    (Some(p), Some(len)) => {
                        data.meta[index] = slot.state.code() | ((p as u8) << PALETTE_SHIFT);
                        data.lens[index] = len;
                        if was_wide {
                            self.wide.remove(&id);
                        }
                    }
                    _ => {
                        data.meta[index] = slot.state.code() | WIDE;
                        data.lens[index] = LEN_WIDE;
                        self.wide.insert(
                            id,
                            Wide {
                                segment: slot.segment,
                                queue: slot.queue,
                                len: slot.len,
                            },
                        );
                    }
                }
            }
        }
        if was_live && !is_live {
            self.shrink(chunk);
        }
    }

    /// Moves a full chunk to a cheaper form once enough of it has settled.
    fn shrink(&mut self, chunk: usize) {
        let first = self.chunk_base + (chunk * CHUNK) as u64;
        if first + CHUNK as u64 > self.next {
            return; // still being filled
        }
        let live = match self.chunks.get(chunk) {
            Some(Chunk::Dense { live, .. }) => *live,
            Some(Chunk::Sparse(entries)) if entries.is_empty() => 0,
            _ => return,
        };
        if live >= SPARSE_BELOW {
            return;
        }
        let entries: Vec<(u16, Slot)> = if live == 0 {
            Vec::new()
        } else {
            (0..CHUNK)
                .filter_map(|i| Some((i as u16, self.read(chunk, i, first + i as u64)?)))
                .collect()
        };
        self.release_wide(chunk);
        if let Some(c) = self.chunks.get_mut(chunk) {
            *c = if entries.is_empty() {
                Chunk::Settled
            } else {
                Chunk::Sparse(Arc::new(entries))
            };
        }
    }

    /// Drops the side-map entries of a dense chunk about to be replaced or released.
    fn release_wide(&mut self, chunk: usize) {
        let first = self.chunk_base + (chunk * CHUNK) as u64;
        if let Some(Chunk::Dense { data, .. }) = self.chunks.get(chunk) {
            for (i, &meta) in data.meta.iter().enumerate() {
                if meta & WIDE != 0 {
                    self.wide.remove(&(first + i as u64));
                }
            }
        }
    }

    /// The entry of `id`, if held.
    pub(crate) fn get(&self, id: MessageId) -> Option<Slot> {
        let (chunk, index) = self.locate(id.0)?;
        self.read(chunk, index, id.0)
    }

    pub(crate) fn lookup(&self, id: MessageId) -> Lookup {
        if id.0 >= self.next {
            return Lookup::Unknown;
        }
        match self.get(id) {
            Some(slot) => Lookup::Live(slot),
            None => Lookup::Settled,
        }
    }

    /// Changes the entry of `id` with `f`; `None` (and `f` not called) if it is not held.
    ///
    /// Cost: O(1) for a dense chunk, O(log n) for a sparse one, plus O(`CHUNK`) when the
    /// change settles enough of a chunk to store it sparse.
    pub(crate) fn update<R>(&mut self, id: MessageId, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let (chunk, index) = self.locate(id.0)?;
        let old = self.read(chunk, index, id.0)?;
        let mut slot = old;
        let out = f(&mut slot);
        if slot != old {
            self.write(chunk, index, id.0, slot, Some(old));
        }
        Some(out)
    }

    /// Releases settled entries from the front.
    pub(crate) fn prune(&mut self) {
        while self.base < self.next {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let chunk_end = self.chunk_base + CHUNK as u64;
            let next_live = match front {
                Chunk::Settled => None,
                Chunk::Sparse(entries) => entries
                    .iter()
                    .map(|e| self.chunk_base + u64::from(e.0))
                    .find(|&id| id >= self.base),
                Chunk::Dense { .. } => (self.base..chunk_end.min(self.next)).find(|&id| {
                    self.get(MessageId(id))
                        .is_some_and(|s| !s.state.is_settled())
                }),
            };
            if let Some(id) = next_live {
                self.base = id;
                return;
            }
            if chunk_end > self.next {
                self.base = self.next; // the chunk being filled stays
                return;
            }
            self.release_wide(0);
            self.chunks.pop_front();
            self.chunk_base = chunk_end;
            self.base = chunk_end;
        }
    }

    /// Unsettled entries with their ids, oldest first.
    ///
    /// Cost: one pass over the chunks, reading each entry in place (no lookup per id, no
    /// boxed iterator per chunk); recovery hands every message to its queue this way.
    pub(crate) fn live(&self) -> impl Iterator<Item = (MessageId, Slot)> + '_ {
        let held = self.base..self.next;
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            let first = self.chunk_base + (c * CHUNK) as u64;
            let (sparse, dense): (&[(u16, Slot)], usize) = match chunk {
                Chunk::Settled => (&[], 0),
                Chunk::Sparse(entries) => (entries.as_slice(), 0),
                Chunk::Dense { .. } => (&[], CHUNK),
            };
            let held_sparse = held.clone();
            let in_sparse = sparse
                .iter()
                .map(move |&(i, slot)| (first + u64::from(i), slot))
                .filter(move |(id, _)| held_sparse.contains(id));
            let held = held.clone();
            // Settled entries of a dense chunk are never returned by `read`.
            let in_dense = (0..dense).filter_map(move |i| {
                let id = first + i as u64;
                if !held.contains(&id) {
                    return None;
                }
                Some((id, self.read(c, i, id)?))
            });
            in_sparse
                .chain(in_dense)
                .map(|(id, slot)| (MessageId(id), slot))
        })
    }

    /// Number of unsettled messages.
    pub(crate) fn live_count(&self) -> u64 {
        self.live
    }

    /// Number of ids the table spans (settled ones not yet released included).
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.next - self.base).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u64, offset: u64) -> Position {
        Position {
            segment: SegmentId(segment),
            offset,
        }
    }

    /// A plain map model: every push and update is mirrored, and both must agree on every
    /// id after every step.
    #[test]
    fn agrees_with_a_map_through_every_form() {
        let mut table = MessageTable::starting_at(1000);
        let mut model: Vec<Slot> = Vec::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let check = |table: &MessageTable, model: &[Slot]| {
            for (i, want) in model.iter().enumerate() {
                let id = MessageId(1000 + i as u64);
                match table.get(id) {
                    Some(got) => assert_eq!(got, *want, "id {}", id.0),
                    None => assert!(want.state.is_settled(), "id {} lost: {want:?}", id.0),
                }
            }
            let live: Vec<(u64, Slot)> = table.live().map(|(id, slot)| (id.0, slot)).collect();
            let want: Vec<(u64, Slot)> = (0..model.len())
                .filter(|&i| !model[i].state.is_settled())
                .map(|i| (1000 + i as u64, model[i]))
                .collect();
            assert_eq!(table.live_count(), want.len() as u64);
            assert_eq!(live, want);
        };
        for round in 0..6 {
            for _ in 0..3000 {
                let r = next();
                // Mostly one (segment, queue), now and then a rare one or a long payload.
                let queue = QueueId(if r % 50 == 0 { (r >> 8) as u32 % 40 } else { 1 });
                let len = if r % 97 == 0 {
                    70_000
                } else {
                    (r >> 16) as usize % 300
                };
                let segment = round + u64::from(r % 333 == 0) * 7;
                let slot = Slot {
                    segment,
                    offset: (r >> 20) as u32 % 1_000_000,
                    queue,
                    len: len as u32,
                    state: MsgState::Ready,
                };
                table.push(slot.position(), queue, len, MsgState::Ready);
                model.push(slot);
            }
            // Settle most, move some, relocate some.
            for (i, want) in model.iter_mut().enumerate() {
                let r = next();
                let id = MessageId(1000 + i as u64);
                if want.state.is_settled() {
                    continue;
                }
                let change = match r % 10 {
                    0..=6 => Some(MsgState::Acked),
                    7 => Some(MsgState::InFlight),
                    _ => None,
                };
                if let Some(state) = change {
                    table.update(id, |s| s.state = state).expect("held");
                    want.state = state;
                }
                if r % 31 == 0 && !want.state.is_settled() {
                    table
                        .update(id, |s| {
                            s.segment = 99;
                            s.offset = 5;
                            s.queue = QueueId(2);
                        })
                        .expect("held");
                    want.segment = 99;
                    want.offset = 5;
                    want.queue = QueueId(2);
                }
            }
            table.prune();
            check(&table, &model);
        }
        // Settle everything: nothing is held, every chunk released.
        for i in 0..model.len() {
            table.update(MessageId(1000 + i as u64), |s| s.state = MsgState::Dropped);
        }
        table.prune();
        assert_eq!(table.len(), 0);
        assert!(table.chunks.len() <= 1);
        assert!(
            table.wide.is_empty(),
            "{} side entries left",
            table.wide.len()
        );
    }

    #[test]
    fn one_straggler_per_chunk_is_stored_sparse() {
        let mut table = MessageTable::starting_at(0);
        let n = 20 * CHUNK as u64;
        for i in 0..n {
            table.push(pos(0, i * 100), QueueId(0), 10, MsgState::Ready);
        }
        for i in (0..n).filter(|i| i % CHUNK as u64 != 5) {
            table.update(MessageId(i), |s| s.state = MsgState::Acked);
        }
        table.prune();
        assert_eq!(table.len() as u64, n - 5);
        let sparse = table
            .chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Sparse(e) if e.len() == 1))
            .count();
        assert_eq!(sparse, 20);
        assert_eq!(table.live().count(), 20);
        assert_eq!(
            table.get(MessageId(CHUNK as u64 + 5)).map(|s| s.offset),
            Some((CHUNK as u32 + 5) * 100)
        );
        assert!(matches!(table.lookup(MessageId(6)), Lookup::Settled));
        assert!(matches!(table.lookup(MessageId(n)), Lookup::Unknown));
    }

    #[test]
    fn a_clone_is_frozen_while_the_table_changes() {
        let mut table = MessageTable::starting_at(0);
        for i in 0..3 * CHUNK as u64 {
            table.push(pos(1, i * 10), QueueId(0), 5, MsgState::Ready);
        }
        let frozen = table.clone();
        for i in (0..3 * CHUNK as u64).step_by(2) {
            table.update(MessageId(i), |s| s.state = MsgState::Acked);
        }
        table.update(MessageId(1), |s| s.queue = QueueId(3));
        table.push(pos(2, 0), QueueId(0), 5, MsgState::Ready);
        assert_eq!(frozen.live_count(), 3 * CHUNK as u64);
        assert_eq!(frozen.live().count(), 3 * CHUNK);
        assert_eq!(frozen.get(MessageId(1)).map(|s| s.queue), Some(QueueId(0)));
        assert_eq!(frozen.next_id(), 3 * CHUNK as u64);
        assert_eq!(table.live_count(), 3 * CHUNK as u64 / 2 + 1);
        assert_eq!(table.get(MessageId(1)).map(|s| s.queue), Some(QueueId(3)));
    }
}
