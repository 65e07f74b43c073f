//! Runtime lock-order detection, lockdep-style.
//!
//! With detection compiled in (the `detect` feature, on by default, in builds with debug
//! assertions; or the `detect-release` feature in any build), every acquisition of a palisade
//! lock is checked against a global graph of lock *classes* (see [`Class`]):
//!
//! - Taking `B` while holding `A` records the edge `A -> B` the first time it is seen.
//! - An edge that would close a cycle (`B -> ... -> A` is already known) is a potential
//!   deadlock: it is reported **when the inverted order is taken**, before the thread blocks,
//!   even if no other thread is anywhere near the locks at that moment. The report names both
//!   acquisition sites of both orders.
//! - Taking a lock this thread already holds (a read too: fair `RwLock`s queue a second read
//!   behind a waiting writer) is reported as recursive locking, before it hangs.
//! - Holding two locks of one class (two `Account`s) is reported: their order is undefined, so
//!   two threads can take them in opposite orders. `lock_all` takes such sets safely.
//!
//! Each thread keeps the locks it holds on a small stack, and a cache of the *chains* of classes
//! it has already validated (a hash of the held classes plus the new one), so once a code path
//! has run once its acquisitions cost a thread-local lookup and nothing global: the graph's
//! lock is taken only for chains never seen before. `try_lock` records no edge into the lock it
//! takes (it cannot block), but later acquisitions are ordered after it. Async locks
//! ([`tokio`][tokio-module]) are tracked per task, so a guard held across an `.await` is checked
//! wherever the task resumes. One task is one holder: futures running concurrently inside a task
//! (`join!`, `select!`) that hold guards across `.await` look like one holder nesting them; spawn
//! such branches as tasks, or use [`Mode::Log`] there (see the crate README's limits).
//!
//! A report goes where [`set_mode`] says: a panic (the default, so tests fail at the bad
//! acquisition), a `tracing` error event, or a callback. Each inverted pair of classes is
//! reported once per process.
//!
#![cfg_attr(feature = "tokio", doc = "[tokio-module]: crate::tokio")]
// Without the feature the module is not in these docs: link to the published one.
#![cfg_attr(
    not(feature = "tokio"),
    doc = "[tokio-module]: https://docs.rs/palisade-lock/latest/palisade_lock/tokio/index.html"
)]

use std::backtrace::Backtrace;
use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use crate::Class;

/// Whether lock-order detection is compiled into this build.
///
/// `true` with the `detect` feature in builds with debug assertions, or with `detect-release`.
/// When `false`, palisade locks cost what parking_lot's and tokio's cost, and the functions of
/// this module do nothing.
pub const fn is_enabled() -> bool {
    cfg!(palisade_detect)
}

/// What the detector does with a [`Report`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Panic at the offending acquisition, with the report as the message (the default).
    #[default]
    Panic,
    /// Emit a `tracing` error event (target `palisade_lock`) and take the lock anyway.
    Log,
    /// Call this function and take the lock anyway. It runs on the thread that found the problem,
    /// with no detector lock held, so it may take palisade locks itself.
    Callback(Arc<dyn Fn(&Report) + Send + Sync>),
}

impl Mode {
    /// A [`Mode::Callback`] from a closure.
    pub fn callback(f: impl Fn(&Report) + Send + Sync + 'static) -> Self {
        Mode::Callback(Arc::new(f))
    }
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Panic => "Panic",
            Mode::Log => "Log",
            Mode::Callback(_) => "Callback(..)",
        })
    }
}

/// Sets what the detector does with its reports, for the whole process. A no-op when detection
/// is compiled out.
pub fn set_mode(mode: Mode) {
    #[cfg(palisade_detect)]
    {
        *imp::detector().mode.write() = mode;
    }
    #[cfg(not(palisade_detect))]
    drop(mode);
}

/// Captures a backtrace each time an order is first seen (and at each report), so a report
/// shows both stacks and not only the two call sites. Off by default: a capture costs
/// microseconds, paid once per new pair of classes.
pub fn set_backtraces(on: bool) {
    #[cfg(palisade_detect)]
    imp::detector()
        .backtraces
        .store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(palisade_detect))]
    let _ = on;
}

/// Counters of the detector, for tests and dashboards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lock classes seen so far.
    pub classes: usize,
    /// Distinct orders (`A` held while `B` taken) recorded in the graph.
    pub edges: usize,
    /// Reports made.
    pub reports: u64,
}

