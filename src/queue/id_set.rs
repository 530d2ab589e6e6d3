//! An ordered set of message ids stored as a bitmap in 64-id words.
//!
//! Queues hold their waiting messages in id order; ids are dense, so a bitmap costs about
//! 1 bit per id plus the ordered map's per-word overhead (about 0.3 bytes per id when the
//! ids are consecutive, up to about 40 bytes per id when no two share a word).

use std::collections::BTreeMap;

use crate::ids::MessageId;

#[derive(Debug, Default, Clone)]
pub(crate) struct IdSet {
    /// `id / 64` → the bits of `id % 64`; never zero.
    words: BTreeMap<u64, u64>,
}

impl IdSet {
    /// Adds `id`; false if it was there. Cost: O(log words), but O(1) without any key
    /// comparison when `id` falls in the last word (the common case: ids are added in
    /// increasing order when messages are published and when recovery rebuilds the queues).
    pub(crate) fn insert(&mut self, id: MessageId) -> bool {
        let key = id.0 / 64;
        let bit = 1u64 << (id.0 % 64);
        if let Some(mut last) = self.words.last_entry() {
            if *last.key() == key {
                let word = last.get_mut();
                let added = *word & bit == 0;
                *word |= bit;
                return added;
            }
        }
        let word = self.words.entry(key).or_insert(0);
        let added = *word & bit == 0;
        *word |= bit;
        added
    }

    /// Removes `id`; false if it was not there. Cost: O(log words).
    pub(crate) fn remove(&mut self, id: MessageId) -> bool {
        let key = id.0 / 64;
        let Some(word) = self.words.get_mut(&key) else {
            return false;
        };
        let bit = 1u64 << (id.0 % 64);
        let removed = *word & bit != 0;
        *word &= !bit;
        if *word == 0 {
            self.words.remove(&key);
        }
        removed
    }

    /// Removes and returns the smallest id. Cost: O(log words).
    pub(crate) fn pop_first(&mut self) -> Option<MessageId> {
        let mut entry = self.words.first_entry()?;
        let word = *entry.get();
        let id = entry.key() * 64 + u64::from(word.trailing_zeros());
        let rest = word & (word - 1);
        if rest == 0 {
            entry.remove();
        } else {
            *entry.get_mut() = rest;
        }
        Some(MessageId(id))
    }

    /// The ids, smallest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.words.iter().flat_map(|(&key, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(MessageId(key * 64 + u64::from(bit)))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn agrees_with_a_btreeset() {
        let mut set = IdSet::default();
        let mut model = BTreeSet::new();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let id = MessageId(rng % 2000 + if step % 2 == 0 { 0 } else { u64::MAX - 2000 });
            match rng % 5 {
                0 | 1 => assert_eq!(set.insert(id), model.insert(id)),
                2 => assert_eq!(set.remove(id), model.remove(&id)),
                3 => assert_eq!(set.pop_first(), model.pop_first()),
                _ => assert!(set.iter().eq(model.iter().copied())),
            }
            assert_eq!(set.iter().count(), model.len());
        }
    }

    #[test]
    fn ascending_inserts_and_late_ones_agree_with_a_btreeset() {
        // Mostly in order (the last-word shortcut), with ids behind the last word, repeats,
        // and jumps over whole words mixed in.
        let mut set = IdSet::default();
        let mut model = BTreeSet::new();
        let mut next = 0u64;
        for step in 0..5_000u64 {
            let id = match step % 7 {
                3 => next.saturating_sub(100 + step % 50),
                5 => next.saturating_sub(1),
                6 => {
                    next += 130;
                    next
                }
                _ => {
                    next += 1;
                    next
                }
            };
            assert_eq!(
                set.insert(MessageId(id)),
                model.insert(MessageId(id)),
                "id {id}"
            );
            if step % 11 == 0 {
                let gone = MessageId(id.saturating_sub(7));
                assert_eq!(set.remove(gone), model.remove(&gone));
            }
        }
        assert!(set.iter().eq(model.iter().copied()));
        while let Some(id) = set.pop_first() {
            assert_eq!(Some(id), model.pop_first());
        }
        assert!(model.is_empty());
    }
}
