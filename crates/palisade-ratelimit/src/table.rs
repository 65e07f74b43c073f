//! The table under each shard of a [`KeyedRateLimiter`](crate::KeyedRateLimiter): one slot per
//! key holding the key's 64-bit hash (its fingerprint) beside its state, in one flat array.
//!
//! Open addressing with linear probing: a key's slot is the first slot from `fingerprint & mask`
//! on that holds its fingerprint, and an empty slot (fingerprint 0) ends the search; the key
//! whose fingerprint is 0 has a slot of its own beside the array. A check of a known key reads
//! one slot, fingerprint and state side by side, where a table of control bytes beside its
//! entries reads two lines far apart (the control group, then the entry): with a million keys,
//! each of those lines is a miss to memory. A hit probes 1.4 slots on average at half load and
//! 4.4 at the most load, 7/8 (about 1.1 and 1.9 cache lines), so a search always meets an
//! empty slot. Removal shifts the rest of the probe run back (no tombstones), so a run never
//! outgrows the keys in it.
//!
//! The key itself is not stored: the fingerprint, the key's whole 64-bit hash, stands for it,
//! and two keys with one hash are one key to the table.

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
    /// The state of the key whose fingerprint is 0 (the array's mark for an empty slot).
    zero: Option<S>,
    /// Keys held, `zero` included.
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
            zero: None,
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
        if fp == 0 {
            return self.zero.as_ref();
        }
        self.index_of(fp).map(|i| &self.slots[i].state)
    }

    /// Adds a key that is not held.
    pub(crate) fn insert(&mut self, fp: u64, state: S) {
        debug_assert!(self.find(fp).is_none());
        if fp == 0 {
            self.zero = Some(state);
            self.len += 1;
            return;
        }
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
        if fp == 0 {
            let held = self.zero.take().is_some();
            self.len -= usize::from(held);
            return held;
        }
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
    /// each key once. Linear in the slots: the dropped keys' slots are emptied first, then
    /// every key left is placed again from its home slot, which moves it back to the first hole
    /// on its way (one removal at a time would shift a run once per key removed from it).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&S) -> bool) {
        if self.zero.as_ref().is_some_and(|state| !keep(state)) {
            self.zero = None;
            self.len -= 1;
        }
        if self.slots.is_empty() {
            return;
        }
        // A slot empty before any removal: no key's way from its home to its slot crosses it
        // (a slot emptied below may be crossed). There is one: the table is at most 7/8 full.
        let start = (0..self.slots.len())
            .find(|&i| self.slots[i].fp == 0)
            .expect("the table is never full");
        let empty = self.empty;
        let mut removed = 0;
        for slot in self.slots.iter_mut() {
            if slot.fp != 0 && !keep(&slot.state) {
                *slot = Slot {
                    fp: 0,
                    state: empty(),
                };
                removed += 1;
            }
        }
        if removed == 0 {
            return;
        }
        self.len -= removed;
        let mask = self.mask();
        // From `start` on, no key's way wraps past the start: a key's way from its home to its
        // slot holds only keys placed before it, so the first hole on that way is where a
        // search now finds it first; a later key whose way crossed the slot it leaves is
        // placed again in its turn.
        for k in 1..self.slots.len() {
            let j = (start + k) & mask;
            let fp = self.slots[j].fp;
            if fp == 0 {
                continue;
            }
            let mut i = fp as usize & mask;
            while i != j && self.slots[i].fp != 0 {
                i = (i + 1) & mask;
            }
            if i != j {
                self.slots.swap(i, j);
            }
        }
    }

    /// Every key's state.
    #[cfg(test)]
    pub(crate) fn states(&self) -> impl Iterator<Item = &S> {
        let slots = self.slots.iter().filter(|s| s.fp != 0).map(|s| &s.state);
        self.zero.iter().chain(slots)
    }

    /// Every key's state, to change.
    pub(crate) fn states_mut(&mut self) -> impl Iterator<Item = &mut S> {
        let slots = self
            .slots
            .iter_mut()
            .filter(|s| s.fp != 0)
            .map(|s| &mut s.state);
        self.zero.iter_mut().chain(slots)
    }

    /// Removes the key whose state `by` ranks lowest; returns its rank.
    pub(crate) fn remove_min_by_key(&mut self, mut by: impl FnMut(&S) -> u64) -> Option<u64> {
        let in_slots = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.fp != 0)
            .map(|(i, s)| (i, by(&s.state)))
            .min_by_key(|&(_, rank)| rank);
        let zero = self.zero.as_ref().map(&mut by);
        match (in_slots, zero) {
            (_, Some(rank)) if in_slots.is_none_or(|(_, r)| rank <= r) => {
                self.zero = None;
                self.len -= 1;
                Some(rank)
            }
            (Some((i, rank)), _) => {
                self.remove_at(i);
                Some(rank)
            }
            (None, _) => None,
        }
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
        // Fingerprint 0 lives beside the array.
        let fp = prop_oneof![0u64..64, (0u64..8).prop_map(|x| u64::MAX - x), any::<u64>()];
        prop_oneof![
            4 => (fp.clone(), any::<u32>()).prop_map(|(fp, v)| TableOp::Insert(fp, v)),
            2 => fp.prop_map(TableOp::Remove),
            1 => (1u32..4).prop_map(TableOp::Retain),
            1 => Just(TableOp::RemoveMin),
        ]
    }

    /// The linear-probing invariant: every key's slot is reachable from its home slot without
    /// crossing an empty slot, no fingerprint is held twice, `len` counts the keys, and the
    /// array is at most 7/8 full.
    fn invariant(t: &Slots<u32>) {
        let held = t.slots.iter().filter(|s| s.fp != 0).count();
        assert_eq!(held + usize::from(t.zero.is_some()), t.len);
        assert!(held * 8 <= t.slots.len() * 7);
        let mask = t.mask();
        for (i, s) in t.slots.iter().enumerate().filter(|(_, s)| s.fp != 0) {
            let mut j = s.fp as usize & mask;
            while j != i {
                assert_ne!(t.slots[j].fp, 0, "a hole between slot {i} and its home");
                j = (j + 1) & mask;
            }
        }
        let mut fps: Vec<u64> = t.slots.iter().map(|s| s.fp).filter(|&f| f != 0).collect();
        fps.sort_unstable();
        fps.dedup();
        assert_eq!(fps.len(), held, "a fingerprint held twice");
    }

    /// Every key the model holds is found with its state, and nothing else is.
    fn agrees(table: &Slots<u32>, model: &HashMap<u64, u32>) {
        invariant(table);
        assert_eq!(table.len(), model.len());
        for (fp, v) in model {
            assert_eq!(table.find(*fp), Some(v), "fingerprint {fp:#x}");
        }
        let mut states: Vec<u32> = table.states().copied().collect();
        let mut want: Vec<u32> = model.values().copied().collect();
        states.sort_unstable();
        want.sort_unstable();
        assert_eq!(states, want);
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// An 8- or 16-slot table filled up to its limit with homes piled up at the end (runs
        /// wrap around it), then any subset of the keys kept, then removals, then
        /// `remove_min_by_key` until empty: the invariant holds and every key is found
        /// throughout.
        #[test]
        fn a_full_small_table_keeps_its_invariant(
            homes in proptest::collection::vec(prop_oneof![0u64..16, 5u64..8, 13u64..16], 1..15),
            keep_mask in any::<u16>(),
            removes in proptest::collection::vec(0usize..15, 0..8),
        ) {
            let mut table = Slots::new(|| u32::MAX);
            let mut model = HashMap::new();
            // Distinct fingerprints with the chosen home bits.
            let fp = |idx: usize| homes[idx] | ((idx as u64 + 1) << 32);
            for idx in 0..homes.len() {
                table.insert(fp(idx), idx as u32);
                model.insert(fp(idx), idx as u32);
                agrees(&table, &model);
            }
            let mut seen = Vec::new();
            table.retain(|&v| {
                seen.push(v);
                keep_mask & (1 << v) != 0
            });
            seen.sort_unstable();
            let mut all: Vec<u32> = model.values().copied().collect();
            all.sort_unstable();
            prop_assert_eq!(seen, all, "each key seen once");
            model.retain(|_, v| keep_mask & (1 << *v) != 0);
            agrees(&table, &model);
            for r in removes.into_iter().filter(|&r| r < homes.len()) {
                prop_assert_eq!(table.remove(fp(r)), model.remove(&fp(r)).is_some());
                agrees(&table, &model);
            }
            while let Some(rank) = table.remove_min_by_key(|v| u64::from(*v)) {
                let min = *model.values().min().unwrap();
                prop_assert_eq!(rank, u64::from(min));
                model.retain(|_, v| *v != min);
                agrees(&table, &model);
            }
            prop_assert!(model.is_empty());
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