/// The detector's counters; all zero when detection is compiled out.
pub fn stats() -> Stats {
    #[cfg(palisade_detect)]
    {
        let d = imp::detector();
        Stats {
            classes: d.classes.lock().names.len(),
            edges: d.graph.edge_count(),
            reports: d.reports.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
    #[cfg(not(palisade_detect))]
    Stats::default()
}

/// What the detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportKind {
    /// The lock being taken is ordered *before* one this thread holds: some code path took them
    /// in the other order. Two threads running both paths can deadlock.
    OrderInversion,
    /// The thread already holds this very lock; taking it again would hang.
    Recursive,
    /// The thread reads this `RwLock` already and reads it again. Both palisade `RwLock`s are
    /// fair: the second read waits behind any writer that queued after the first, and that
    /// writer waits for the first read: a deadlock as soon as a writer shows up.
    RecursiveRead,
    /// The thread holds another lock of the same class; two threads doing this with the locks
    /// swapped deadlock.
    SameClass,
}

/// One known order in a report: some thread took `to` (at `to_site`) while holding `from`
/// (taken at `from_site`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Hop {
    /// The class held.
    pub from: Class,
    /// The class then taken.
    pub to: Class,
    /// Where `from` was taken.
    pub from_site: Option<&'static Location<'static>>,
    /// Where `to` was taken.
    pub to_site: Option<&'static Location<'static>>,
    /// The stack that took `to`, when backtraces were on when this order was first seen.
    pub backtrace: Option<Arc<Backtrace>>,
}

/// A potential deadlock, found at an acquisition.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// What was found.
    pub kind: ReportKind,
    /// The class being taken.
    pub acquiring: Class,
    /// Where it is being taken.
    pub acquiring_at: &'static Location<'static>,
    /// The held lock it conflicts with.
    pub holding: Class,
    /// Where that lock was taken.
    pub holding_at: Option<&'static Location<'static>>,
    /// For an inversion, the order(s) seen before, from `acquiring` back to `holding`: one hop
    /// for the classic ABBA, more when the cycle runs through other classes.
    pub earlier: Vec<Hop>,
    /// This thread's stack, when backtraces are on.
    pub backtrace: Option<Arc<Backtrace>>,
}

fn site(s: Option<&'static Location<'static>>) -> String {
    s.map_or_else(|| "an unknown site".to_owned(), ToString::to_string)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = site(self.holding_at);
        match self.kind {
            ReportKind::OrderInversion => {
                writeln!(
                    f,
                    "potential deadlock: lock order inversion between {} and {}",
                    self.holding, self.acquiring
                )?;
                write!(
                    f,
                    "  this thread holds {} (taken at {held}) and is taking {} at {},",
                    self.holding, self.acquiring, self.acquiring_at
                )?;
                for (i, hop) in self.earlier.iter().enumerate() {
                    let lead = if i == 0 { "but earlier" } else { "and" };
                    write!(
                        f,
                        "\n  {lead} {} was taken at {} while {} was held (taken at {})",
                        hop.to,
                        site(hop.to_site),
                        hop.from,
                        site(hop.from_site)
                    )?;
                }
                write!(
                    f,
                    "\n  two threads running these paths at once can deadlock"
                )
            }
            ReportKind::Recursive => write!(
                f,
                "recursive locking: {} is taken at {} by the thread that already holds it (taken at {held}); this hangs",
                self.acquiring, self.acquiring_at
            ),
            ReportKind::RecursiveRead => write!(
                f,
                "recursive read: {} is read at {} by the thread that already reads it (read at {held}); \
                 the lock is fair, so this hangs as soon as a writer queues between the two reads",
                self.acquiring, self.acquiring_at
            ),
            ReportKind::SameClass => write!(
                f,
                "potential deadlock: two locks of class {} held at once, one taken at {held}, the other at {}; \
                 their order is undefined, so two threads taking them swapped deadlock. \
                 Take them together with `lock_all`, or give them classes of their own with `named`",
                self.acquiring, self.acquiring_at
            ),
        }?;
        if let Some(bt) = &self.backtrace {
            write!(f, "\n\nstack of this acquisition:\n{bt}")?;
        }
        for hop in &self.earlier {
            if let Some(bt) = &hop.backtrace {
                write!(
                    f,
                    "\n\nstack that took {} while holding {}:\n{bt}",
                    hop.to, hop.from
                )?;
            }
        }
        Ok(())
    }
}

