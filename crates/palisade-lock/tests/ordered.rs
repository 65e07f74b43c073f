//! Lock levels (`palisade_lock::ordered`) at run time: chains taken in the declared order, contexts
//! passed down, timeouts naming the level, async chains across `.await`, and the runtime
//! detector catching the two escape hatches (a second `Ctx::root`, a context moved to another
//! thread). The out-of-order cases that must not compile are in `tests/compile_fail.rs`.

use std::sync::mpsc;
use std::sync::{Barrier, Mutex as StdMutex, Once, PoisonError};
use std::thread;
use std::time::Duration;

use palisade_lock::Class;
use palisade_lock::detect::{self, Mode, Report, ReportKind};
use palisade_lock::ordered::{Ctx, Level, LockAfter, Mutex, RwLock, Unlocked};

palisade_lock::lock_levels! {
    /// Taken first.
    pub Config,
    /// Taken after `Config`.
    pub Accounts,
    /// Taken last.
    pub Audit,
}

/// Every detector report of this test binary (detection compiled in), collected instead of
/// panicking so a test can look at them.
fn reports() -> &'static StdMutex<Vec<Report>> {
    static REPORTS: StdMutex<Vec<Report>> = StdMutex::new(Vec::new());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        detect::set_mode(Mode::callback(|r| {
            REPORTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(r.clone());
        }));
    });
    &REPORTS
}

/// The reports that involve (as the lock taken or the lock held) a class named in `names`.
fn reports_about(names: &[&'static str]) -> Vec<Report> {
    let involves = |class: Class| names.iter().any(|&n| class == Class::Named(n));
    reports()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|r| involves(r.acquiring) || involves(r.holding))
        .cloned()
        .collect()
}

