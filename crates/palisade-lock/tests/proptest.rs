//! The detector reports a potential deadlock if and only if a reference cycle check on the
//! class graph finds one, for random acquisition sequences.
#![cfg(debug_assertions)]

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex as StdMutex, Once};

use palisade_lock::Mutex;
use palisade_lock::detect::{self, Mode};
use proptest::prelude::*;

const CLASSES: usize = 6;

/// Reports as (holding, acquiring) class names.
fn reports() -> &'static StdMutex<Vec<(String, String)>> {
    static REPORTS: StdMutex<Vec<(String, String)>> = StdMutex::new(Vec::new());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        detect::set_mode(Mode::callback(|r| {
            REPORTS
                .lock()
                .unwrap()
                .push((r.holding.to_string(), r.acquiring.to_string()));
        }));
    });
    &REPORTS
}

#[derive(Debug, Clone)]
enum Op {
    /// Lock class `i` (skipped if held: recursion is another rule).
    Lock(usize),
    /// Release the held lock at this position (modulo the number held).
    Unlock(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => (0..CLASSES).prop_map(Op::Lock), 1 => (0..8usize).prop_map(Op::Unlock)]
}

/// The reference: every order taken is an edge held -> new; one that closes a cycle (found by a
/// plain search over the edges) is reported, once per pair.
#[derive(Default)]
struct Reference {
    edges: BTreeSet<(usize, usize)>,
    reported: HashSet<(usize, usize)>,
}

impl Reference {
    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(self.edges.iter().filter(|e| e.0 == n).map(|e| e.1));
            }
        }
        false
    }

    /// The reports taking `new` while holding `held` makes.
    fn acquire(&mut self, held: &[usize], new: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for &h in held {
            if self.edges.contains(&(h, new)) {
                continue;
            }
            if self.reaches(new, h) && self.reported.insert((h, new)) {
                out.push((h, new));
            }
            self.edges.insert((h, new));
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reports_exactly_the_cycles_a_reference_finds(threads in prop::collection::vec(prop::collection::vec(op(), 1..12), 1..6)) {
        static CASE: AtomicUsize = AtomicUsize::new(0);
        reports();
        // Classes of their own for each case: the detector's graph lives for the process.
        let case = CASE.fetch_add(1, Ordering::Relaxed);
        let names: Vec<&'static str> = (0..CLASSES).map(|i| &*Box::leak(format!("p{case}-c{i}").into_boxed_str())).collect();
        let locks: Vec<Mutex<()>> = names.iter().map(|&n| Mutex::named(n, ())).collect();
        let mut reference = Reference::default();
        let mut expected = Vec::new();
        // Each sequence runs on a thread of its own, one after the other: the orders meet only
        // in the graph, as in a real program whose paths run at different times.
        for ops in &threads {
            let got = std::thread::scope(|s| s.spawn(|| {
                let mut held: Vec<(usize, palisade_lock::MutexGuard<'_, ()>)> = Vec::new();
                let mut expected = Vec::new();
                for op in ops {
                    match *op {
                        Op::Lock(i) if !held.iter().any(|(c, _)| *c == i) => {
                            let classes: Vec<usize> = held.iter().map(|(c, _)| *c).collect();
                            expected.extend(reference.acquire(&classes, i));
                            held.push((i, locks[i].lock()));
                        }
                        Op::Lock(_) => {}
                        Op::Unlock(pos) if !held.is_empty() => {
                            let at = pos % held.len();
                            drop(held.remove(at));
                        }
                        Op::Unlock(_) => {}
                    }
                }
                expected
            }).join().unwrap());
            expected.extend(got);
        }
        let prefix = format!("`p{case}-");
        let mut got: Vec<(String, String)> = reports().lock().unwrap().iter().filter(|(h, _)| h.starts_with(&prefix)).cloned().collect();
        let mut want: Vec<(String, String)> = expected.iter().map(|&(h, n)| (format!("`{}`", names[h]), format!("`{}`", names[n]))).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }
}