/// What an acquisition is.
#[derive(Clone, Copy)]
#[cfg_attr(not(palisade_detect), allow(dead_code))]
pub(crate) struct Acq {
    /// The lock's address, its identity on the held stacks.
    pub(crate) lock: usize,
    pub(crate) read: bool,
    /// A blocking acquisition (not `try_*`): it is ordered after every held lock.
    pub(crate) blocking: bool,
    pub(crate) site: &'static Location<'static>,
}

#[cfg(palisade_detect)]
pub(crate) use imp::*;
#[cfg(not(palisade_detect))]
pub(crate) use stub::*;

/// Detection compiled out: tokens without state, checks without code.
#[cfg(not(palisade_detect))]
mod stub {
    use std::panic::Location;

    use super::Acq;
    use crate::class::Meta;

    /// `!Send`, as with detection on, so code builds the same way in both.
    #[derive(Debug)]
    pub(crate) struct Held(std::marker::PhantomData<std::sync::MutexGuard<'static, ()>>);

    impl Held {
        #[inline(always)]
        pub(crate) fn for_lock(_: usize) -> Held {
            Held(std::marker::PhantomData)
        }
    }

    #[inline(always)]
    pub(crate) fn acquire(_: &Meta, _: Acq) -> Held {
        Held(std::marker::PhantomData)
    }

    #[inline(always)]
    pub(crate) fn set_holder(_: &Meta, _: &'static Location<'static>) {}

    #[inline(always)]
    pub(crate) fn acquire_group(_: &[(&Meta, usize, bool)], _: &'static Location<'static>) -> u32 {
        0
    }

    #[cfg(feature = "tokio")]
    pub(crate) mod tasks {
        use super::Acq;
        use crate::class::Meta;

        #[derive(Debug)]
        pub(crate) struct TaskHeld;

        #[inline(always)]
        pub(crate) fn acquire(_: &Meta, _: Acq) -> TaskHeld {
            TaskHeld
        }
    }
}

#[cfg(palisade_detect)]
mod imp {
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};
    use std::marker::PhantomData;
    use std::panic::Location;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use parking_lot::{Mutex, RwLock};

    use super::{Acq, Hop, Mode, Report, ReportKind};
    use crate::class::{Class, Meta};
    use crate::graph::{Added, EdgeInfo, Graph};

    pub(crate) struct Classes {
        ids: HashMap<Class, u32>,
        /// Class of id `i + 1`.
        pub(crate) names: Vec<Class>,
    }

    pub(crate) struct Detector {
        pub(crate) graph: Graph,
        pub(crate) classes: Mutex<Classes>,
        /// Acquisition sites by address, so a lock can record its holder in one atomic word.
        sites: RwLock<HashMap<usize, &'static Location<'static>>>,
        /// Pairs (held, taken) already reported.
        reported: Mutex<HashSet<(u32, u32)>>,
        pub(crate) mode: RwLock<Mode>,
        pub(crate) backtraces: AtomicBool,
        pub(crate) reports: AtomicU64,
        groups: AtomicU32,
    }