/// The detector found nothing wrong with the locks of these levels.
fn assert_no_reports(names: &[&'static str]) {
    let found = reports_about(names);
    assert!(found.is_empty(), "unexpected reports: {found:#?}");
}

const CHAIN: [&str; 3] = [Config::NAME, Accounts::NAME, Audit::NAME];

#[test]
fn level_names_are_module_path_and_name() {
    assert_eq!(Config::NAME, "ordered::Config");
    assert_eq!(Accounts::NAME, "ordered::Accounts");
    assert_eq!(Audit::NAME, "ordered::Audit");
    assert_eq!(Unlocked::NAME, "Unlocked");
    assert_eq!(format!("{:?}", Ctx::root()), "Ctx<Unlocked>");
    let accounts = Mutex::<Accounts, u8>::new(0);
    let mut root = Ctx::root();
    let (_guard, ctx) = accounts.lock(&mut root);
    assert_eq!(format!("{ctx:?}"), "Ctx<ordered::Accounts>");
}

#[test]
fn three_level_chain_in_order_changes_values_through_the_guards() {
    reports();
    let config = RwLock::<Config, u64>::new(100);
    let accounts = Mutex::<Accounts, Vec<u64>>::new(vec![10, 20]);
    let audit = Mutex::<Audit, Vec<String>>::new(Vec::new());

    let mut root = Ctx::root();
    {
        let (mut limit, mut ctx) = config.write(&mut root);
        let (mut balances, mut ctx) = accounts.lock(&mut ctx);
        let (mut log, _ctx) = audit.lock(&mut ctx);
        *limit += 5;
        balances.push(*limit);
        balances[0] += 1;
        log.push(format!("{} accounts under {}", balances.len(), *limit));
    }
    // The guards are gone: the same root locks the chain again, readers this time.
    {
        let (limit, mut ctx) = config.read(&mut root);
        let (balances, mut ctx) = accounts.lock(&mut ctx);
        let (log, _ctx) = audit.lock(&mut ctx);
        assert_eq!(*limit, 105);
        assert_eq!(*balances, [11, 20, 105]);
        assert_eq!(*log, ["3 accounts under 105"]);
    }
    // A level skipped (Config straight to Audit) is fine too.
    {
        let (limit, mut ctx) = config.read(&mut root);
        let (mut log, _ctx) = audit.lock(&mut ctx);
        log.push(format!("limit {}", *limit));
    }
    assert_eq!(config.into_inner(), 105);
    assert_eq!(accounts.into_inner(), [11, 20, 105]);
    assert_eq!(audit.into_inner(), ["3 accounts under 105", "limit 105"]);
    assert_no_reports(&CHAIN);
}

struct Bank {
    config: RwLock<Config, u64>,
    accounts: Mutex<Accounts, Vec<u64>>,
    audit: Mutex<Audit, Vec<String>>,
}

impl Bank {
    /// Locks further from a context at `Config`: Accounts, then Audit.
    fn deposit(&self, mut ctx: Ctx<'_, Config>, account: usize, amount: u64) {
        let (mut balances, mut ctx) = self.accounts.lock(&mut ctx);
        balances[account] += amount;
        let balance = balances[account];
        self.record(
            &mut ctx,
            format!("deposit {amount} to {account}: {balance}"),
        );
    }

    /// Locks Audit from a context at any level before it.
    fn record<A: Level>(&self, ctx: &mut Ctx<'_, A>, line: String)
    where
        Audit: LockAfter<A>,
    {
        let (mut log, _ctx) = self.audit.lock(ctx);
        log.push(line);
    }
}

#[test]
fn reborrowed_context_is_passed_to_helpers_that_lock_further() {
    reports();
    let bank = Bank {
        config: RwLock::new(1_000),
        accounts: Mutex::new(vec![0, 0]),
        audit: Mutex::new(Vec::new()),
    };
    let mut root = Ctx::root();
    bank.record(&mut root.reborrow(), "open".to_owned());
    {
        let (limit, mut ctx) = bank.config.read(&mut root);
        assert_eq!(*limit, 1_000);
        // Each helper gets a context borrowing `ctx`; `ctx` is usable again after each call.
        bank.deposit(ctx.reborrow(), 0, 30);
        bank.deposit(ctx.reborrow(), 1, 12);
        bank.record(&mut ctx, format!("limit {}", *limit));
        bank.deposit(ctx, 0, 5);
    }
    let mut root = Ctx::root();
    let (balances, mut ctx) = bank.accounts.lock(&mut root);
    assert_eq!(*balances, [35, 12]);
    let (log, _ctx) = bank.audit.lock(&mut ctx);
    assert_eq!(
        *log,
        [
            "open",
            "deposit 30 to 0: 30",
            "deposit 12 to 1: 12",
            "limit 1000",
            "deposit 5 to 0: 35",
        ]
    );
    drop((log, balances));
    assert_no_reports(&CHAIN);
}

#[test]
fn try_lock_for_on_a_held_ordered_mutex_times_out_naming_the_level() {
    reports();
    let accounts = Mutex::<Accounts, u64>::new(7);
    let held = Barrier::new(2);
    let (release, released) = mpsc::channel::<()>();
    thread::scope(|s| {
        let (accounts, held) = (&accounts, &held);
        let holder = s.spawn(move || {
            let mut root = Ctx::root();
            let (mut guard, _ctx) = accounts.lock(&mut root);
            *guard += 1;
            held.wait();
            released.recv().unwrap();
        });
        held.wait();

        let mut root = Ctx::root();
        let err = accounts
            .try_lock_for(&mut root, Duration::from_millis(20))
            .expect_err("the other thread holds the lock");
        assert_eq!(err.class(), Class::Named(Accounts::NAME));
        assert_eq!(err.class().to_string(), "`ordered::Accounts`");
        assert!(err.to_string().contains("`ordered::Accounts`"), "{err}");
        if detect::is_enabled() {
            // The holder's site, in the spawned closure above.
            let site = err.held_at().expect("detection records the holder's site");
            assert!(site.file().ends_with("ordered.rs"), "{site}");
            assert!(err.to_string().contains("held by the code that took it at"));
        }

        release.send(()).unwrap();
        holder.join().unwrap();
        // Released: the same call now succeeds (and sees the holder's write).
        let (guard, _ctx) = accounts
            .try_lock_for(&mut root, Duration::from_millis(20))
            .expect("the lock is free");
        assert_eq!(*guard, 8);
    });
    assert_no_reports(&[Accounts::NAME]);
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use std::sync::Arc;

    use palisade_lock::ordered::{AsyncMutex, AsyncRwLock, Ctx, Level, Mutex};

    use super::{Accounts, Audit, Config, assert_no_reports, reports};

    fn assert_send<T: Send>(_: &T) {}

    struct Ledger {
        config: AsyncRwLock<Config, u64>,
        accounts: AsyncMutex<Accounts, Vec<u64>>,
        audit: Mutex<Audit, Vec<String>>,
    }

    /// The chain in order, each guard held across `.await`s (and so, on a multi-thread runtime,
    /// possibly released on another thread than the one that took it).
    async fn deposit(ledger: &Ledger, account: usize, amount: u64) {
        let mut root = Ctx::root();
        let (limit, mut ctx) = ledger.config.read(&mut root).await;
        tokio::task::yield_now().await;
        let (mut balances, mut ctx) = ledger.accounts.lock(&mut ctx).await;
        tokio::task::yield_now().await;
        assert!(balances[account] + amount <= *limit);
        balances[account] += amount;
        let line = format!("{account} +{amount}");
        // A sync ordered lock after the async ones, released before the next `.await`.
        ledger.audit.lock(&mut ctx).0.push(line);
        tokio::task::yield_now().await;
        drop((balances, limit));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_chain_held_across_await_on_a_multi_thread_runtime() {
        reports();
        let ledger = Arc::new(Ledger {
            config: AsyncRwLock::new(1_000),
            accounts: AsyncMutex::new(vec![0; 4]),
            audit: Mutex::new(Vec::new()),
        });

        let one = deposit(&ledger, 0, 1);
        assert_send(&one);
        one.await;

        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let ledger = Arc::clone(&ledger);
                let fut = async move { deposit(&ledger, (i % 4) as usize, i).await };
                assert_send(&fut);
                tokio::spawn(fut)
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }

        // A writer at the first level, then the rest, after all the readers.
        let mut root = Ctx::root();
        let (mut limit, mut ctx) = ledger.config.write(&mut root).await;
        *limit = 0;
        let (balances, mut ctx) = ledger.accounts.lock(&mut ctx).await;
        // 1 + (0 + 4 + 8 + 12), 1 + 5 + 9 + 13, 2 + 6 + 10 + 14, 3 + 7 + 11 + 15
        assert_eq!(*balances, [25, 28, 32, 36]);
        let (log, _ctx) = ledger.audit.lock(&mut ctx);
        assert_eq!(log.len(), 17);
        assert_eq!(log[0], "0 +1");
        drop((log, balances, limit));
        assert_no_reports(&[Config::NAME, Accounts::NAME, Audit::NAME]);
    }
}

mod misuse {
    palisade_lock::lock_levels! {
        /// Taken first.
        pub First,
        /// Taken after `First`.
        pub Second,
    }
}

#[test]
fn detector_reports_a_second_root_made_while_a_leveled_guard_is_held() {
    use misuse::{First, Second};

    if !detect::is_enabled() {
        return;
    }
    reports();
    let first = Mutex::<First, u32>::new(1);
    let second = Mutex::<Second, u32>::new(2);
    let names = [First::NAME, Second::NAME];

    // The declared order, as the compile-time check enforces it: the detector learns it.
    {
        let mut root = Ctx::root();
        let (a, mut ctx) = first.lock(&mut root);
        let (b, _ctx) = second.lock(&mut ctx);
        assert_eq!(*a + *b, 3);
    }
    assert_no_reports(&names);

    // The escape hatch: a fresh root while `Second` is held lets `First` be locked after it,
    // which compiles. The detector sees the inverted order.
    let mut root = Ctx::root();
    let (b, _ctx) = second.lock(&mut root);
    let mut second_root = Ctx::root();
    let (a, _ctx2) = first.lock(&mut second_root);
    let line = line!() - 1;
    assert_eq!(*a + *b, 3);
    drop((a, b));

    let found = reports_about(&names);
    assert_eq!(found.len(), 1, "{found:#?}");
    let r = &found[0];
    assert_eq!(r.kind, ReportKind::OrderInversion);
    assert_eq!(r.acquiring, Class::Named("ordered::misuse::First"));
    assert_eq!(r.holding, Class::Named("ordered::misuse::Second"));
    assert!(r.acquiring_at.file().ends_with("ordered.rs"), "{r}");
    assert_eq!(r.acquiring_at.line(), line, "{r}");
    assert_eq!(r.earlier.len(), 1, "{r}");
    assert_eq!(r.earlier[0].from, Class::Named(First::NAME));
    assert_eq!(r.earlier[0].to, Class::Named(Second::NAME));
    let text = r.to_string();
    assert!(text.contains("`ordered::misuse::First`"), "{text}");
    assert!(text.contains("`ordered::misuse::Second`"), "{text}");
}

mod hygiene {
    // A caller's own `concat!` must not change the level names (they are the detector's classes).
    #[allow(unused_macros)]
    macro_rules! concat {
        ($($t:tt)*) => {
            "shadowed"
        };
    }
    palisade_lock::lock_levels! { pub First, pub Second }

    #[test]
    fn level_names_ignore_the_callers_macros() {
        use palisade_lock::ordered::Level;
        assert_eq!(First::NAME, "ordered::hygiene::First");
        assert_eq!(Second::NAME, "ordered::hygiene::Second");
    }
}

mod moved {
    palisade_lock::lock_levels! {
        /// Taken first.
        pub Outer,
        /// Taken after `Outer`.
        pub Inner,
        /// Taken last.
        pub Last,
    }
}

#[test]
fn a_context_moved_to_another_thread_escapes_the_compile_time_check_and_the_detector_sees_it() {
    use moved::{Inner, Last, Outer};

    reports();
    let outer = Mutex::<Outer, u32>::new(1);
    let inner = Mutex::<Inner, u32>::new(2);
    let last = Mutex::<Last, u32>::new(3);
    let names = [Outer::NAME, Inner::NAME, Last::NAME];

    // The declared order, once: the detector learns `Inner -> Last`.
    {
        let mut root = Ctx::root();
        let (b, mut ctx) = inner.lock(&mut root);
        let (c, _ctx) = last.lock(&mut ctx);
        assert_eq!(*b + *c, 5);
    }
    assert_no_reports(&names);

    // One root per thread, as the docs ask, but a context at `Outer` moved into a scoped thread
    // that holds `Last` from its own root: `Inner` is locked after `Last`, and it compiles.
    let mut root = Ctx::root();
    let (a, outer_ctx) = outer.lock(&mut root);
    let line = thread::scope(|s| {
        s.spawn(|| {
            let mut outer_ctx = outer_ctx;
            let mut own_root = Ctx::root();
            let (c, _ctx) = last.lock(&mut own_root);
            let (b, _ctx) = inner.lock(&mut outer_ctx);
            let line = line!() - 1;
            assert_eq!(*b + *c, 5);
            line
        })
        .join()
        .unwrap()
    });
    drop(a);

    let found = reports_about(&names);
    if !detect::is_enabled() {
        assert!(found.is_empty());
        return;
    }
    assert_eq!(found.len(), 1, "{found:#?}");
    let r = &found[0];
    assert_eq!(r.kind, ReportKind::OrderInversion);
    assert_eq!(r.acquiring, Class::Named(Inner::NAME));
    assert_eq!(r.holding, Class::Named(Last::NAME));
    assert_eq!(r.acquiring_at.line(), line, "{r}");
}
