//! tokio's async locks: per-task order checks, cancel-safety, timeouts under paused time.

use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, Once};
use std::task::{Context, Waker};
use std::time::Duration;

use palisade_lock::detect::{self, Mode, Report, ReportKind};
use palisade_lock::tokio::{Mutex, RwLock};

fn reports() -> &'static StdMutex<Vec<Report>> {
    static REPORTS: StdMutex<Vec<Report>> = StdMutex::new(Vec::new());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        detect::set_mode(Mode::callback(|r| REPORTS.lock().unwrap().push(r.clone())))
    });
    &REPORTS
}

fn reports_about(class: &str) -> Vec<Report> {
    let needle = format!("`{class}`");
    reports()
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.to_string().contains(&needle))
        .cloned()
        .collect()
}

fn assert_send<T: Send>(_: &T) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inversion_across_tasks_is_reported_though_guards_cross_awaits_and_threads() {
    reports();
    let a = Arc::new(Mutex::named("task-a", 0));
    let b = Arc::new(Mutex::named("task-b", 0));
    let first = {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let mut ga = a.lock().await;
            // Yield while holding `a`: the task may resume on the other worker thread.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let mut gb = b.lock().await;
            *ga += 1;
            *gb += 1;
        }
    };
    assert_send(&first);
    tokio::spawn(first).await.unwrap();
    assert!(reports_about("task-a").is_empty());
    let (a2, b2) = (a.clone(), b.clone());
    tokio::spawn(async move {
        let _gb = b2.lock().await;
        tokio::task::yield_now().await;
        let _ga = a2.lock().await;
    })
    .await
    .unwrap();
    let found = reports_about("task-a");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, ReportKind::OrderInversion);
    assert_eq!(found[0].acquiring.to_string(), "`task-a`");
    assert_eq!(*a.lock().await, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn sync_locks_taken_inside_a_task_are_ordered_after_its_async_locks() {
    reports();
    let conn = Mutex::named("mixed-async", ());
    let stats = palisade_lock::Mutex::named("mixed-sync", 0);
    {
        let _c = conn.lock().await;
        *stats.lock() += 1; // async `conn` -> sync `stats`
    }
    assert!(reports_about("mixed-async").is_empty());
    {
        let _s = stats.lock();
        let _c = conn.try_lock_for(Duration::from_millis(1)).await; // sync `stats` -> async `conn`
    }
    assert_eq!(reports_about("mixed-async").len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_lock_future_leaves_nothing_held() {
    reports();
    let m = Arc::new(Mutex::named("cancelled-wait", 0));
    let (taken, is_taken) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let m = m.clone();
        async move {
            let _g = m.lock().await;
            taken.send(()).unwrap();
            released.await.unwrap();
        }
    });
    is_taken.await.unwrap();
    {
        let mut waiting = Box::pin(m.lock());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            waiting.as_mut().poll(&mut cx).is_pending(),
            "queued behind the other task"
        );
        // Dropped while queued.
    }
    release.send(()).unwrap();
    holder.await.unwrap();
    // Had the cancelled wait stayed on this task's held stack, this would report recursion.
    *m.lock().await += 1;
    assert!(reports_about("cancelled-wait").is_empty());
    assert_eq!(*m.lock().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_timed_wait_gives_up_on_tokio_time_with_the_class_named() {
    let l = Arc::new(RwLock::named("paused-timeout", 0));
    let writer = l.write().await;
    let err = l.try_read_for(Duration::from_secs(3)).await.unwrap_err();
    assert_eq!(err.class().to_string(), "`paused-timeout`");
    assert_eq!(err.waited(), Duration::from_secs(3));
    if detect::is_enabled() {
        assert_eq!(err.held_at().map(|s| s.file()), Some(file!()));
    }
    assert!(l.try_write_for(Duration::from_millis(1)).await.is_err());
    drop(writer);
    *l.try_write_for(Duration::from_secs(1)).await.unwrap() += 1;
    assert_eq!(*l.read().await, 1);
    assert!(l.try_read().is_some() && l.try_write().is_some());
}

#[tokio::test(flavor = "current_thread")]
async fn a_second_async_read_is_reported() {
    reports();
    if !detect::is_enabled() {
        return;
    }
    let l = RwLock::named("async-recursive-read", ());
    let _r1 = l.read().await;
    let _r2 = l.read().await;
    let found = reports_about("async-recursive-read");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ReportKind::RecursiveRead);
}

#[tokio::test(flavor = "current_thread")]
async fn a_recursive_async_read_does_not_cache_away_a_second_lock_of_the_class() {
    reports();
    if !detect::is_enabled() {
        return;
    }
    let r1 = RwLock::named("async-rec-same-class", ());
    let r2 = RwLock::named("async-rec-same-class", ());
    let _a = r1.read().await;
    drop(r1.read().await); // reported: RecursiveRead
    let _b = r2.read().await; // two locks of one class held at once
    let kinds: Vec<ReportKind> = reports_about("async-rec-same-class")
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, [ReportKind::RecursiveRead, ReportKind::SameClass]);
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Mutex<u32>>();
    send_sync::<RwLock<u32>>();
    send_sync::<palisade_lock::tokio::MutexGuard<'static, u32>>();
    send_sync::<palisade_lock::Mutex<u32>>();
    send_sync::<palisade_lock::RwLock<u32>>();
    send_sync::<palisade_lock::LockTimeout>();
    send_sync::<Report>();
}