    pub(crate) fn detector() -> &'static Detector {
        static DETECTOR: OnceLock<Detector> = OnceLock::new();
        DETECTOR.get_or_init(|| Detector {
            graph: Graph::new(),
            classes: Mutex::new(Classes {
                ids: HashMap::new(),
                names: Vec::new(),
            }),
            sites: RwLock::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            mode: RwLock::new(Mode::Panic),
            backtraces: AtomicBool::new(false),
            reports: AtomicU64::new(0),
            groups: AtomicU32::new(1),
        })
    }

    impl Detector {
        fn class(&self, id: u32) -> Class {
            self.classes.lock().names[id as usize - 1]
        }

        fn backtrace(&self) -> Option<std::sync::Arc<std::backtrace::Backtrace>> {
            self.backtraces
                .load(Ordering::Relaxed)
                .then(|| std::sync::Arc::new(std::backtrace::Backtrace::force_capture()))
        }
    }

    /// The class id of a lock, registering its class on first use.
    #[inline]
    fn class_id(meta: &Meta) -> u32 {
        let id = meta.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        register_class(meta)
    }

    #[cold]
    #[inline(never)]
    fn register_class(meta: &Meta) -> u32 {
        let mut classes = detector().classes.lock();
        let next = classes.names.len() as u32 + 1;
        let id = *classes.ids.entry(meta.class()).or_insert(next);
        if id == next {
            classes.names.push(meta.class());
        }
        meta.id.store(id, Ordering::Relaxed);
        id
    }

    pub(crate) fn holder_site(meta: &Meta) -> Option<&'static Location<'static>> {
        match meta.holder.load(Ordering::Relaxed) {
            0 => None,
            addr => detector().sites.read().get(&addr).copied(),
        }
    }

    #[cold]
    #[inline(never)]
    fn register_site(site: &'static Location<'static>) {
        let addr = site_addr(site);
        if !detector().sites.read().contains_key(&addr) {
            detector().sites.write().insert(addr, site);
        }
    }

    fn site_addr(site: &'static Location<'static>) -> usize {
        std::ptr::from_ref(site) as usize
    }

    /// Records that `site` now holds the lock (after the raw acquisition).
    pub(crate) fn set_holder(meta: &Meta, site: &'static Location<'static>) {
        meta.holder.store(site_addr(site), Ordering::Relaxed);
    }

    const MAX_HELD: usize = 32;
    const CACHE: usize = 256;
    const SITES: usize = 64;
    const SEED: u64 = 0x243F_6A88_85A3_08D3;

    #[derive(Clone, Copy)]
    pub(crate) struct Entry {
        lock: usize,
        class: u32,
        read: bool,
        /// Nonzero for the locks one `lock_all` took together: no order among them.
        group: u32,
        site: Option<&'static Location<'static>>,
        /// Hash of the classes held up to and including this one.
        chain: u64,
    }

    impl Entry {
        const EMPTY: Entry = Entry {
            lock: 0,
            class: 0,
            read: false,
            group: 0,
            site: None,
            chain: 0,
        };
    }

    fn mix(prev: u64, class: u32, grouped: bool) -> u64 {
        let x = (prev ^ (u64::from(class) | (u64::from(grouped) << 32)))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x ^ (x >> 29)) | 1
    }

    #[cfg(feature = "tokio")]
    fn chain_of(held: &[Entry]) -> u64 {
        held.iter().fold(SEED, |h, e| mix(h, e.class, e.group != 0))
    }

    struct Local {
        held: [Entry; MAX_HELD],
        len: usize,
        /// Locks held beyond `MAX_HELD`, untracked.
        overflow: usize,
        /// Validated chains, direct-mapped by the hash's top bits.
        chains: [u64; CACHE],
        /// Sites this thread has registered with the detector.
        sites: [usize; SITES],
    }

    impl Local {
        const fn new() -> Self {
            Local {
                held: [Entry::EMPTY; MAX_HELD],
                len: 0,
                overflow: 0,
                chains: [0; CACHE],
                sites: [0; SITES],
            }
        }

        fn validated(&self, chain: u64) -> bool {
            self.chains[(chain >> 56) as usize] == chain
        }

        fn remember(&mut self, chain: u64) {
            self.chains[(chain >> 56) as usize] = chain;
        }

        fn push(&mut self, entry: Entry) {
            if self.len == MAX_HELD {
                self.overflow += 1;
            } else {
                self.held[self.len] = entry;
                self.len += 1;
            }
        }

        /// Registers `site` so a timeout elsewhere can name it; a global write only the first
        /// time this thread meets the site (or after a collision in its small cache).
        #[inline]
        fn register(&mut self, site: &'static Location<'static>) {
            let addr = site_addr(site);
            let slot = (addr >> 3) % SITES;
            if self.sites[slot] != addr {
                register_site(site);
                self.sites[slot] = addr;
            }
        }

        #[inline]
        fn release(&mut self, lock: usize) {
            // The usual case, the latest lock released first: nothing above it to rechain.
            if self.len > 0 && self.held[self.len - 1].lock == lock {
                self.len -= 1;
                return;
            }
            self.release_inner(lock);
        }

        #[cold]
        #[inline(never)]
        fn release_inner(&mut self, lock: usize) {
            let Some(i) = self.held[..self.len].iter().rposition(|e| e.lock == lock) else {
                self.overflow = self.overflow.saturating_sub(1);
                return;
            };
            self.held.copy_within(i + 1..self.len, i);
            self.len -= 1;
            // The chains above the removed lock named it: recompute them, so a cached chain
            // always means exactly the classes held.
            let mut h = if i == 0 { SEED } else { self.held[i - 1].chain };
            for e in &mut self.held[i..self.len] {
                h = mix(h, e.class, e.group != 0);
                e.chain = h;
            }
        }
    }

    thread_local! {
        static LOCAL: RefCell<Local> = const { RefCell::new(Local::new()) };
    }

    /// Checks an acquisition against the held locks, reports what it finds, and pushes the lock
    /// on this thread's stack. Called *before* blocking on the raw lock (or after a successful
    /// `try_*`). The returned token pops it when dropped.
    #[inline]
    pub(crate) fn acquire(meta: &Meta, acq: Acq) -> Held {
        let class = class_id(meta);
        #[cfg(feature = "tokio")]
        if tasks::any_held() {
            return tasks::acquire_sync(class, acq);
        }
        let fast = LOCAL.try_with(|l| {
            let mut l = l.borrow_mut();
            l.register(acq.site);
            let top = l.len.checked_sub(1).map(|i| l.held[i].chain);
            let chain = mix(top.unwrap_or(SEED), class, false);
            let entry = Entry {
                lock: acq.lock,
                class,
                read: acq.read,
                group: 0,
                site: Some(acq.site),
                chain,
            };
            let clear = top.is_none()
                || !acq.blocking
                || (l.validated(chain) && !l.held[..l.len].iter().any(|e| e.lock == acq.lock));
            if clear {
                l.push(entry);
                None
            } else {
                Some((l.held[..l.len].to_vec(), entry))
            }
        });
        match fast {
            Ok(None) => {}
            Ok(Some((held, entry))) => {
                let every_edge_checked = check(&held, &entry, acq);
                push_checked(entry, every_edge_checked);
            }
            // The thread is exiting: nothing to track.
            Err(_) => {}
        }
        Held::for_lock(acq.lock)
    }

    /// Pushes a checked acquisition, caching its chain only if `check` checked every edge the
    /// chain stands for.
    fn push_checked(entry: Entry, cache: bool) {
        let _ = LOCAL.try_with(|l| {
            let mut l = l.borrow_mut();
            if cache {
                l.remember(entry.chain);
            }
            l.push(entry);
        });
    }

    /// Checks several locks taken together by `lock_all`: each against the locks already held,
    /// none against the others. Pushes them all.
    pub(crate) fn acquire_group(
        members: &[(&Meta, usize, bool)],
        site: &'static Location<'static>,
    ) -> u32 {
        let group = detector().groups.fetch_add(1, Ordering::Relaxed).max(1);
        let held = LOCAL.try_with(|l| {
            let mut l = l.borrow_mut();
            l.register(site);
            l.held[..l.len].to_vec()
        });
        #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
        let Ok(mut held) = held else { return group };
        #[cfg(feature = "tokio")]
        if tasks::any_held() {
            held.splice(0..0, tasks::current_entries());
        }
        for &(meta, lock, read) in members {
            let class = class_id(meta);
            let entry = Entry {
                lock,
                class,
                read,
                group,
                site: Some(site),
                chain: 0,
            };
            check(
                &held,
                &entry,
                Acq {
                    lock,
                    read,
                    blocking: true,
                    site,
                },
            );
        }
        let _ = LOCAL.try_with(|l| {
            let mut l = l.borrow_mut();
            for &(meta, lock, read) in members {
                let class = class_id(meta);
                let top = l.len.checked_sub(1).map_or(SEED, |i| l.held[i].chain);
                let chain = mix(top, class, true);
                l.push(Entry {
                    lock,
                    class,
                    read,
                    group,
                    site: Some(site),
                    chain,
                });
            }
        });
        group
    }

    /// The slow path: recursion, then every held class against the new one in the graph.
    /// Returns whether it checked every edge the acquisition's chain stands for, so that the
    /// chain may be cached: not after a recursion, whose lock is not checked against itself.
    /// The same chain also stands for taking a *different* lock of that class, which must still
    /// be reported as [`ReportKind::SameClass`].
    fn check(held: &[Entry], new: &Entry, acq: Acq) -> bool {
        if !acq.blocking {
            return false;
        }
        let d = detector();
        let mut reports = Vec::new();
        let same = held.iter().rev().find(|e| e.lock == new.lock);
        let recursive = same.is_some();
        if let Some(same) = same {
            // Always a bug this thread is about to hang on (a second read too, behind a queued
            // writer): reported every time.
            let kind = if same.read && new.read {
                ReportKind::RecursiveRead
            } else {
                ReportKind::Recursive
            };
            reports.push(report(kind, same, new.class, acq.site, Vec::new()));
        }
        // The other held locks are ordered before this one all the same: the caller caches the
        // chain afterwards, so every edge it stands for must have been checked.
        for e in held {
            if e.lock == new.lock || (e.group != 0 && e.group == new.group) {
                continue;
            }
            let info = || EdgeInfo {
                from_site: e.site,
                to_site: new.site,
                backtrace: d.backtrace(),
            };
            let Added::Cycle(path) = d.graph.add_edge(e.class, new.class, info) else {
                continue;
            };
            if !d.reported.lock().insert((e.class, new.class)) {
                continue;
            }
            let kind = if e.class == new.class {
                ReportKind::SameClass
            } else {
                ReportKind::OrderInversion
            };
            let hops = path
                .into_iter()
                .map(|(from, to, info)| Hop {
                    from: d.class(from),
                    to: d.class(to),
                    from_site: info.from_site,
                    to_site: info.to_site,
                    backtrace: info.backtrace,
                })
                .collect();
            reports.push(report(kind, e, new.class, acq.site, hops));
        }
        emit(reports);
        !recursive
    }

    fn report(
        kind: ReportKind,
        held: &Entry,
        new_class: u32,
        at: &'static Location<'static>,
        earlier: Vec<Hop>,
    ) -> Report {
        let d = detector();
        Report {
            kind,
            acquiring: d.class(new_class),
            acquiring_at: at,
            holding: d.class(held.class),
            holding_at: held.site,
            earlier,
            backtrace: d.backtrace(),
        }
    }

    /// Delivers one acquisition's reports. Their pairs are already marked reported, so in the
    /// panic mode one panic carries them all: panicking at the first would lose the others for
    /// good.
    fn emit(reports: Vec<Report>) {
        if reports.is_empty() {
            return;
        }
        let d = detector();
        d.reports.fetch_add(reports.len() as u64, Ordering::Relaxed);
        let mode = d.mode.read().clone();
        match mode {
            // A second panic while unwinding would abort the process: log those instead.
            Mode::Panic if !std::thread::panicking() => {
                let all: Vec<String> = reports.iter().map(ToString::to_string).collect();
                panic!("{}", all.join("\n\n"))
            }
            Mode::Panic | Mode::Log => {
                for report in &reports {
                    tracing::error!(target: "palisade_lock", kind = ?report.kind, "{report}");
                }
            }
            Mode::Callback(f) => reports.iter().for_each(|report| f(report)),
        }
    }

    /// Pops its lock from the holder's stack when dropped (with the guard, or when a wait fails).
    /// `!Send` (but `Sync`): it pops from the stack of the thread that pushed.
    #[derive(Debug)]
    pub(crate) struct Held {
        lock: usize,
        _thread_bound: PhantomData<std::sync::MutexGuard<'static, ()>>,
    }

    impl Held {
        /// The token of a lock pushed by `acquire_group`.
        pub(crate) fn for_lock(lock: usize) -> Held {
            Held {
                lock,
                _thread_bound: PhantomData,
            }
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            let _ = LOCAL.try_with(|l| l.borrow_mut().release(self.lock));
        }
    }

    /// Async locks: the held stack of each task (or of each thread outside a task), in a sharded
    /// map, since a task holding a guard moves between threads at each `.await`.
    #[cfg(feature = "tokio")]
    pub(crate) mod tasks {
        use std::collections::HashMap;
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::thread::ThreadId;

        use parking_lot::Mutex;

        use super::{Acq, Entry, Held, LOCAL, SEED, chain_of, check, class_id, mix};
        use crate::class::Meta;

        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum Key {
            Task(tokio::task::Id),
            Thread(ThreadId),
        }

        const SHARDS: usize = 16;
        type Shard = Mutex<HashMap<Key, Vec<Entry>>>;

        /// Async guards held anywhere; while zero, sync acquisitions skip the task lookup.
        static HELD: AtomicUsize = AtomicUsize::new(0);

        fn shards() -> &'static [Shard; SHARDS] {
            static SHARDS_: OnceLock<[Shard; SHARDS]> = OnceLock::new();
            SHARDS_.get_or_init(|| std::array::from_fn(|_| Mutex::new(HashMap::new())))
        }

        fn shard(key: Key) -> &'static Shard {
            use std::hash::{BuildHasher, RandomState};
            static HASHER: OnceLock<RandomState> = OnceLock::new();
            let h = HASHER.get_or_init(RandomState::new).hash_one(key);
            &shards()[(h as usize) % SHARDS]
        }

        pub(crate) fn any_held() -> bool {
            HELD.load(Ordering::Relaxed) != 0
        }

        fn current() -> Key {
            tokio::task::try_id()
                .map_or_else(|| Key::Thread(std::thread::current().id()), Key::Task)
        }

        /// The async locks the current task holds.
        pub(crate) fn current_entries() -> Vec<Entry> {
            shard(current())
                .lock()
                .get(&current())
                .cloned()
                .unwrap_or_default()
        }

        fn thread_entries() -> Vec<Entry> {
            LOCAL
                .try_with(|l| {
                    let l = l.borrow();
                    l.held[..l.len].to_vec()
                })
                .unwrap_or_default()
        }

        /// Distinguishes the chains validated here (task and thread locks together) from the
        /// thread-only chains of the sync fast path, so neither vouches for the other.
        const SALT: u64 = 0x5851_F42D_4C95_7F2D;

        /// Validates an acquisition against everything this task and thread hold, through the
        /// chain cache.
        fn validate(held: &[Entry], entry: &Entry, acq: Acq) {
            let chain = mix(chain_of(held), entry.class, false) ^ SALT;
            let recursive = held.iter().any(|e| e.lock == acq.lock);
            let cached = LOCAL
                .try_with(|l| l.borrow().validated(chain))
                .unwrap_or(true);
            if !held.is_empty() && acq.blocking && (recursive || !cached) && check(held, entry, acq)
            {
                let _ = LOCAL.try_with(|l| l.borrow_mut().remember(chain));
            }
        }

        /// A sync acquisition while async guards are held somewhere: the task's async locks
        /// come first in its held set.
        pub(crate) fn acquire_sync(class: u32, acq: Acq) -> Held {
            let thread = thread_entries();
            let mut held = current_entries();
            held.extend_from_slice(&thread);
            let _ = LOCAL.try_with(|l| l.borrow_mut().register(acq.site));
            // On the thread's stack the chain covers the thread's own locks only.
            let chain = mix(thread.last().map_or(SEED, |t| t.chain), class, false);
            let entry = Entry {
                lock: acq.lock,
                class,
                read: acq.read,
                group: 0,
                site: Some(acq.site),
                chain,
            };
            validate(&held, &entry, acq);
            let _ = LOCAL.try_with(|l| l.borrow_mut().push(entry));
            Held::for_lock(acq.lock)
        }

        /// An async acquisition: checked against the task's async locks and the thread's sync
        /// ones, then pushed on the task's stack. Call before awaiting the raw lock; dropping the
        /// token (the guard, or the cancelled future) pops it.
        pub(crate) fn acquire(meta: &Meta, acq: Acq) -> TaskHeld {
            let class = class_id(meta);
            let key = current();
            let mut held = shard(key).lock().get(&key).cloned().unwrap_or_default();
            held.extend(thread_entries());
            let _ = LOCAL.try_with(|l| l.borrow_mut().register(acq.site));
            let mut entry = Entry {
                lock: acq.lock,
                class,
                read: acq.read,
                group: 0,
                site: Some(acq.site),
                chain: 0,
            };
            validate(&held, &entry, acq);
            {
                let mut shard = shard(key).lock();
                let stack = shard.entry(key).or_default();
                entry.chain = mix(stack.last().map_or(SEED, |t| t.chain), class, false);
                stack.push(entry);
            }
            HELD.fetch_add(1, Ordering::Relaxed);
            TaskHeld {
                key,
                lock: acq.lock,
            }
        }

        /// Pops an async lock from the stack of the task that took it, wherever it is dropped.
        #[derive(Debug)]
        pub(crate) struct TaskHeld {
            key: Key,
            lock: usize,
        }

        impl Drop for TaskHeld {
            fn drop(&mut self) {
                let mut shard = shard(self.key).lock();
                if let Some(stack) = shard.get_mut(&self.key) {
                    if let Some(i) = stack.iter().rposition(|e| e.lock == self.lock) {
                        stack.remove(i);
                        let mut h = if i == 0 { SEED } else { stack[i - 1].chain };
                        for e in &mut stack[i..] {
                            h = mix(h, e.class, e.group != 0);
                            e.chain = h;
                        }
                    }
                    if stack.is_empty() {
                        shard.remove(&self.key);
                    }
                }
                HELD.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
