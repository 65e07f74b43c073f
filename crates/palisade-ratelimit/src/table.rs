//! The table under each shard of a [`KeyedRateLimiter`](crate::KeyedRateLimiter): one slot per
//! key holding the key's 64-bit hash (its fingerprint) beside its state, in one flat array.
//!
//! Open addressing with linear probing: a key's slot is the first slot from `fingerprint & mask`
//! on that holds its fingerprint, and an empty slot (fingerprint 0) ends the search. A check of
//! a known key reads one slot, fingerprint and state side by side on one cache line, where a
//! table of control bytes beside its entries reads two lines far apart (the control group,
//! then the entry): with a million keys, each of those lines is a miss to memory. The table is
//! at most 7/8 full, so a search always meets an empty slot. Removal shifts the rest of the
//! probe run back (no tombstones), so a run never outgrows the keys in it.
//!
//! The key itself is not stored: the fingerprint stands for it. Two keys with one fingerprint
//! share one state, which can only make them share one budget, never admit more than a
//! quota; with the default hasher (SipHash under a per-process random key) the chance that
//! any two of `n` keys do is under `n² / 2⁶⁵` (3 × 10⁻⁸ for a million keys).

/// Fingerprint 0 marks an empty slot; a hash of 0 is stored as 1.
#[inline(always)]
pub(crate) fn fingerprint(hash: u64) -> u64 {
    hash.max(1)
}

struct Slot<S> {
    /// The key's fingerprint, or 0 for an empty slot.
    fp: u64,
    /// The key's state (an empty slot holds an unused one, as cheap as a zero word).
    state: S,
}

/// One shard's keys (see the module docs).
pub(crate) struct Slots<S> {
    /// A power of two of them, or none before the first insert.
    slots: Box<[Slot<S>]>,
    len: usize,
    /// Makes the unused state of an empty slot.
    empty: fn() -> S,
}

/// Slots of a table's first allocation.
const MIN_SLOTS: usize = 8;

impl<S> Slots<S> {
    pub(crate) fn new(empty: fn() -> S) -> Slots<S> {
        Slots {
            slots: Box::new([]),
            len: 0,
            empty,
        }
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The index of `fp`'s slot, if it is held.
    #[inline(always)]
    fn index_of(&self, fp: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = fp as usize & mask;
        loop {
            let slot = &self.slots[i];
            if slot.fp == fp {
                return Some(i);
            }
            if slot.fp == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// The state of the key with fingerprint `fp`.
    #[inline(always)]
    pub(crate) fn find(&self, fp: u64) -> Option<&S> {
        self.index_of(fp).map(|i| &self.slots[i].state)
    }

    /// Adds a key that is not held.
    pub(crate) fn insert(&mut self, fp: u64, state: S) {
        debug_assert!(fp != 0 && self.index_of(fp).is_none());
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = fp as usize & mask;
        while self.slots[i].fp != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { fp, state };
        self.len += 1;
    }

    /// Doubles the slots and places every key again (by its fingerprint: no key is hashed).
    #[cold]
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let empty = self.empty;
        let new: Box<[Slot<S>]> = (0..n)
            .map(|_| Slot {
                fp: 0,
                state: empty(),
            })
            .collect();
        let old = std::mem::replace(&mut self.slots, new);
        let mask = n - 1;
        for slot in old.into_iter().filter(|s| s.fp != 0) {
            let mut i = slot.fp as usize & mask;
            while self.slots[i].fp != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
        }
    }

    /// Removes the key with fingerprint `fp`; returns whether it was held.
    pub(crate) fn remove(&mut self, fp: u64) -> bool {
        match self.index_of(fp) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Empties slot `i` (held) and shifts back the rest of its probe run: each later key that
    /// may sit in the hole (its home slot is not between the hole and it) moves into it, and
    /// the hole moves on, until the run ends.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.mask();
        let empty = Slot {
            fp: 0,
            state: (self.empty)(),
        };
        let removed = std::mem::replace(&mut self.slots[hole], empty);
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let fp = self.slots[j].fp;
            if fp == 0 {
                break;
            }
            let home = fp as usize & mask;
            // Probe distance of the key at `j` from its home, and of the hole from that home
            // going the same way: the key may move back only if the hole is on its path.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots.swap(hole, j);
                hole = j;
            }
        }
        self.len -= 1;
        drop(removed);
    }

    /// Keeps the keys whose state `keep` accepts, removing the others in place; `keep` sees
    /// each key once.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) {
        if self.len == 0 {
            return;
        }
        let mask = self.mask();
        // Start after an empty slot (there is one: the table is at most 7/8 full), so no probe
        // run wraps past the start: a removal shifts back only keys not seen yet, into the
        // slot being looked at, which is looked at again.
        let start = (0..self.slots.len())
            .find(|&i| self.slots[i].fp == 0)
            .expect("the table is never full");
        let mut seen = 0;
        while seen < self.slots.len() {
            let i = (start + 1 + seen) & mask;
            let slot = &self.slots[i];
            if slot.fp != 0 && !keep(&slot.state) {
                self.remove_at(i);
                continue;
            }
            seen += 1;
        }
    }

    /// Every key's state.
    #[cfg(test)]
    pub(crate) fn states(&self) -> impl Iterator<Item = &S> {
        self.slots.iter().filter(|s| s.fp != 0).map(|s| &s.state)
    }

    /// Every key's state, to change.
    pub(crate) fn states_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.slots
            .iter_mut()
            .filter(|s| s.fp != 0)
            .map(|s| &mut s.state)
    }

    /// Removes the key whose state `by` ranks lowest; returns its rank.
    pub(crate) fn remove_min_by_key(&mut self, mut by: impl FnMut(&S) -> u64) -> Option<u64> {
        let (i, rank) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.fp != 0)
            .map(|(i, s)| (i, by(&s.state)))
            .min_by_key(|&(_, rank)| rank)?;
        self.remove_at(i);
        Some(rank)
    }
}

#[cfg(all(test, not(palisade_loom)))]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// One operation on the table, on a small space of fingerprints (so runs collide and wrap).
    #[derive(Debug, Clone)]
    enum TableOp {
        Insert(u64, u32),
        Remove(u64),
        /// Keep the states that are multiples of this.
        Retain(u32),
        RemoveMin,
    }

    fn op() -> impl Strategy<Value = TableOp> {
        // Fingerprints share their low bits often (home slots collide), and some are at the
        // top of the range (runs wrap around the end).
        let fp = prop_oneof![1u64..64, (0u64..8).prop_map(|x| u64::MAX - x), any::<u64>()];
        prop_oneof![
            4 => (fp.clone(), any::<u32>()).prop_map(|(fp, v)| TableOp::Insert(fingerprint(fp), v)),
            2 => fp.prop_map(|fp| TableOp::Remove(fingerprint(fp))),
            1 => (1u32..4).prop_map(TableOp::Retain),
            1 => Just(TableOp::RemoveMin),
        ]
    }

    /// Every key the model holds is found with its state, and nothing else is.
    fn agrees(table: &Slots<u32>, model: &HashMap<u64, u32>) {
        assert_eq!(table.len(), model.len());
        for (fp, v) in model {
            assert_eq!(table.find(*fp), Some(v), "fingerprint {fp:#x}");
        }
        let mut states: Vec<u32> = table.states().copied().collect();
        let mut want: Vec<u32> = model.values().copied().collect();
        states.sort_unstable();
        want.sort_unstable();
        assert_eq!(states, want);
        assert!(table.len() * 8 <= table.slots.len() * 7 || table.slots.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The table holds exactly what a `HashMap` holds after the same operations.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..300)) {
            let mut table = Slots::new(|| 0u32);
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    TableOp::Insert(fp, v) => {
                        if let std::collections::hash_map::Entry::Vacant(e) = model.entry(fp) {
                            e.insert(v);
                            table.insert(fp, v);
                        }
                    }
                    TableOp::Remove(fp) => {
                        assert_eq!(table.remove(fp), model.remove(&fp).is_some());
                    }
                    TableOp::Retain(m) => {
                        let mut calls = 0;
                        table.retain(|v| {
                            calls += 1;
                            v % m == 0
                        });
                        assert_eq!(calls, model.len(), "each key seen once");
                        model.retain(|_, v| *v % m == 0);
                    }
                    TableOp::RemoveMin => {
                        let min = model.values().min().copied();
                        assert_eq!(table.remove_min_by_key(|v| u64::from(*v)), min.map(u64::from));
                        if let Some(min) = min {
                            // Any one key with the lowest state goes.
                            let fp = *model.iter().find(|(fp, v)| **v == min && table.find(**fp).is_none()).unwrap().0;
                            model.remove(&fp);
                        }
                    }
                }
                agrees(&table, &model);
            }
        }
    }

    #[test]
    fn a_run_that_wraps_around_the_end_shifts_back_across_it() {
        let mut table = Slots::new(|| 0u32);
        // Eight slots after the first insert: homes 7, 7, 7 fill slots 7, 0, 1.
        for (fp, v) in [(7, 1), (15, 2), (23, 3)] {
            table.insert(fp, v);
        }
        assert_eq!(table.slots.len(), MIN_SLOTS);
        assert!(table.remove(7));
        assert_eq!((table.find(15), table.find(23)), (Some(&2), Some(&3)));
        assert_eq!(table.slots[7].fp, 15, "shifted back across the end");
        assert_eq!(table.slots[0].fp, 23);
        assert_eq!(table.slots[1].fp, 0);
    }
}
